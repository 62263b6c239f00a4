"""LoLCATs hybrid attention in Triton (terraced "tk" and sliding "sw" windows): forward and exact backward.

Math (SPEC.md "The hybrid output"), per batch element and head, s_ij = q_i . k_j * scale in fp32,
gamma = sigmoid(window_logit[h]), W_i window keys, L_i linear keys (every causal key in exactly one):

    M_i  = max_{j in W_i} s_ij                                   (row maximum over WINDOW keys only)
    y_i  = (gamma sum_{W_i} exp(s_ij - M_i) v_j + sum_{L_i} (fq_i . fk_j) v_j)
         / (gamma sum_{W_i} exp(s_ij - M_i)     + sum_{L_i} (fq_i . fk_j)     + eps)

    sw  W_i = { j : i - w < j <= i }          tk  W_i = { j <= i : j // w >= i // w - 1 }
    sinks (sink_tokens = n): keys j < n join W_i for every i >= j and leave L_i.

Reference: ``lolcats_lab.attention.hybrid.naive_hybrid_attn`` (causal, no key mask, window >= 1).

Shapes: q [B, H, T, K]; k [B, KH, T, K]; v [B, VH, T, D] (KH, VH divide H: grouped-query heads are read
in place, not repeated); fq, fk [B, H, T, F]; window_logit [H] -> y [B, H, T, D].

Forward: one program per (batch, head, segment) walks the segment's query tiles of BT tokens, starting
from the linear state of the keys that turned linear before the segment (segments.py: per-segment sums
of the keys [L0(c_s), L0(c_s+1)) in parallel, then a prefix sum). For a tile starting at c0 every key
j < L0(c0) is linear for all its queries (sw: L0 = c0 - w + 1; tk: L0 = (c0 // w - 1) w); those keys are
summed in a running state S = sum fk v^T [F, D], z = sum fk [F] (sinks excluded). The keys in
[L0, c0 + BT) (plus sinks below L0) are visited tile by tile with element masks: window keys with an
online maximum (the running max ends at exactly M_i, so the window sums come out relative to M_i as the
SPEC requires, while the linear sums are kept apart and never rescaled), linear keys as masked
fq fk^T. Work O(T (w + BT)), memory O(T) beyond the inputs.

Precision: scores, exponentials, sums and states are fp32. Dot operands are exact fp32 for fp32 inputs;
for fp16/bf16 inputs they are cast to the input's half type ("LOWP", as FlashAttention does with its
probabilities): twice the TF32 tensor-core rate and half the shared memory.

Backward, with den_i the denominator, dn_i = dy_i / den_i, dd_i = -dn_i . y_i, g_ij = dn_i . v_j + dd_i:
    window:  e_ij = gamma exp(s_ij - M_i);  ds_ij = e_ij g_ij + dM_i [j = argmax_i];  dv_j += e_ij dn_i
    M_i:     dM_i = -sum_{j in W_i} e_ij g_ij  (real: the linear terms are not rescaled by exp(-M_i)),
             evaluated as -dn_i . (N^w_i (D^l_i + eps) - N^l_i D^w_i) / den_i from the separate window (w)
             and linear (l) numerators N and denominators D: the same value without the cancellation
             between dn . v_j and dd_i, which in TF32 swamped the window_logit gradient
    linear:  dfq_i += g_ij fk_j,  dfk_j += g_ij fq_i,  dv_j += (fq_i . fk_j) dn_i
    gamma:   d window_logit_h = (1 - gamma_h) sum_{b, i} -dM_i
    dq = scale sum_j ds_ij k_j,  dk = scale sum_i ds_ij q_i
The forward, when a gradient is wanted, also stores per row what the backward would otherwise recompute
(RowStats): den, M, argmax [B, H, T] and u = (N^w (D^l + eps) - N^l D^w) / den^2 [B, H, T, D], so that
with the output y, dd_i = -dn_i . y_i and dM_i = -dy_i . u_i. Kernel 1 (forward scan over query tiles)
then makes one pass over each query tile's keys for dq, dfq and writes dd, dM ([B, H, T]). Kernel 2
(reverse scan over key tiles, with the reverse linear state P = sum fq dn^T, r = sum dd fq over the
queries for which the whole key tile is linear) writes dk, dfk, dv.

For window-only tiles without sinks (tk, the tile dividing the window) the backward instead runs
``hybrid_window_split.py``: the window part as parallel kernels with no state, the linear part as two scans
(measured faster; ``SPLIT_WINDOW_BACKWARD``). The two kernels here serve every other case.

The gradient through M_i goes to the first maximising key (torch's ``amax`` splits it evenly among exact
ties; with continuous inputs ties have probability zero, and both are valid subgradients).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._launch import launch
from ._tl_helpers import dot as _dot
from ._tl_helpers import dn_dot_v, head_offsets, load_segment_state, scaled_dy, segment_chunks, strided_head_offset
from ._tl_helpers import window_gamma
from ._tl_helpers import load_rows as _rows
from ._tl_helpers import load_rows_strided as _rows_s
from ._tl_helpers import store_rows as _store
from ._tl_helpers import store_rows_strided as _store_s
from ._utils import (
    FOLD_PREFIX,
    FOLD_SUFFIX_INCLUSIVE,
    autotune_configs,
    block,
    check_chunk_size,
    check_once,
    check_same_dtype_device,
    check_segment_chunks,
    check_tensor,
    dot_precision,
)
from .segments import bounds_tensor, fold_mode, plan_segments, segment_states

HYBRID_EPS = 1e-12
# window-only tiles without sinks take hybrid_window_split.py's backward (parallel window kernels and two
# state scans) instead of the two single-scan kernels below; False restores those (benchmarks compare both)
SPLIT_WINDOW_BACKWARD = True

# Candidates (every extra one costs a compile per shape and dtype). Compiled for sm_90 without a GPU
# (ptxas -v, bf16, K = D = F = 128), 8 warps and 32-token tiles spill the least registers: 0.07-0.7 KB
# (linear) and 0.04-2.4 KB (hybrid) per kernel, against 2.4-4.3 KB and up to 6.3 KB with 4 warps at 64-token
# tiles; hence also the default chunk_size of 32 (benchmarks/README.md, "Register spills").
# A third candidate from a sweep at the 8B stage-2 shape on an H200 (batch 4, 32 heads, 1k tokens, one segment;
# benchmarks/sweep_hybrid_plan.py, results/NVIDIA_H200-2026-12-01-sweep-hybrid-stage2.json): 8 warps with 3
# pipeline stages took 1.230 ms for the three kernels against 1.289 with 2 stages (forward 0.330 vs 0.363,
# dq 0.390 vs 0.412, dk/dv 0.511 vs 0.514); 4 warps were slower there (1.84 ms) with one segment.
_CONFIGS = autotune_configs(
    triton.Config({}, num_warps=8, num_stages=3),
    triton.Config({}, num_warps=8, num_stages=2),
    triton.Config({}, num_warps=4, num_stages=2),
)


# ----------------------------------------------------------------------------------------------- helpers
@triton.jit
def _masks(o_i, o_j, T, W, NS, TK: tl.constexpr):
    """(in_window, in_linear) [len(o_i), len(o_j)] for absolute query / key positions (SPEC.md)."""
    causal = (o_j[None, :] <= o_i[:, None]) & (o_i < T)[:, None] & (o_j < T)[None, :]
    if TK:
        near = (o_j // W)[None, :] >= (o_i // W)[:, None] - 1
    else:
        near = (o_i[:, None] - o_j[None, :]) < W
    near = near | (o_j < NS)[None, :]
    return causal & near, causal & (near == 0)


@triton.jit
def _linear_start(c0, W, TK: tl.constexpr):
    """L0: every key j < L0 is linear for every query i >= c0 (sinks aside)."""
    if TK:
        L0 = (c0 // W - 1) * W
    else:
        L0 = c0 - W + 1
    return tl.maximum(L0, 0)


@triton.jit
def _reverse_start(c0, T, W, BT: tl.constexpr, TK: tl.constexpr):
    """Q1: every query i >= Q1 sees the whole key tile [c0, c0 + BT) as linear keys (sinks aside)."""
    if TK:
        Q1 = ((c0 + BT - 1) // W + 2) * W
    else:
        Q1 = c0 + BT - 1 + W
    return tl.minimum(Q1, T)


@triton.jit
def window_logit_grad(dm, logit, d_logit, h, T, H: tl.constexpr, BLOCK: tl.constexpr = 1024):
    """d window_logit[h] = (gamma_h - 1) sum_{b, t} dM[b, h, t], written in the logits' dtype, for one head
    by one program (dm: row (0, h) of dM [B, H, T] fp32; B = the grid's second dim / H). The backward's last
    kernel calls it from one program per head, so no reduction kernels run after it; fixed order, so the
    sum is the same on every call. (dL/dgamma = sum_W e_ij g_ij / gamma = -sum_i dM_i / gamma, and
    dgamma/dlogit = gamma (1 - gamma).)"""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    row_stride = T.to(tl.int64) * H  # between batch elements
    for b in range(0, tl.num_programs(1) // H):
        row = dm + b * row_stride
        for t0 in range(0, T, BLOCK):
            o_t = t0 + tl.arange(0, BLOCK)
            acc += tl.load(row + o_t, mask=o_t < T, other=0.0)
    d = (window_gamma(logit, h) - 1.0) * tl.sum(acc, 0)
    tl.store(d_logit + h, d.to(d_logit.dtype.element_ty))


@triton.jit
def _key_tile(k, v, o_i, j0, jend, T, W, NS, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
              BK: tl.constexpr, BV: tl.constexpr, TK: tl.constexpr):  # fmt: skip
    """The key tile [j0, min(j0 + BT, jend)) for queries o_i: positions o_j, their mask, k and v tiles
    [BT, BK] / [BT, BV], and the window and linear masks [len(o_i), BT] (loaded keys only)."""
    o_j = j0 + tl.arange(0, BT)
    m_j = o_j < jend
    m_w, m_l = _masks(o_i, o_j, T, W, NS, TK)
    return o_j, m_j, _rows(k, o_j, m_j, K, BK), _rows(v, o_j, m_j, V, BV), m_w & m_j[None, :], m_l & m_j[None, :]


@triton.jit
def _fwd_step(
    k, v, fk, b_q, b_fq, o_i, j0, jend, b_m, b_idx, b_aw, b_lw, b_al, b_ll, T, W, NS, scale,
    K: tl.constexpr, F: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BF: tl.constexpr, BV: tl.constexpr, TK: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr,
    LIN: tl.constexpr, ARG: tl.constexpr,
):  # fmt: skip
    """Add the key tile [j0, min(j0 + BT, jend)) to one query tile's running sums (online window max).
    LIN False: the caller knows no key of the tile is linear for these queries (the linear dots are
    skipped); ARG False: the argmax is not needed (forward only)."""
    o_j, m_j, b_k, b_v, m_w, m_l = _key_tile(k, v, o_i, j0, jend, T, W, NS, K, V, BT, BK, BV, TK)
    b_s = tl.where(m_w, _dot(b_q, tl.trans(b_k), DT, PREC) * scale, float("-inf"))  # [BT, BT]
    t_max = tl.max(b_s, 1)
    if ARG:
        t_arg = tl.argmax(b_s, 1)
        b_idx = tl.where(t_max > b_m, j0 + t_arg, b_idx)  # strict: the first maximiser wins
    m_new = tl.maximum(b_m, t_max)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(b_m - m_safe)  # exp(-inf) = 0 before the first window key
    b_p = tl.where(m_w, tl.exp(b_s - m_safe[:, None]), 0.0)  # [BT, BT]
    b_aw = b_aw * alpha[:, None] + _dot(b_p, b_v, DT, PREC)
    b_lw = b_lw * alpha + tl.sum(b_p, 1)
    if LIN:
        b_fk = _rows(fk, o_j, m_j, F, BF)  # [BT, BF]
        b_a = tl.where(m_l, _dot(b_fq, tl.trans(b_fk), DT, PREC), 0.0)  # [BT, BT]
        b_al += _dot(b_a, b_v, DT, PREC)
        b_ll += tl.sum(b_a, 1)
    return m_new, b_idx, b_aw, b_lw, b_al, b_ll


@triton.jit
def _fwd_tile(
    k, v, fk, b_q, b_fq, b_S, b_z, o_i, c0, L0, T, W, NS, scale, gamma, eps,
    K: tl.constexpr, F: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BF: tl.constexpr, BV: tl.constexpr, TK: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr,
    WIN_ONLY: tl.constexpr, ARG: tl.constexpr,
):  # fmt: skip
    """One query tile: returns the window part (gamma sum e v [BT, BV], gamma sum e [BT]), the linear part
    (sum a v incl. the state [BT, BV], sum a [BT]), M [BT] and the argmax [BT] int32 (-1 unless ARG);
    y = (nw + nl) / (dw + dl + eps). Sink tiles hold window keys only; so does the range [L0, c0 + BT)
    when WIN_ONLY (see _meta)."""
    b_m = tl.full([BT], float("-inf"), dtype=tl.float32)
    b_idx = tl.full([BT], -1, dtype=tl.int32)
    b_aw = tl.zeros([BT, BV], dtype=tl.float32)  # window numerator, relative to the running max
    b_lw = tl.zeros([BT], dtype=tl.float32)
    b_al = tl.zeros([BT, BV], dtype=tl.float32)  # linear numerator (intra), never rescaled
    b_ll = tl.zeros([BT], dtype=tl.float32)
    n_sink = tl.minimum(NS, L0)  # sinks the state skipped and the main range does not cover
    for j0 in range(0, n_sink, BT):
        b_m, b_idx, b_aw, b_lw, b_al, b_ll = _fwd_step(
            k, v, fk, b_q, b_fq, o_i, j0, n_sink, b_m, b_idx, b_aw, b_lw, b_al, b_ll, T, W, NS, scale,
            K, F, V, BT, BK, BF, BV, TK, PREC, DT, False, ARG)  # fmt: skip
    kend = tl.minimum(c0 + BT, T)
    for j0 in range(L0, kend, BT):
        b_m, b_idx, b_aw, b_lw, b_al, b_ll = _fwd_step(
            k, v, fk, b_q, b_fq, o_i, j0, kend, b_m, b_idx, b_aw, b_lw, b_al, b_ll, T, W, NS, scale,
            K, F, V, BT, BK, BF, BV, TK, PREC, DT, not WIN_ONLY, ARG)  # fmt: skip
    b_nl = b_al + _dot(b_fq, b_S, DT, PREC)  # [BT, BV]
    b_dl = b_ll + tl.sum(b_fq * b_z[None, :], 1)  # [BT]
    return gamma * b_aw, gamma * b_lw, b_nl, b_dl, tl.where(b_m == float("-inf"), 0.0, b_m), b_idx


@triton.jit
def _advance_state(fk, v, b_S, b_z, lo, hi, NS, F: tl.constexpr, V: tl.constexpr,
                   BT: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr):  # fmt: skip
    """S += sum_{lo <= j < hi, j >= n_sinks} fk_j v_j^T; z likewise."""
    for j0 in range(lo, hi, BT):
        o_j = j0 + tl.arange(0, BT)
        m_j = (o_j < hi) & (o_j >= NS)
        b_fk = _rows(fk, o_j, m_j, F, BF)
        b_v = _rows(v, o_j, m_j, V, BV)
        b_S += _dot(tl.trans(b_fk), b_v, DT, PREC)
        b_z += tl.sum(b_fk, 0)
    return b_S, b_z


@triton.jit
def _advance_reverse_state(fq, do, SOT, den, dd, b_P, b_r, lo, hi, F: tl.constexpr, V: tl.constexpr,
                           BT: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr):  # fmt: skip
    """P += sum_{lo <= i < hi} fq_i dn_i^T, r += sum dd_i fq_i (dn = dy / den; do's rows SOT apart)."""
    for i0 in range(lo, hi, BT):
        o_a = i0 + tl.arange(0, BT)
        m_a = o_a < hi
        b_fqa = _rows(fq, o_a, m_a, F, BF)
        b_dna = scaled_dy(_rows_s(do, o_a, m_a, SOT, V, BV), tl.load(den + o_a, mask=m_a, other=1.0), DT, True)
        b_P += _dot(tl.trans(b_fqa), b_dna, DT, PREC)
        b_r += tl.sum(tl.load(dd + o_a, mask=m_a, other=0.0)[:, None] * b_fqa, 0)
    return b_P, b_r


@triton.jit
def _row_gradients(do, o, u, den, mx, amax, o_i, m_i, SOT, V: tl.constexpr, BV: tl.constexpr, DT: tl.constexpr):
    """For query rows o_i, from dy, the output and the forward's row statistics: dn = dy / den [BT, BV]
    (_tl_helpers.scaled_dy: rounded to DT when DN_ROUNDED_HYBRID), dd = -dn . y and dM = -dy . u [BT] (y as
    returned; see the module docstring), M and its key [BT]."""
    b_do = _rows_s(do, o_i, m_i, SOT, V, BV)  # [BT, BV]
    b_dn = scaled_dy(b_do, tl.load(den + o_i, mask=m_i, other=1.0), DT, True)
    b_dd = -tl.sum(b_dn * _rows_s(o, o_i, m_i, SOT, V, BV), 1)
    b_dm = -tl.sum(b_do * _rows(u, o_i, m_i, V, BV), 1)
    return b_dn, b_dd, b_dm, tl.load(mx + o_i, mask=m_i, other=0.0), tl.load(amax + o_i, mask=m_i, other=-1)


@triton.jit
def _dq_step(
    k, v, fk, b_q, b_fq, b_dn, b_dd, b_m, b_dq, b_dfq, o_i, j0, jend, T, W, NS, scale, gamma,
    K: tl.constexpr, F: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BF: tl.constexpr, BV: tl.constexpr, TK: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr,
    LIN: tl.constexpr,
):  # fmt: skip
    """Add the key tile [j0, min(j0 + BT, jend)) to one query tile's (sum ds k without dM and scale,
    dfq). LIN False: the tile holds window keys only for these queries; g = dn . v - dd then only weights
    the window probabilities, as dP - D in FlashAttention's backward, and its dot takes half-precision
    operands (DT); with linear keys it keeps fp32 operands (the linear gradient cancels, see linear_attn.py)."""
    o_j, m_j, b_k, b_v, m_w, m_l = _key_tile(k, v, o_i, j0, jend, T, W, NS, K, V, BT, BK, BV, TK)
    b_s = _dot(b_q, tl.trans(b_k), DT, PREC) * scale  # [BT, BT]
    b_e = gamma * tl.exp(tl.where(m_w, b_s - b_m[:, None], float("-inf")))  # [BT, BT], 0 off-window
    if LIN:
        b_g = dn_dot_v(b_dn, b_v, DT, PREC, True) + b_dd[:, None]  # cancels: fp32 operands unless dn is rounded
        b_fk = _rows(fk, o_j, m_j, F, BF)  # [BT, BF]
        b_dfq += _dot(tl.where(m_l, b_g, 0.0), b_fk, DT, PREC)
    else:
        b_g = _dot(b_dn, tl.trans(b_v), DT, PREC) + b_dd[:, None]  # [BT, BT]
    b_dq += _dot(b_e * b_g, b_k, DT, PREC)
    return b_dq, b_dfq


@triton.jit
def _dkv_queries(
    q, fq, do, SOT, den, dd, mx, amax, dm, b_k, b_fk, b_v, b_dk, b_dfk, b_dv, o_j, c0, qend, T, W, NS, scale, gamma,
    K: tl.constexpr, F: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BF: tl.constexpr, BV: tl.constexpr, TK: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr,
    LIN: tl.constexpr,
):  # fmt: skip
    """Add the queries [c0, qend) to one key tile's (dk without scale, dfk, dv). LIN False: every pair is
    a window pair (see _dq_step for the precision of g)."""
    for i0 in range(c0, qend, BT):
        o_i = i0 + tl.arange(0, BT)
        m_i = o_i < qend
        b_q = _rows(q, o_i, m_i, K, BK)
        b_dn = scaled_dy(_rows_s(do, o_i, m_i, SOT, V, BV), tl.load(den + o_i, mask=m_i, other=1.0), DT, True)
        b_dd = tl.load(dd + o_i, mask=m_i, other=0.0)
        b_m = tl.load(mx + o_i, mask=m_i, other=0.0)
        b_idx = tl.load(amax + o_i, mask=m_i, other=-1)
        b_dm = tl.load(dm + o_i, mask=m_i, other=0.0)
        m_w, m_l = _masks(o_i, o_j, T, W, NS, TK)
        m_w = m_w & m_i[:, None]
        b_s = _dot(b_q, tl.trans(b_k), DT, PREC) * scale  # [BT_i, BT_j]
        b_e = gamma * tl.exp(tl.where(m_w, b_s - b_m[:, None], float("-inf")))  # [BT, BT], 0 off-window
        if LIN:
            m_l = m_l & m_i[:, None]
            b_fq = _rows(fq, o_i, m_i, F, BF)
            b_a = tl.where(m_l, _dot(b_fq, tl.trans(b_fk), DT, PREC), 0.0)
            b_g = dn_dot_v(b_dn, b_v, DT, PREC, True) + b_dd[:, None]  # cancels: fp32 operands unless dn is rounded
            b_dfk += _dot(tl.trans(tl.where(m_l, b_g, 0.0)), b_fq, DT, PREC)
            b_dv += _dot(tl.trans(b_e + b_a), b_dn, DT, PREC)
        else:
            b_g = _dot(b_dn, tl.trans(b_v), DT, PREC) + b_dd[:, None]
            b_dv += _dot(tl.trans(b_e), b_dn, DT, PREC)
        b_ds = b_e * b_g + tl.where(m_w & (o_j[None, :] == b_idx[:, None]), b_dm[:, None], 0.0)
        b_dk += _dot(tl.trans(b_ds), b_q, DT, PREC)
    return b_dk, b_dfk, b_dv


# ----------------------------------------------------------------------------------------------- kernels
@triton.autotune(configs=_CONFIGS, key=["K", "F", "V", "BT", "TK", "LOWP", "GK", "GV", "WIN_ONLY", "STATS"])
@triton.jit(do_not_specialize=["T", "W", "NS", "NSEG", "CPS"])
def hybrid_attn_fwd_kernel(
    q, k, v, fq, fk, logit, s0, z0, o, SOB, SOH, SOT, u, den, mx, amax, T, W, NS, scale, eps, NSEG,
    H: tl.constexpr, GK: tl.constexpr, GV: tl.constexpr, K: tl.constexpr, F: tl.constexpr, V: tl.constexpr,
    CPS, BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, TK: tl.constexpr, PREC: tl.constexpr,
    LOWP: tl.constexpr, WIN_ONLY: tl.constexpr, STATS: tl.constexpr, FOLD: tl.constexpr,
):  # fmt: skip
    """Grid (NSEG, B*H): query tiles [i_s CPS, (i_s + 1) CPS), starting from the state (s0, z0) of the keys
    that turned linear before the segment. Writes y [B, H, T, D] (element strides SOB, SOH, SOT, the last dim
    contiguous); with STATS also the row statistics the backward starts from (u [B, H, T, D], den, mx,
    amax [B, H, T]; see the module docstring)."""
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh64, i_bk, i_bv = head_offsets(i_bh, H, GK, GV)
    DT = q.dtype.element_ty if LOWP else tl.float32  # dot operand dtype (_dot; see the module docstring)
    q += i_bh64 * T * K
    k += i_bk * T * K
    fq += i_bh64 * T * F
    fk += i_bh64 * T * F
    v += i_bv * T * V
    o += strided_head_offset(i_bh, H, 1, SOB, SOH)
    if STATS:
        u += i_bh64 * T * V
        den += i_bh64 * T
        mx += i_bh64 * T
        amax += i_bh64 * T
    gamma = window_gamma(logit, i_bh % H)
    # keys [sinks, L0(segment start)) as linear
    b_S, b_z = load_segment_state(s0, z0, i_bh64, i_s, NSEG, BF, BV, 0, BV, FOLD)
    t_lo, t_hi = segment_chunks(i_s, CPS, T, BT)
    L_done = _linear_start(t_lo * BT, W, TK)  # keys < L_done are in the state (an int32 scalar)
    for i_t in range(t_lo, t_hi):
        c0 = i_t * BT
        o_i = c0 + tl.arange(0, BT)
        m_i = o_i < T
        L0 = _linear_start(c0, W, TK)
        b_S, b_z = _advance_state(fk, v, b_S, b_z, L_done, L0, NS, F, V, BT, BF, BV, PREC, DT)
        L_done = L0
        b_q = _rows(q, o_i, m_i, K, BK)
        b_fq = _rows(fq, o_i, m_i, F, BF)
        b_nw, b_dw, b_nl, b_dl, b_m, b_idx = _fwd_tile(
            k, v, fk, b_q, b_fq, b_S, b_z, o_i, c0, L0, T, W, NS, scale, gamma, eps,
            K, F, V, BT, BK, BF, BV, TK, PREC, DT, WIN_ONLY, STATS)  # fmt: skip
        b_den = b_dw + b_dl + eps  # [BT]
        b_y = (b_nw + b_nl) / b_den[:, None]  # [BT, BV]
        _store_s(o, b_y, o_i, m_i, SOT, V, BV)
        if STATS:
            # u = (nw (dl + eps) - nl dw) / den^2, so that dM = -dy . u (no cancellation: see the docstring)
            b_u = (b_nw * (b_dl + eps)[:, None] - b_nl * b_dw[:, None]) / (b_den * b_den)[:, None]
            _store(u, b_u, o_i, m_i, V, BV)
            tl.store(den + o_i, b_den, mask=m_i)
            tl.store(mx + o_i, b_m, mask=m_i)
            tl.store(amax + o_i, b_idx, mask=m_i)


@triton.autotune(configs=_CONFIGS, key=["K", "F", "V", "BT", "TK", "LOWP", "GK", "GV", "WIN_ONLY"])
@triton.jit(do_not_specialize=["T", "W", "NS", "NSEG", "CPS"])
def hybrid_attn_bwd_dq_kernel(
    q, k, v, fq, fk, do, logit, s0, z0, o, SOB, SOH, SOT, u, dq, dfq, den, dd, mx, amax, dm, T, W, NS, scale, NSEG,
    H: tl.constexpr, GK: tl.constexpr, GV: tl.constexpr, K: tl.constexpr, F: tl.constexpr, V: tl.constexpr,
    CPS, BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, TK: tl.constexpr, PREC: tl.constexpr,
    LOWP: tl.constexpr, WIN_ONLY: tl.constexpr, FOLD: tl.constexpr,
):  # fmt: skip
    """Grid (NSEG, B*H). Forward scan of a segment: from the forward's output o and row statistics (u, den,
    M, argmax), one pass over each query tile's keys gives dq, dfq; writes dd and dM for the dk/dv kernel.
    o and do share the element strides SOB, SOH, SOT."""
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh64, i_bk, i_bv = head_offsets(i_bh, H, GK, GV)
    DT = q.dtype.element_ty if LOWP else tl.float32  # dot operand dtype (_dot; see the module docstring)
    q += i_bh64 * T * K
    dq += i_bh64 * T * K
    k += i_bk * T * K
    fq += i_bh64 * T * F
    dfq += i_bh64 * T * F
    fk += i_bh64 * T * F
    v += i_bv * T * V
    o_off = strided_head_offset(i_bh, H, 1, SOB, SOH)
    do += o_off
    o += o_off
    u += i_bh64 * T * V
    den += i_bh64 * T
    dd += i_bh64 * T
    mx += i_bh64 * T
    amax += i_bh64 * T
    dm += i_bh64 * T
    gamma = window_gamma(logit, i_bh % H)
    # keys [sinks, L0(segment start)) as linear
    b_S, b_z = load_segment_state(s0, z0, i_bh64, i_s, NSEG, BF, BV, 0, BV, FOLD)
    t_lo, t_hi = segment_chunks(i_s, CPS, T, BT)
    L_done = _linear_start(t_lo * BT, W, TK)
    for i_t in range(t_lo, t_hi):
        c0 = i_t * BT
        o_i = c0 + tl.arange(0, BT)
        m_i = o_i < T
        L0 = _linear_start(c0, W, TK)
        b_S, b_z = _advance_state(fk, v, b_S, b_z, L_done, L0, NS, F, V, BT, BF, BV, PREC, DT)
        L_done = L0
        b_q = _rows(q, o_i, m_i, K, BK)  # [BT, BK]
        b_fq = _rows(fq, o_i, m_i, F, BF)  # [BT, BF]
        b_dn, b_dd, b_dm, b_m, b_idx = _row_gradients(do, o, u, den, mx, amax, o_i, m_i, SOT, V, BV, DT)
        # one pass over the query tile's keys (sink tiles: window keys only)
        b_dq = tl.zeros([BT, BK], dtype=tl.float32)
        b_dfq = tl.zeros([BT, BF], dtype=tl.float32)
        n_sink = tl.minimum(NS, L0)
        for j0 in range(0, n_sink, BT):
            b_dq, b_dfq = _dq_step(
                k, v, fk, b_q, b_fq, b_dn, b_dd, b_m, b_dq, b_dfq, o_i, j0, n_sink, T, W, NS, scale, gamma,
                K, F, V, BT, BK, BF, BV, TK, PREC, DT, False)  # fmt: skip
        kend = tl.minimum(c0 + BT, T)
        for j0 in range(L0, kend, BT):
            b_dq, b_dfq = _dq_step(
                k, v, fk, b_q, b_fq, b_dn, b_dd, b_m, b_dq, b_dfq, o_i, j0, kend, T, W, NS, scale, gamma,
                K, F, V, BT, BK, BF, BV, TK, PREC, DT, not WIN_ONLY)  # fmt: skip
        b_kmax = _rows(k, b_idx, m_i & (b_idx >= 0), K, BK)  # [BT, BK]: k at each row's argmax (gathered)
        b_dq = (b_dq + b_dm[:, None] * b_kmax) * scale
        b_dfq += _dot(b_dn, tl.trans(b_S), DT, PREC) + b_dd[:, None] * b_z[None, :]
        _store(dq, b_dq, o_i, m_i, K, BK)
        _store(dfq, b_dfq, o_i, m_i, F, BF)
        tl.store(dd + o_i, b_dd, mask=m_i)
        tl.store(dm + o_i, b_dm, mask=m_i)


@triton.autotune(configs=_CONFIGS, key=["K", "F", "V", "BT", "TK", "LOWP", "GK", "GV", "WIN_ONLY"])
@triton.jit(do_not_specialize=["T", "W", "NS", "NSEG", "CPS"])
def hybrid_attn_bwd_dkv_kernel(
    q, k, v, fq, fk, do, SOB, SOH, SOT, logit, p0, r0, den, dd, mx, amax, dm, dk, dfk, dv, d_logit, T, W, NS, scale,
    NSEG,
    H: tl.constexpr, GK: tl.constexpr, GV: tl.constexpr, K: tl.constexpr, F: tl.constexpr, V: tl.constexpr,
    CPS, BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, TK: tl.constexpr, PREC: tl.constexpr,
    LOWP: tl.constexpr, WIN_ONLY: tl.constexpr, FOLD: tl.constexpr,
):  # fmt: skip
    """Grid (NSEG, B*H). Reverse scan over one segment's key tiles: dk, dfk, dv. (p0, r0): the reverse state
    of the queries >= Q1 of the segment's last tile (see _reverse_start). do: element strides SOB, SOH, SOT.
    Programs (0, h) also write d window_logit[h] from the dq kernel's dM (window_logit_grad)."""
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh64, i_bk, i_bv = head_offsets(i_bh, H, GK, GV)
    DT = q.dtype.element_ty if LOWP else tl.float32  # dot operand dtype (_dot; see the module docstring)
    q += i_bh64 * T * K
    k += i_bk * T * K
    dk += i_bh64 * T * K
    fq += i_bh64 * T * F
    fk += i_bh64 * T * F
    dfk += i_bh64 * T * F
    v += i_bv * T * V
    do += strided_head_offset(i_bh, H, 1, SOB, SOH)
    dv += i_bh64 * T * V
    den += i_bh64 * T
    dd += i_bh64 * T
    mx += i_bh64 * T
    amax += i_bh64 * T
    dm += i_bh64 * T
    gamma = window_gamma(logit, i_bh % H)
    # sum_i fq_i dn_i^T [BF, BV] and sum_i dd_i fq_i [BF] over queries >= Q_done
    b_P, b_r = load_segment_state(p0, r0, i_bh64, i_s, NSEG, BF, BV, 0, BV, FOLD)
    t_lo, t_hi = segment_chunks(i_s, CPS, T, BT)
    Q_done = _reverse_start((t_hi - 1) * BT, T, W, BT, TK)
    for i_r in range(t_hi - t_lo):
        c0 = (t_hi - 1 - i_r) * BT
        o_j = c0 + tl.arange(0, BT)
        m_j = o_j < T
        Q1 = _reverse_start(c0, T, W, BT, TK)  # queries >= Q1 see every key of this tile as linear
        b_P, b_r = _advance_reverse_state(fq, do, SOT, den, dd, b_P, b_r, Q1, Q_done, F, V, BT, BF, BV, PREC, DT)
        Q_done = Q1
        b_k = _rows(k, o_j, m_j, K, BK)  # [BT, BK]
        b_fk = _rows(fk, o_j, m_j, F, BF)  # [BT, BF]
        b_v = _rows(v, o_j, m_j, V, BV)  # [BT, BV]
        b_dk = tl.zeros([BT, BK], dtype=tl.float32)
        b_dfk = tl.zeros([BT, BF], dtype=tl.float32)
        b_dv = tl.zeros([BT, BV], dtype=tl.float32)
        if c0 < NS:  # sinks are window keys of every later query: visit them all, no state
            qend = T
        else:
            qend = Q1
            b_dfk += _dot(b_v, tl.trans(b_P), DT, PREC) + b_r[None, :]
            b_dv += _dot(b_fk, b_P, DT, PREC)
        if WIN_ONLY:  # a sink tile (c0 < NS) is the one case with linear keys: visited by far queries
            if c0 < NS:
                b_dk, b_dfk, b_dv = _dkv_queries(
                    q, fq, do, SOT, den, dd, mx, amax, dm, b_k, b_fk, b_v, b_dk, b_dfk, b_dv, o_j, c0, qend, T, W, NS,
                    scale, gamma, K, F, V, BT, BK, BF, BV, TK, PREC, DT, True)  # fmt: skip
            else:
                b_dk, b_dfk, b_dv = _dkv_queries(
                    q, fq, do, SOT, den, dd, mx, amax, dm, b_k, b_fk, b_v, b_dk, b_dfk, b_dv, o_j, c0, qend, T, W, NS,
                    scale, gamma, K, F, V, BT, BK, BF, BV, TK, PREC, DT, False)  # fmt: skip
        else:
            b_dk, b_dfk, b_dv = _dkv_queries(
                q, fq, do, SOT, den, dd, mx, amax, dm, b_k, b_fk, b_v, b_dk, b_dfk, b_dv, o_j, c0, qend, T, W, NS,
                scale, gamma, K, F, V, BT, BK, BF, BV, TK, PREC, DT, True)  # fmt: skip
        _store(dk, b_dk * scale, o_j, m_j, K, BK)
        _store(dfk, b_dfk, o_j, m_j, F, BF)
        _store(dv, b_dv, o_j, m_j, V, BV)
    if (i_s == 0) & (i_bh < H):  # dM is complete (the dq kernel wrote it): one program per head
        window_logit_grad(dm, logit, d_logit, i_bh, T, H)


# ----------------------------------------------------------------------------------------------- launchers
def _meta(q, k, fq, v, kind, window, chunk_size):
    """Compile-time arguments. WIN_ONLY: tk with tiles dividing the window, where every query tile's
    own key range [L0, c0 + BT) and every key tile's query range [c0, Q1) hold window pairs only (a tile
    lies in one block b = c0 // w, whose window is blocks b - 1 and b), so the kernels skip those ranges'
    linear dots; only sink key tiles still mix both kinds."""
    return _meta_for(q.shape[1], k.shape[1], v.shape[1], q.shape[-1], fq.shape[-1], v.shape[-1], q.dtype, kind,
                     window, chunk_size)  # fmt: skip


@functools.lru_cache(maxsize=256)  # host time on every launch (13 us a call uncached on the CPU machine)
def _meta_for(H, KH, VH, K, F, V, dtype, kind, window, chunk_size):
    """_meta from shapes; one dict per shape class, shared by the calls: read it, never modify it."""
    return dict(
        H=H, GK=H // KH, GV=H // VH, K=K, F=F, V=V,
        BT=chunk_size, BK=block(K), BF=block(F), BV=block(V), TK=kind == "tk", PREC=dot_precision(dtype),
        LOWP=dtype != torch.float32, WIN_ONLY=kind == "tk" and window % chunk_size == 0,
    )  # fmt: skip


def _linear_start_host(c0: int, window: int, tk: bool) -> int:
    """_linear_start on the host: keys below it are linear for every query >= c0."""
    return max((c0 // window - 1) * window if tk else c0 - window + 1, 0)


def _reverse_start_host(c0: int, T: int, window: int, bt: int, tk: bool) -> int:
    """_reverse_start on the host: queries from it on see the whole key tile at c0 as linear."""
    return min(((c0 + bt - 1) // window + 2) * window if tk else c0 + bt - 1 + window, T)


def _plan(q, T, chunk_size, segment_chunks):
    return plan_segments(T, chunk_size, q.shape[0] * q.shape[1], q.device, segment_chunks)


@functools.lru_cache(maxsize=256)  # a host-to-device copy waits for the stream: build once per shape
def _forward_bounds(T, window, kind, sink_tokens, chunk_size, cps, n_seg, device):
    """Segment s adds the keys [L0(c_s), L0(c_{s+1})) to the state (sinks never), c_s its first query."""
    tk, seg = kind == "tk", cps * chunk_size
    starts = [min(_linear_start_host(s * seg, window, tk), T) for s in range(n_seg + 1)]
    return bounds_tensor([(max(starts[s], sink_tokens), starts[s + 1]) for s in range(n_seg)], device)


@functools.lru_cache(maxsize=256)  # a host-to-device copy waits for the stream: build once per shape
def _reverse_bounds(T, window, kind, chunk_size, cps, n_seg, device):
    """Segment s's dk/dv scan starts from the queries >= A_s = Q1(its last key tile); the reverse state sums
    queries [A_s, A_{s+1}) per segment, and an inclusive suffix sum gives each segment its start."""
    tk, n_chunks = kind == "tk", -(-T // chunk_size)
    a = [_reverse_start_host((min((s + 1) * cps, n_chunks) - 1) * chunk_size, T, window, chunk_size, tk)
         for s in range(n_seg)] + [T]  # fmt: skip
    return bounds_tensor([(a[s], a[s + 1]) for s in range(n_seg)], device)


def _forward_states(q, k, v, fq, fk, *, window, kind, sink_tokens, chunk_size, cps, n_seg, meta):
    """(s0, z0): fp32 [B*H, NSEG, BF, BV] / [B*H, NSEG, BF], each segment's starting linear state."""
    T = q.shape[2]
    bounds = _forward_bounds(T, window, kind, sink_tokens, chunk_size, cps, n_seg, q.device)
    return segment_states(
        fk, None, v, bounds, H=meta["H"], GX=1, GY=meta["GV"], FH=0, BT=chunk_size, BK=meta["BF"],
        BF=meta["BF"], BV=meta["BV"], prec=meta["PREC"], lowp=meta["LOWP"],
    )  # fmt: skip


# The forward's query tile where the backward's is 32 tokens: 64 for tk windows that 64 divides (WIN_ONLY holds
# for both tiles). Measured: on an H200 at the 8B stage-2 shape (batch 4, 32 heads, 1k tokens, one segment;
# benchmarks/sweep_hybrid_plan.py, results/NVIDIA_H200-2026-12-01-sweep-hybrid-64.json) the forward took
# 0.257 ms with 64-token tiles against 0.330 with 32, while dq (0.679 vs 0.390 ms) and dk/dv (0.632 vs 0.511)
# were slower; on an H100 at batch 1 (results/NVIDIA_H100_80GB_HBM3-2026-11-23-hybrid64.json) the forward
# took 1.36 vs 1.67 ms at 16k and 2.41 vs 3.03 at 32k, the forward+backward more. So each direction keeps
# its faster tile. The two share segment boundaries (in tokens) and the row statistics, not tiles.
WIDE_FORWARD_TILE = 64


def forward_tile(chunk_size: int, window: int, kind: str, cps: int, n_seg: int) -> tuple[int, int]:
    """(tile, tiles per segment) for the forward, given the backward's chunk_size and segment plan (cps
    chunks per segment, n_seg segments): WIDE_FORWARD_TILE when chunk_size is the default 32, the window is
    tk with WIDE_FORWARD_TILE dividing it, and the segments hold whole wide tiles (one segment always
    does); otherwise the backward's own (chunk_size, cps)."""
    wide = WIDE_FORWARD_TILE
    ratio = wide // chunk_size
    if chunk_size == 32 and kind == "tk" and window % wide == 0 and (n_seg == 1 or cps % ratio == 0):
        return wide, -(-cps // ratio)
    return chunk_size, cps


def hybrid_attn_fwd(q, k, v, fq, fk, logit, *, window, kind, sink_tokens=0, scale, eps=HYBRID_EPS, chunk_size=32,
                    segment_chunks=None, stats=False):  # fmt: skip
    """Launch the forward. logit: window_logit [H] contiguous, any float dtype (the kernels take gamma =
    sigmoid(logit) themselves: no separate launch). Returns y [B, H, T, D], the segment start
    states (s0, z0, cps) and, when ``stats``, the row statistics the backward needs (``RowStats``), else
    None. chunk_size and cps are the backward's tile and tiles per segment (the forward may run wider
    tiles over the same segments: see forward_tile)."""
    B, H, T, _ = q.shape
    cps, n_seg = _plan(q, T, chunk_size, segment_chunks)
    tile, tile_cps = forward_tile(chunk_size, window, kind, cps, n_seg)
    meta = _meta(q, k, fq, v, kind, window, tile)
    s0, z0 = _forward_states(q, k, v, fq, fk, window=window, kind=kind, sink_tokens=sink_tokens,
                             chunk_size=tile, cps=tile_cps, n_seg=n_seg, meta=meta)  # fmt: skip
    # [B, H, T, D], one output per query head, laid out [B, T, H, D] (as SDPA's output): merging the heads
    # for the output projection is then a view, and the gradient that comes back from it needs no copy
    o = v.new_empty(B, T, H, v.shape[-1]).transpose(1, 2)
    row = RowStats.empty(o) if stats else None
    launch(
        hybrid_attn_fwd_kernel, (n_seg, B * H),
        q, k, v, fq, fk, logit, s0, z0, o, *o.stride()[:3], *(row if stats else (o,) * 4), T, window, sink_tokens,
        scale, eps, n_seg, CPS=tile_cps, STATS=stats, FOLD=fold_mode(n_seg, FOLD_PREFIX), **meta
    )  # fmt: skip
    return o, (s0, z0, cps), row


class RowStats(NamedTuple):
    """What the forward keeps per query row, besides its output y, so that the backward's dq kernel makes
    one pass over each row's keys instead of recomputing the forward first: u [B, H, T, D] in the output's
    dtype (dM = -dy . u, computed in fp32 without cancellation, so rounding it costs only its own relative
    error), den and mx (the window maximum M) [B, H, T] fp32, amax (M's key) [B, H, T] int32. With y itself
    (as FlashAttention does, dd = -dn . y uses the returned, rounded y: for half inputs the kernels already
    round dn and the state S to that precision in the same sums), 2 bytes per output element beyond it in
    bf16, plus 12 per row."""

    u: torch.Tensor
    den: torch.Tensor
    mx: torch.Tensor
    amax: torch.Tensor

    @classmethod
    def empty(cls, o: torch.Tensor) -> "RowStats":
        B, H, T, _ = o.shape
        den, mx = o.new_empty(2, B, H, T, dtype=torch.float32).unbind(0)
        return cls(o.new_empty(o.shape), den, mx, o.new_empty(B, H, T, dtype=torch.int32))  # u contiguous


def hybrid_attn_bwd(q, k, v, fq, fk, logit, do, *, window, kind, sink_tokens=0, scale, eps=HYBRID_EPS,
                    chunk_size=32, o=None, states=None, row=None, segment_chunks=None):  # fmt: skip
    """Launch the backward (dq scan, reverse segment states, dk/dv scan). logit: window_logit [H] contiguous.
    ``o``, ``states``, ``row``: the forward's output, (s0, z0, cps) and RowStats; when any is None the forward
    runs again to make them. Returns (dq, dk, dv, dfq, dfk, d window_logit [H] in the logit's dtype), the
    last written by the backward's last kernel (window_logit_grad)."""
    B, H, T, _ = q.shape
    meta = _meta(q, k, fq, v, kind, window, chunk_size)
    GK, GV = meta["GK"], meta["GV"]
    if o is None or states is None or row is None:
        o, states, row = hybrid_attn_fwd(
            q, k, v, fq, fk, logit, window=window, kind=kind, sink_tokens=sink_tokens, scale=scale, eps=eps,
            chunk_size=chunk_size, segment_chunks=segment_chunks, stats=True,
        )  # fmt: skip
    if do.stride() != o.stride():  # the kernels read o and do with one set of strides
        do = torch.empty_like(o).copy_(do)
    s0, z0, cps = states
    n_seg = s0.shape[1]
    dd, dm = q.new_empty(2, B, H, T, dtype=torch.float32).unbind(0)
    dq, dfq, dfk = (torch.empty_like(x) for x in (q, fq, fk))
    # dk, dv per query head; summed over each group of GK (GV) query heads below (fp32 when summed)
    dk = q.new_empty(B, H, T, k.shape[-1], dtype=torch.float32 if GK > 1 else k.dtype)
    dv = q.new_empty(B, H, T, v.shape[-1], dtype=torch.float32 if GV > 1 else v.dtype)
    d_logit = logit.new_empty(H)
    from .hybrid_window_split import split_applies, split_backward  # imports this module's kernel helpers

    if SPLIT_WINDOW_BACKWARD and split_applies(meta, sink_tokens):  # parallel window kernels + state scans
        split_backward(q, k, v, fq, fk, logit, do, o, row, s0, z0, cps, (dq, dk, dv, dfq, dfk, dd, dm, d_logit),
                       window=window, scale=scale, meta=meta)  # fmt: skip
        return _finish_backward(dq, dk, dv, dfq, dfk, d_logit, k, v, GK, GV)
    launch(
        hybrid_attn_bwd_dq_kernel, (n_seg, B * H),
        q, k, v, fq, fk, do, logit, s0, z0, o, *o.stride()[:3], row.u, dq, dfq, row.den, dd, row.mx, row.amax, dm, T,
        window, sink_tokens, scale, n_seg, CPS=cps, FOLD=fold_mode(n_seg, FOLD_PREFIX), **meta,
    )  # fmt: skip
    p0, r0 = _reverse_states(fq, do, row, dd, T, window, kind, chunk_size, cps, n_seg, meta)
    launch(
        hybrid_attn_bwd_dkv_kernel, (n_seg, B * H),
        q, k, v, fq, fk, do, *o.stride()[:3], logit, p0, r0, row.den, dd, row.mx, row.amax, dm, dk, dfk, dv, d_logit, T,
        window, sink_tokens, scale, n_seg, CPS=cps, FOLD=fold_mode(n_seg, FOLD_SUFFIX_INCLUSIVE), **meta,
    )  # fmt: skip
    return _finish_backward(dq, dk, dv, dfq, dfk, d_logit, k, v, GK, GV)


def _reverse_states(fq, do, row, dd, T, window, kind, chunk_size, cps, n_seg, meta):
    """(p0, r0): each dk/dv segment's starting reverse state (sum fq dn^T, sum dd fq over the queries that see
    its last key tile as linear: _reverse_bounds)."""
    bounds = _reverse_bounds(T, window, kind, chunk_size, cps, n_seg, fq.device)
    # with one segment the sum is over no queries (its last key tile is linear for none: Q1 >= T), and
    # segment_states returns zeros for an exclusive sum over one segment without a launch
    return segment_states(
        fq, None, do, bounds, H=meta["H"], GX=1, GY=1, FH=0, BT=chunk_size, BK=meta["BF"], BF=meta["BF"],
        BV=meta["BV"], prec=meta["PREC"], lowp=meta["LOWP"], den=row.den, dd=dd, inclusive=n_seg > 1,
    )  # fmt: skip


def _finish_backward(dq, dk, dv, dfq, dfk, d_logit, k, v, GK, GV):
    """The per-query-head dk, dv summed over each key/value head's group."""
    B, H, T = dq.shape[:3]
    if GK > 1:
        dk = dk.view(B, H // GK, GK, T, -1).sum(2).to(k.dtype)  # [B, KH, T, K]
    if GV > 1:
        dv = dv.view(B, H // GV, GV, T, -1).sum(2).to(v.dtype)  # [B, VH, T, D]
    return dq, dk, dv, dfq, dfk, d_logit


def save_forward(ctx, q, k, v, fq, fk, window_logit, window, kind, sink_tokens, scale, eps, chunk_size, segment_chunks,
                 extra=()):  # fmt: skip
    """The forward of an autograd.Function around the hybrid: runs hybrid_attn_fwd (row statistics only when
    a gradient is wanted) and saves on ctx what :func:`saved_backward` needs, after the ``extra`` tensors of
    the calling op. Returns y."""
    logit = window_logit.contiguous()  # [H]; the kernels take gamma = sigmoid(logit)
    o, (s0, z0, cps), row = hybrid_attn_fwd(
        q, k, v, fq, fk, logit, window=window, kind=kind, sink_tokens=sink_tokens, scale=scale, eps=eps,
        chunk_size=chunk_size, segment_chunks=segment_chunks, stats=any(ctx.needs_input_grad),
    )  # fmt: skip
    ctx.save_for_backward(*extra, q, k, v, fq, fk, logit, s0, z0, *((o, *row) if row else ()))
    ctx.n_extra, ctx.cps = len(extra), cps
    ctx.cfg = dict(window=window, kind=kind, sink_tokens=sink_tokens, scale=scale, eps=eps, chunk_size=chunk_size)
    return o


def saved_backward(ctx, do):
    """The backward from what :func:`save_forward` saved: (the extra tensors, (q, k), (dq, dk, dv, dfq, dfk,
    d window_logit in the logit's dtype))."""
    saved = ctx.saved_tensors
    extra, (q, k, v, fq, fk, logit, s0, z0, o, *row) = saved[: ctx.n_extra], saved[ctx.n_extra :]
    grads = hybrid_attn_bwd(q, k, v, fq, fk, logit, do, o=o, states=(s0, z0, ctx.cps), row=RowStats(*row), **ctx.cfg)
    return extra, (q, k), grads


class HybridAttnFunction(torch.autograd.Function):
    """Autograd wrapper; saves the inputs, the segment start states, the output and the forward's row
    statistics (RowStats)."""

    @staticmethod
    def forward(ctx, q, k, v, fq, fk, window_logit, *cfg):
        return save_forward(ctx, q, k, v, fq, fk, window_logit, *cfg)

    @staticmethod
    def backward(ctx, do):
        return *saved_backward(ctx, do)[2], None, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------- public op
def check_hybrid_args(q, k, v, window_logit, *, window, kind, sink_tokens, eps, chunk_size, segment_chunks,
                      features: dict) -> None:  # fmt: skip
    """The checks every hybrid op makes: q [B, H, T, K], k and v with B, T of q and head counts dividing H,
    one dtype and device (with the tensors in ``features``, e.g. fq/fk), window_logit [H] on q's device,
    and the window / kind / sinks / eps / tile options. Raises ValueError naming the problem."""
    check_tensor("q", q, 4, "[B, H, T, K]")
    for name, x in (("k", k), ("v", v), *features.items()):
        check_tensor(name, x, 4, "[B, H, T, *]")
    check_same_dtype_device(q=q, k=k, v=v, **features)
    B, H, T, _ = q.shape
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"q and k must have the same head dim, got {q.shape[-1]} and {k.shape[-1]}")
    for name, x in (("k", k), ("v", v)):
        if x.shape[0] != B or x.shape[2] != T:
            raise ValueError(f"{name} has [B, T] = {(x.shape[0], x.shape[2])} but q has {(B, T)}")
        if H % x.shape[1]:
            raise ValueError(
                f"{name} has {x.shape[1]} heads, which does not divide the {H} heads of q; grouped-query "
                "inputs need H to be a multiple of the key/value head count"
            )
    if not isinstance(window_logit, torch.Tensor) or window_logit.shape != (H,):
        got = tuple(window_logit.shape) if isinstance(window_logit, torch.Tensor) else type(window_logit).__name__
        raise ValueError(f"window_logit must be a tensor of shape [H] = ({H},), one logit per head, got {got}")
    if window_logit.device != q.device:
        raise ValueError(f"window_logit is on {window_logit.device} but q is on {q.device}; move it")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1 (for window=0 use the linear-attention kernel), got {window!r}")
    if kind not in ("tk", "sw"):
        raise ValueError(f"kind must be 'tk' (terraced blocks) or 'sw' (plain sliding window), got {kind!r}")
    if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 0:
        raise ValueError(f"sink_tokens must be an int >= 0, got {sink_tokens!r}")
    if not (isinstance(eps, float) and eps >= 0.0):
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    check_chunk_size(chunk_size)
    check_segment_chunks(segment_chunks)


def hybrid_attn(
    q, k, v, fq, fk, window_logit, *, window: int, kind: str = "tk", sink_tokens: int = 0,
    scale: float | None = None, eps: float = HYBRID_EPS, chunk_size: int = 32, segment_chunks: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """Causal LoLCATs hybrid attention (Triton), exactly ``naive_hybrid_attn`` (SPEC.md), differentiable
    w.r.t. q, k, v, fq, fk and window_logit.

    Args:
        q: [B, H, T, K], k: [B, KH, T, K] after RoPE; v: [B, VH, T, D]; KH and VH divide H (grouped-query
            attention without repeating: query head h reads key/value head h // (H / KH)).
        fq, fk: [B, H, T, F] feature-mapped q and k (per query head, as after HF's repeat_kv). window_logit: [H], gamma = sigmoid(window_logit).
        window: w >= 1 (for w = 0 use the linear kernel). kind: "tk" or "sw". sink_tokens: n >= 0.
        scale: score scale, default K ** -0.5. chunk_size: query/key tile (power of two >= 16).
        segment_chunks: query tiles per sequence segment (segments.py); None fills the GPU.
    Returns: y [B, H, T, D] in v's dtype, laid out [B, T, H, D] in memory (``y.transpose(1, 2)`` is
    contiguous, as with SDPA). Memory O(B H T) beyond inputs and outputs.
    """
    def check():
        check_hybrid_args(q, k, v, window_logit, window=window, kind=kind, sink_tokens=sink_tokens, eps=eps,
                          chunk_size=chunk_size, segment_chunks=segment_chunks, features=dict(fq=fq, fk=fk))  # fmt: skip
        if fq.shape != fk.shape:
            raise ValueError(f"fq and fk must have the same shape, got {tuple(fq.shape)} and {tuple(fk.shape)}")
        if fq.shape[:3] != q.shape[:3]:
            raise ValueError(f"fq has [B, H, T] = {tuple(fq.shape[:3])} but q has {tuple(q.shape[:3])}")

    check_once(check, "hybrid_attn", q, k, v, fq, fk, window_logit, window, kind, sink_tokens, eps, chunk_size,
               segment_chunks)  # fmt: skip
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return HybridAttnFunction.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), fq.contiguous(), fk.contiguous(), window_logit,
        window, kind, sink_tokens, scale, eps, chunk_size, segment_chunks,
    )  # fmt: skip
