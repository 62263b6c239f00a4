"""One autograd op for causal linear attention on Hedgehog features: the map kernel, then the linear kernel.

Math: y = linear_attn(phi_q(q), phi_k(k), v) with phi the Hedgehog map of SPEC.md (per query head
projections wq, wk [H, K, f]); exactly ``linear_attn(hedgehog_map(q, wq), hedgehog_map(k_rep, wk), v)`` with
k_rep = k repeated to the query heads. Reference: ``lolcats_lab.feature_maps.hedgehog_phi`` composed with
``lolcats_lab.attention.linear.naive_linear_attn``.

This is the "staged" form of ``linear_attn.hedgehog_linear_attn``: phi(q), phi(k) [B, H, T, 2f] are written
once in q's dtype by ``hedgehog_map.map_forward`` and read by the unfused linear kernels, instead of being
recomputed in registers by every fused kernel (forward, dq, dk/dv and both segment-state passes: eight maps
of a [BT, K] tile per chunk, against two here: q and k, once; the backward takes the softmaxes from phi).
On an H200 at 16k tokens (bf16, batch 1, 32 heads, K = D = 128, f = 64) that is 4.06 against 4.98 ms of
kernels per forward+backward (results/NVIDIA_H200-2026-12-01-hedgehog-staged-profile-session11.json, with
the map backward kernels). The cost is memory: the two feature tensors are kept for the backward (peak at
64k tokens 2.1 GiB against the fused op's 0.9 GiB and fla's 7.5;
results/NVIDIA_H200-2026-12-01-staged-quick-session11.json). Grouped-query keys are read in place: query
head h maps key head h // (H / KH).

Backward: the linear backward kernels take the features' gradient dphi through both softmaxes themselves, from
phi, which they read anyway (``DZ_IN_KERNELS``, for phi up to 128 features, or 256 in two power-of-two halves
with ``_tl_helpers.PHI_FOLD_SPLIT``: ``takes_dz_in_kernels``; ``_tl_helpers.phi_halves_dz``): they write dz =
d(x W) [B, H, T, f] per query head instead of dphi [B, H, T, 2f], and no map backward kernel runs. The softmax
values are then phi as stored (bf16 for bf16 inputs, where the map's backward kernel recomputes them in fp32
from x). ``project_back`` takes dx = dz W^T (summed over each key head's query heads) and dW = x^T dz as
GEMMs, only for the inputs that need a gradient. Otherwise (``DZ_IN_KERNELS = False``, or wider maps) the
linear backward writes dphi and each map's backward kernel turns it into dz (the form measured in session 11's
first calls).
"""

from __future__ import annotations

import torch

from . import _tl_helpers
from ._utils import block
from .hedgehog_map import map_backward, map_forward, project_back
from .linear_attn import linear_attn_bwd, linear_attn_fwd

# dz from phi in the linear backward kernels (see takes_dz_in_kernels); False: dphi, then the map backward
# kernels. On an H200 (session 11, results/NVIDIA_H200-2026-12-01-staged-quick-session11.json beside
# ...-hedgehog-staged-session11.json, bf16, batch 1, 32 heads, K = D = 128, f = 64): within 2% from 8k on (16k
# 4.43 against 4.35 ms, across two calls) and two launches fewer below. At f = 128 (F = 256) the dq kernel with
# the fold dot needs 272 KB of shared memory (the H200 allows 227 KB), so wider maps keep the map backward
# kernels, unless the kernels fold phi's halves by a split (_tl_helpers.PHI_FOLD_SPLIT, the default): compiled for
# sm_90 that kernel takes 128 KB (results/kernel-resources-sm90-2026-12-07-fold-split.json), and on an H100 at f =
# 128 it is 1.4 / 2.3% faster at 4k / 16k than the map backward kernels, with 27% less peak memory at 16k (session
# 18).
DZ_IN_KERNELS = True
_DZ_MAX_FEATURES = 128  # phi's padded width up to which the kernels take dz
_DZ_MAX_FEATURES_SPLIT = 256  # the same with _tl_helpers.PHI_FOLD_SPLIT, for phi of two power-of-two halves


