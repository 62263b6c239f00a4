"""Attention math: softmax (teacher), linear (quadratic / chunked / recurrent), hybrid window + linear."""

from .hybrid import chunk_hybrid_attn, hybrid_attn, naive_hybrid_attn, window_masks
from .hybrid_decode import HybridCache, hybrid_decode_step, prefill_hybrid_cache
from .linear import LinearState, chunk_linear_attn, linear_attn, naive_linear_attn, recurrent_linear_attn
from .softmax import causal_mask, softmax_attn

__all__ = [
    "HybridCache",
    "LinearState",
    "causal_mask",
    "chunk_hybrid_attn",
    "chunk_linear_attn",
    "hybrid_attn",
    "hybrid_decode_step",
    "linear_attn",
    "naive_hybrid_attn",
    "naive_linear_attn",
    "prefill_hybrid_cache",
    "recurrent_linear_attn",
    "softmax_attn",
    "window_masks",
]
