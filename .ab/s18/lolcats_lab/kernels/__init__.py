"""Triton kernels for lolcats-lab, installed as ``lolcats_lab.kernels``.

This folder is mapped to the subpackage ``lolcats_lab.kernels`` by pyproject.toml. It is not meant to be
imported as a top-level ``kernels``: that name belongs to a Hugging Face package, which transformers (5.25
and later require it) imports whenever it is installed (``from kernels import CUDAProperties, ...``). When
Python runs from the repository root (``python -c``, pytest, a notebook server started there) this folder is
on sys.path ahead of site-packages and would shadow it. So when it is imported under the top-level name it
hands the name to the installed Hugging Face package (:func:`_defer_to_installed_kernels`); with none
installed it stays an empty module that does not look like that package (no ``__version__``, no exports),
and transformers' probe answers False. tests/test_packaging.py checks both, from the repository root.
"""

import sys as _sys

if __name__ == "kernels":  # imported as a top-level package: the repository root is on sys.path

    def _defer_to_installed_kernels() -> None:
        """Replace this module in sys.modules by the ``kernels`` package found on sys.path without the
        repository root (Hugging Face's, in site-packages), when there is one; the import that loaded this
        file then returns that package."""
        import importlib.machinery
        import importlib.util
        import os

        root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
        path = [p for p in _sys.path if isinstance(p, str) and os.path.realpath(p or os.curdir) != root]
        spec = importlib.machinery.PathFinder.find_spec("kernels", path)
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        this = _sys.modules["kernels"]
        _sys.modules["kernels"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            _sys.modules["kernels"] = this
            raise

    _defer_to_installed_kernels()

# Public ops (kernels and launchers live in the submodules linear_attn, hybrid_attn, hedgehog_map,
# hedgehog_linear, hedgehog_hybrid, decode). Each wrapper imports its kernel module on first call, so `import lolcats_lab.kernels` works
# without Triton; only calling an op needs it. (The ops are named triton_* so that they never clash with
# the submodules of the same stem, e.g. `lolcats_lab.kernels.linear_attn`.)


def _require_triton():
    try:
        import triton  # noqa: F401
    except ImportError as err:  # pragma: no cover - Triton ships with CUDA builds of torch
        raise ImportError(
            "the lolcats_lab.kernels ops need Triton (`pip install triton`); on machines without it use "
            "the PyTorch forms in lolcats_lab.attention (impl='chunk')"
        ) from err


def triton_linear_attn(fq, fk, v, *, eps=1e-12, chunk_size=32, segment_chunks=None):
    """Causal linear attention on features fq, fk [B, H, T, F], v [B, H, T, D] -> [B, H, T, D]."""
    _require_triton()
    from .linear_attn import linear_attn

    return linear_attn(fq, fk, v, eps=eps, chunk_size=chunk_size, segment_chunks=segment_chunks)


def triton_hedgehog_linear_attn(q, k, v, wq, wk, *, eps=1e-12, chunk_size=32, segment_chunks=None, fuse_map=None):
    """Causal linear attention on Hedgehog features: q, k [B, H, T, K], wq, wk [H, K, f]; the map fused into
    the kernels or written once by the map kernel (``fuse_map``, linear_attn.hedgehog_linear_attn)."""
    _require_triton()
    from .linear_attn import hedgehog_linear_attn

    return hedgehog_linear_attn(q, k, v, wq, wk, eps=eps, chunk_size=chunk_size, segment_chunks=segment_chunks,
                                fuse_map=fuse_map)  # fmt: skip


def triton_hybrid_attn(q, k, v, fq, fk, window_logit, *, window, kind="tk", sink_tokens=0, scale=None,
                       eps=1e-12, chunk_size=32, segment_chunks=None):  # fmt: skip
    """Causal LoLCATs hybrid attention (SPEC.md), exactly ``naive_hybrid_attn`` for window >= 1."""
    _require_triton()
    from .hybrid_attn import hybrid_attn

    return hybrid_attn(
        q, k, v, fq, fk, window_logit, window=window, kind=kind, sink_tokens=sink_tokens, scale=scale, eps=eps,
        chunk_size=chunk_size, segment_chunks=segment_chunks,
    )  # fmt: skip


def triton_hedgehog_hybrid_attn(q, k, v, wq, wk, window_logit, *, window, kind="tk", sink_tokens=0, scale=None,
                                eps=1e-12, chunk_size=32, segment_chunks=None):  # fmt: skip
    """The hybrid with both Hedgehog maps in one op: q, k [B, H, T, K], wq, wk [H, K, f] (hedgehog_hybrid.py)."""
    _require_triton()
    from .hedgehog_hybrid import hedgehog_hybrid_attn

    return hedgehog_hybrid_attn(
        q, k, v, wq, wk, window_logit, window=window, kind=kind, sink_tokens=sink_tokens, scale=scale, eps=eps,
        chunk_size=chunk_size, segment_chunks=segment_chunks,
    )  # fmt: skip


def triton_hedgehog_map(x, weight):
    """Hedgehog feature map: x [B, H, T, K], weight [H, K, f] -> phi [B, H, T, 2f] in x's dtype (SPEC.md)."""
    _require_triton()
    from .hedgehog_map import hedgehog_map

    return hedgehog_map(x, weight)


def triton_hybrid_decode_step(q, k, v, fq, fk, window_logit, cache, *, scale=None, eps=1e-12):
    """One batched decoding step against a ``lolcats_lab.kernels.decode.RingHybridCache`` (updated in place)."""
    _require_triton()
    from .decode import hybrid_decode_step

    return hybrid_decode_step(q, k, v, fq, fk, window_logit, cache, scale=scale, eps=eps)


__all__ = ["triton_hedgehog_hybrid_attn", "triton_hedgehog_linear_attn", "triton_hedgehog_map", "triton_hybrid_attn", "triton_hybrid_decode_step", "triton_linear_attn"]