def takes_dz_in_kernels(f: int) -> bool:
    """Whether the linear backward kernels take dz = d(x W) from phi [.., 2f] themselves (else they write dphi
    and the map's backward kernels run): up to _DZ_MAX_FEATURES padded features, or up to
    _DZ_MAX_FEATURES_SPLIT when the kernels fold phi's halves by a split (each half a power of two >= 16)."""
    width = block(2 * f)
    if width <= _DZ_MAX_FEATURES:
        return DZ_IN_KERNELS
    split = bool(_tl_helpers.PHI_FOLD_SPLIT) and block(f) == f  # then width == 2 f
    return DZ_IN_KERNELS and split and width <= _DZ_MAX_FEATURES_SPLIT


class HedgehogLinearStagedFunction(torch.autograd.Function):
    """Forward: both maps (map kernel), then the linear forward. Backward: the linear backward (dz, or dphi and
    then each map's backward kernel), then the projections' GEMMs. Saves q, k, v, wq, wk, fq, fk, y and the
    linear forward's normaliser and segment start states."""

    @staticmethod
    def forward(ctx, q, k, v, wq, wk, eps, chunk_size, segment_chunks):
        fq = map_forward(q, wq)  # [B, H, T, 2f] in q's dtype
        fk = map_forward(k, wk)  # [B, H, T, 2f]: one map per query head, k's heads read in place
        y, (den, s0, z0, cps) = linear_attn_fwd(fq, fk, v, eps=eps, chunk_size=chunk_size,
                                                segment_chunks=segment_chunks)  # fmt: skip
        ctx.save_for_backward(q, k, v, wq, wk, fq, fk, y, den, s0, z0)
        ctx.chunk_size, ctx.cps = chunk_size, cps
        return y

    @staticmethod
    def backward(ctx, do):
        q, k, v, wq, wk, fq, fk, y, den, s0, z0 = ctx.saved_tensors
        need_q, need_k, _, need_wq, need_wk = ctx.needs_input_grad[:5]
        dz_in_kernels = takes_dz_in_kernels(wq.shape[-1])
        # rows of dz [B, H, T, f] from the kernels, or of dphi [B, H, T, 2f] for the map backward kernels
        dq_rows, dk_rows, dv, _, _ = linear_attn_bwd(fq, fk, v, y, do.contiguous(), (den, s0, z0, ctx.cps),
                                                     chunk_size=ctx.chunk_size,
                                                     phi_half=wq.shape[-1] if dz_in_kernels else 0)  # fmt: skip
        dq, dwq = _map_grad(q, wq, dq_rows, dz_in_kernels, need_q, need_wq)
        dk, dwk = _map_grad(k, wk, dk_rows, dz_in_kernels, need_k, need_wk)
        return dq, dk, dv, dwq, dwk, None, None, None


def _map_grad(x, w, rows, rows_are_dz: bool, need_x: bool, need_w: bool):
    """(dx, dw) of one map from dz [B, H, T, f] or, when not ``rows_are_dz``, from the features' gradient
    dphi [B, H, T, 2f] through the map's backward kernel; None for what is not needed."""
    if not (need_x or need_w):
        return None, None
    dz = rows if rows_are_dz else map_backward(x, w, rows)  # [B, H, T, f] in x's dtype
    return project_back(dz, x, w, need_dx=need_x, need_dw=need_w)


def staged_hedgehog_linear_attn(q, k, v, wq, wk, *, eps, chunk_size, segment_chunks):
    """The staged op on checked inputs (``linear_attn.hedgehog_linear_attn`` checks them and picks it)."""
    return HedgehogLinearStagedFunction.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), wq.contiguous(), wk.contiguous(), eps, chunk_size,
        segment_chunks,
    )  # fmt: skip
