"""Route impl="triton" to the Triton kernels in lolcats_lab.kernels, with clear errors when that cannot work."""

from __future__ import annotations

import torch


def _require_cuda(name: str, x: torch.Tensor) -> None:
    if not x.is_cuda:
        raise ValueError(
            f"impl='triton' needs CUDA tensors, got {name} on {x.device}; use impl='chunk' (or 'auto') on CPU"
        )


def triton_linear_attn(fq, fk, v, *, causal, key_mask, eps):
    _require_cuda("fq", fq)
    if not causal or key_mask is not None:
        raise ValueError("the Triton linear-attention kernel is causal and takes no key_mask; use impl='chunk'")
    from lolcats_lab.kernels import triton_linear_attn as op

    return op(fq, fk, v, eps=eps)


def triton_hybrid_attn(q, k, v, fq, fk, window_logit, *, window, kind, causal, sink_tokens, key_mask, scale, eps):
    _require_cuda("q", q)
    if not causal or key_mask is not None:
        raise ValueError("the Triton hybrid kernel is causal and takes no key_mask; use impl='chunk'")
    if window == 0 and sink_tokens == 0:  # no window keys at all: exactly linear attention
        return triton_linear_attn(fq, fk, v, causal=True, key_mask=None, eps=eps)
    if window == 0:
        raise ValueError("the Triton hybrid kernel needs window >= 1 (sinks with window 0: use impl='chunk')")
    from lolcats_lab.kernels import triton_hybrid_attn as op

    return op(q, k, v, fq, fk, window_logit, window=window, kind=kind, sink_tokens=sink_tokens, scale=scale, eps=eps)


def triton_supported(x: torch.Tensor, *, causal: bool, key_mask) -> bool:
    """Whether impl="auto" should take the Triton kernels: fp16/bf16 CUDA tensors, causal, no key mask.

    fp32 stays on the PyTorch chunked form under "auto": the kernels' fp32 path (TF32 dots, fp32 tiles
    twice the size) was never timed, and at head dim 128 it compiled for minutes on an H100 with exact
    fp32 dots (2026-11-23). impl="triton" still runs it on request."""
    return x.is_cuda and causal and key_mask is None and x.dtype in (torch.float16, torch.bfloat16)
