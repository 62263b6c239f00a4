"""One autograd op for a LoLCATs layer's attention: both Hedgehog maps and the hybrid kernel.

Math: y = hybrid(q, k, v, phi_q(q), phi_k(k), window_logit) with phi the Hedgehog map of SPEC.md (per-head
projections wq, wk [H, K, f]); exactly ``hybrid_attn(q, k, v, hedgehog_map(q, wq), hedgehog_map(k, wk), ...)``.
Reference: ``lolcats_lab.feature_maps.hedgehog_phi`` composed with
``lolcats_lab.attention.hybrid.naive_hybrid_attn``.

Why one op: q and k each reach the output twice, through the window scores and through their feature map.
Composed from two autograd ops, the backward writes the attention's dq, then the map's dz = d(q W) to memory,
a GEMM writes dz W^T into a second tensor, and a third kernel adds the two (likewise for k). Here the map's
backward kernel adds dz W^T into the attention's dq itself, from dz still in its registers
(``hedgehog_map.map_backward(dx=...)``): no dz round trip, no GEMM launch, no second tensor, no add. dz is
written only when the map's weight needs its gradient (stage 1). The saved tensors are those of the two-op
form: q, k, v, the projections, fq, fk, the segment states, the output and its row statistics.

Shapes: q, k [B, H, T, K] (k with one head per query head, as after the GQA repeat the maps need); v
[B, VH, T, D] with VH dividing H; wq, wk [H, K, f]; window_logit [H] -> y [B, H, T, D], laid out
[B, T, H, D] in memory as ``hybrid_attn``'s output.
"""

from __future__ import annotations

import torch

from ._utils import check_once, check_projection
from .hedgehog_map import hedgehog_map_fits, map_backward, map_forward, project_back
from .hybrid_attn import HYBRID_EPS, check_hybrid_args, save_forward, saved_backward


class HedgehogHybridFunction(torch.autograd.Function):
    """Forward: the two maps, then the hybrid forward. Backward: the hybrid backward, then each map's
    backward kernel, which adds its dx into the attention's (see the module docstring)."""

    @staticmethod
    def forward(ctx, q, k, v, wq, wk, window_logit, *cfg):
        fq, fk = map_forward(q, wq), map_forward(k, wk)  # [B, H, T, 2f] in q's dtype
        return save_forward(ctx, q, k, v, fq, fk, window_logit, *cfg, extra=(wq, wk))

    @staticmethod
    def backward(ctx, do):
        (wq, wk), (q, k), (dq, dk, dv, dfq, dfk, d_logit) = saved_backward(ctx, do)
        need_q, need_k, _, need_wq, need_wk = ctx.needs_input_grad[:5]
        dwq = dwk = None
        if need_q or need_wq:
            dq, dwq = _map_backward(q, wq, dfq, dq, need_q, need_wq)
        if need_k or need_wk:
            dk, dwk = _map_backward(k, wk, dfk, dk, need_k, need_wk)
        return dq, dk, dv, dwq, dwk, d_logit, None, None, None, None, None, None, None


def _map_backward(x, w, dphi, dx_attn, need_x: bool, need_w: bool):
    """(dx, dw) for one map: dx = dx_attn + dz W^T (added in place by the map's backward kernel, dz in
    registers), dw = sum x^T dz (a GEMM over the dz the kernel writes only then)."""
    dz = map_backward(x, w, dphi, dx=dx_attn if need_x else None, need_dz=need_w)  # [B, H, T, f] or None
    dw = project_back(dz, x, w, need_dx=False, need_dw=True)[1] if need_w else None
    return (dx_attn if need_x else None), dw


def hedgehog_hybrid_attn(
    q, k, v, wq, wk, window_logit, *, window: int, kind: str = "tk", sink_tokens: int = 0,
    scale: float | None = None, eps: float = HYBRID_EPS, chunk_size: int = 32, segment_chunks: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """Causal LoLCATs hybrid attention with the Hedgehog maps of q and k in the same op (Triton); equals
    ``hybrid_attn(q, k, v, hedgehog_map(q, wq), hedgehog_map(k, wk), window_logit, ...)`` and is
    differentiable w.r.t. q, k, v, wq, wk and window_logit.

    Args:
        q, k: [B, H, T, K] after RoPE (k repeated to the query heads); v: [B, VH, T, D], VH dividing H.
        wq, wk: [H, K, f] the maps' projections (f <= 128, K <= 128), any float dtype (cast to q's in GEMMs).
        window_logit, window, kind, sink_tokens, scale, eps, chunk_size, segment_chunks: as ``hybrid_attn``.
    Returns: y [B, H, T, D] in v's dtype, laid out [B, T, H, D] in memory.
    """
    def check():
        check_hybrid_args(q, k, v, window_logit, window=window, kind=kind, sink_tokens=sink_tokens, eps=eps,
                          chunk_size=chunk_size, segment_chunks=segment_chunks, features={})  # fmt: skip
        if k.shape[1] != q.shape[1]:
            raise ValueError(
                f"k has {k.shape[1]} heads but q has {q.shape[1]}: the k map is per query head, so repeat k's heads "
                "to the query heads first (v may keep fewer heads)"
            )
        check_projection("wq", wq, "q", q)
        check_projection("wk", wk, "k", k)
        if wq.shape != wk.shape:
            raise ValueError(f"wq and wk must have the same shape, got {tuple(wq.shape)} and {tuple(wk.shape)}")
        if not hedgehog_map_fits(q.shape[-1], wq.shape[-1]):
            raise ValueError(
                f"the Triton Hedgehog map takes head_dim <= 128 and feature_dim <= 128, got {q.shape[-1]} and "
                f"{wq.shape[-1]}; compute the features with lolcats_lab.feature_maps.hedgehog_phi and call hybrid_attn"
            )

    check_once(check, "hedgehog_hybrid_attn", q, k, v, wq, wk, window_logit, window, kind, sink_tokens, eps,
               chunk_size, segment_chunks)  # fmt: skip
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return HedgehogHybridFunction.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), wq.contiguous(), wk.contiguous(), window_logit,
        window, kind, sink_tokens, scale, eps, chunk_size, segment_chunks,
    )  # fmt: skip
