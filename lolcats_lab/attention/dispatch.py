"""Route impl="triton" to the Triton kernels in lolcats_lab.kernels, with clear errors when that cannot work."""

from __future__ import annotations

import torch


def _require_cuda(name: str, x: torch.Tensor) -> None:
    if not x.is_cuda:
        raise ValueError(
            f"impl='triton' needs CUDA tensors, got {name} on {x.device}; use impl='chunk' (or 'auto') on CPU"
        )


def _kernel_module(name: str):
    try:
        import triton  # noqa: F401
    except ImportError as err:  # pragma: no cover - triton ships with CUDA torch on Linux
        raise ImportError("impl='triton' needs the `triton` package: pip install triton") from err
    import importlib

    return importlib.import_module(f"lolcats_lab.kernels.{name}")


def triton_linear_attn(fq, fk, v, *, causal, key_mask, eps):
    _require_cuda("fq", fq)
    if not causal or key_mask is not None:
        raise ValueError("the Triton linear-attention kernel is causal and takes no key_mask; use impl='chunk'")
    return _kernel_module("linear_attn").linear_attn(fq, fk, v, eps=eps)


def triton_hybrid_attn(q, k, v, fq, fk, window_logit, *, window, kind, causal, sink_tokens, key_mask, scale, eps):
    _require_cuda("q", q)
    if not causal or key_mask is not None or sink_tokens:
        raise ValueError("the Triton hybrid kernel is causal, without key_mask or sink tokens; use impl='chunk'")
    return _kernel_module("hybrid_attn").hybrid_attn(q, k, v, fq, fk, window_logit, window=window, kind=kind, scale=scale, eps=eps)
