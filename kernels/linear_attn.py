"""Causal linear attention in Triton: chunked forward and backward, optionally with the Hedgehog map fused in.

Math (SPEC.md "Pure linear attention"), per batch element and head, with fq = phi_q(q), fk = phi_k(k):

    y_i = sum_{j<=i} (fq_i . fk_j) v_j / (sum_{j<=i} fq_i . fk_j + eps),      eps = 1e-12 (fp32)

Reference: ``lolcats_lab.attention.linear.naive_linear_attn`` (causal, no key mask).

Shapes at the public boundary, layout [B, H, T, *] (keys may have KH and values VH heads, dividing H:
grouped-query heads are read in place, query head h using key/value head h // (H / KH), as HF's repeat_kv):
    unfused  (:func:`linear_attn`):           fq, fk [B, H, T, F] (non-negative), v [B, H, T, D]
    fused    (:func:`hedgehog_linear_attn`, fuse_map=True; its default runs the staged form of
             hedgehog_linear.py instead, the map kernel then the unfused kernels):
             q, k [B, H, T, K], v [B, H, T, D], wq, wk [H, K, f]
             phi(x) = clamp(concat(softmax(x W_h), softmax(-x W_h)), min=1e-12) over the f features
             (SPEC.md "Hedgehog feature map"; F = 2f), computed in registers from the q/k tiles, so the
             features never reach global memory. Inside the kernels the two halves are interleaved
             (pos_0, neg_0, pos_1, ...) rather than concatenated: only dot products over F are taken,
             so the order is irrelevant as long as queries and keys share it. The projection is loaded
             widened, W2 = (w_0, -w_0, w_1, -w_1, ...), so x W2 gives (z, -z) interleaved in one tl.dot
             and each softmax is a reduction over one column parity (no reshapes, which Triton's GPU
             layouts reject for dot results).
    output y [B, H, T, D] in v's dtype.

Precision: accumulation and the state are fp32 everywhere. Dot operands are fp32 for fp32 inputs (exact
"ieee" in the interpreter, three-TF32 "tf32x3" on the GPU: _utils.dot_precision); for fp16/bf16 inputs
every dot operand (features, state, projection) is cast to the input's half type ("LOWP", as
FlashAttention and fla do), which halves the shared memory the operands take and runs
on the half-precision tensor cores at twice the TF32 rate. One dot keeps fp32 operands (TF32): dn . v
in dA = dn . v + dd, whose two terms cancel (dA_ij = dn_i . (v_j - y_i)), so their rounding would
dominate the gradient of the features; by default, though, dn is rounded to the half type once, where it is
computed, and every term (dd included) takes that value, so dn . v runs on half operands too
(_tl_helpers.DN_ROUNDED).

Algorithm: the sequence is cut into segments of CPS chunks (segments.py): a first kernel sums each
segment's keys into (S_s, z_s) in parallel, a prefix sum over segments gives each segment its starting
state, and one program per (batch, head, segment) then walks its chunks of BT tokens, keeping the state
S = sum_j fk_j v_j^T [F, D] and z = sum_j fk_j [F] of earlier chunks in registers (fla's "fused chunk"
form within a segment; B*H*NSEG programs fill the GPU where B*H alone would leave most SMs idle). Within a chunk the masked quadratic term A = tril(fq fk^T) is used. Every tile is loaded, cast to
fp32, and accumulated in fp32; F, D and T need not be powers of two (tiles are padded and masked).

Backward (dn_i = dy_i / den_i, dd_i = -dn_i . y_i, and dA_ij = dn_i . v_j + dd_i for j <= i):
    dfq_i = sum_{j<=i} dA_ij fk_j  = S_i dn_i + dd_i z_i + intra-chunk      (forward scan, kernel 1)
    dfk_j = sum_{i>=j} dA_ij fq_i  = P_j v_j + r_j + intra-chunk            (reverse scan, kernel 2)
    dv_j  = sum_{i>=j} (fq_i . fk_j) dn_i = P_j^T fk_j + intra-chunk
with the reverse states P_j = sum_{i>=j} fq_i dn_i^T [F, D] and r_j = sum_{i>=j} dd_i fq_i [F], started
per segment from a suffix sum of per-segment reverse states (segments.py, reverse mode). The forward
saves y (in v's dtype) and den ([B, H, T] fp32) beside the inputs and the segment start states, so the
backward recomputes no output: kernel 1 takes dd from y (as FlashAttention's backward takes rowsum(dO * O)
from its output; in half precision dd then carries y's rounding, ~2^-9 relative) and writes it ([B, H, T]
fp32) for kernel 2. That drops three of kernel 1's seven dots per chunk (fq fk^T, A v, fq S) and, unfused,
its loads of the query features. With the fused map both kernels recompute phi and back-propagate through
the softmaxes to the gradient of z2 = x W2, and write that of the projection's output z = x W ([B, H, T, f]
in x's dtype: the difference of z2's interleaved column pairs, taken in fp32 in the kernel); the projection's
backward (dx = dz W^T, dW = x^T dz) then runs over the whole sequence (``hedgehog_project.project_back_any``:
two GEMMs per map, or one Triton launch per map):
accumulating dW in the kernels held two more [K, F] fp32 tiles in registers, and the kernels spilled, and
writing dx = d(x W2) W2^T from the kernels (one more dot per chunk, no GEMM reading dz back) made them slower
by more than the GEMM took on the H200 (16k: 5.19 against 5.01 ms, results/*-session9-fused-dx-rejected.json).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._launch import launch
from ._tl_helpers import (
    dn_dot_v,
    dot,
    head_offsets,
    hedgehog_dz,
    hedgehog_fwd,
    load_rows,
    load_segment_state,
    load_w2,
    pair_difference,
    phi_halves_dz,
    scaled_dy,
    segment_chunks,
    store_rows,
)
from ._utils import (
    FOLD_PREFIX,
    FOLD_SUFFIX,
    autotune_configs,
    block,
    check_chunk_size,
    check_once,
    check_projection,
    check_segment_chunks,
    check_same_dtype_device,
    check_tensor,
    dot_precision,
)
from .hedgehog_map import hedgehog_map_fits
from .hedgehog_project import project_back_any
from .segments import bounds_tensor, fold_mode, plan_segments, segment_states

LINEAR_EPS = 1e-12

# Two candidates (every extra one costs a compile per shape and dtype). Compiled for sm_90 without a GPU
# (ptxas -v, bf16, K = D = F = 128), 8 warps and 32-token tiles spill the least registers: 0.07-0.7 KB
# (linear) and 0.04-2.4 KB (hybrid) per kernel, against 2.4-4.3 KB and up to 6.3 KB with 4 warps at 64-token
# tiles; hence also the default chunk_size of 32 (benchmarks/README.md, "Register spills").
# (8 warps, 3 stages) first: 4.6% faster than 2 stages for the hybrid kernels, which share this structure, at the
# 8B stage-2 shape on an H200 (hybrid_attn.py); the autotuner times all three on the first call of each key.
_CONFIGS = autotune_configs(
    triton.Config({}, num_warps=8, num_stages=3),
    triton.Config({}, num_warps=8, num_stages=2),
    triton.Config({}, num_warps=4, num_stages=2),
)
_KEY = ["K", "V", "FH", "BT", "BV", "HEDGEHOG", "LOWP", "GK", "GV"]
_KEY_BWD = _KEY + ["FZ"]


@triton.jit
def _features(b_q, b_k, b_wq, b_wk, m_t, FH: tl.constexpr, BF: tl.constexpr, HEDGEHOG: tl.constexpr,
              PREC: tl.constexpr, DT: tl.constexpr):  # fmt: skip
    """(fq, fk, softmax of q, softmax of k) for a chunk: Hedgehog computed in registers, or the inputs.

    The features are rounded to the dot operand type DT once, here, so that the normaliser sums (z, row
    sums of A) see the same values as the dots: numerator and denominator stay consistent, and y = v
    exactly where every weight falls on one key."""
    if HEDGEHOG:
        b_fq, b_pq = hedgehog_fwd(b_q, b_wq, m_t, FH, BF, PREC)  # [BT, BF]
        b_fk, b_pk = hedgehog_fwd(b_k, b_wk, m_t, FH, BF, PREC)
        b_fq = b_fq.to(DT).to(tl.float32)
        b_fk = b_fk.to(DT).to(tl.float32)
    else:
        b_fq, b_pq, b_fk, b_pk = b_q, b_q, b_k, b_k
    return b_fq, b_fk, b_pq, b_pk


# ----------------------------------------------------------------------------------------------- kernels
@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit(do_not_specialize=["T", "NSEG", "CPS"])
def linear_attn_fwd_kernel(
    q, k, v, wq, wk, s0, z0, o, den, T, eps, NSEG,
    H: tl.constexpr, GK: tl.constexpr, GV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, FH: tl.constexpr,
    CPS, BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, BVS: tl.constexpr,
    HEDGEHOG: tl.constexpr, PREC: tl.constexpr, LOWP: tl.constexpr, FOLD: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(D, BV), NSEG, B*H): segment i_s of chunks [i_s CPS, (i_s + 1) CPS), starting from the
    state (s0, z0) of all earlier segments. q, k: [B, H, T, K] (features when not HEDGEHOG, K = F). Writes
    y to o [B, H, T, D] and the normaliser den [B, H, T] fp32 (from the first column block) for the backward."""
    i_v, i_s, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_bq, i_bk, i_bv = head_offsets(i_bh, H, GK, GV)
    DT = q.dtype.element_ty if LOWP else tl.float32  # dot operand dtype (see the module docstring)
    q += i_bq * T * K
    k += i_bk * T * K
    v += i_bv * T * V + i_v * BV
    o += i_bq * T * V + i_v * BV
    den += i_bq * T
    NV = V - i_v * BV  # columns left in this block (masks the last one)
    b_wq = q  # placeholders when not HEDGEHOG
    b_wk = q
    if HEDGEHOG:
        i_h = (i_bh % H).to(tl.int64)
        b_wq = load_w2(wq + i_h * K * FH, K, FH, BK, BF, DT)  # [BK, BF]
        b_wk = load_w2(wk + i_h * K * FH, K, FH, BK, BF, DT)
    # sum_j fk_j v_j^T [BF, BV] and sum_j fk_j [BF] over the earlier segments
    b_S, b_z = load_segment_state(s0, z0, i_bq, i_s, NSEG, BF, BVS, i_v * BV, BV, FOLD)
    o_c = tl.arange(0, BT)
    t_lo, t_hi = segment_chunks(i_s, CPS, T, BT)
    for i_t in range(t_lo, t_hi):
        o_t = i_t * BT + o_c
        m_t = o_t < T
        b_q = load_rows(q, o_t, m_t, K, BK)  # [BT, BK]
        b_k = load_rows(k, o_t, m_t, K, BK)
        b_fq, b_fk, _, _ = _features(b_q, b_k, b_wq, b_wk, m_t, FH, BF, HEDGEHOG, PREC, DT)
        m_tv = m_t[:, None] & (tl.arange(0, BV) < NV)[None, :]  # [BT, BV]
        p_v = o_t[:, None] * V + tl.arange(0, BV)[None, :]
        b_v = tl.load(v + p_v, mask=m_tv, other=0.0).to(tl.float32)  # [BT, BV]
        b_A = dot(b_fq, tl.trans(b_fk), DT, PREC).to(DT).to(tl.float32)  # [BT, BT], as the next dot sees it
        b_A = tl.where(o_c[:, None] >= o_c[None, :], b_A, 0.0)
        b_num = dot(b_A, b_v, DT, PREC) + dot(b_fq, b_S, DT, PREC)  # [BT, BV]
        b_den = tl.sum(b_A, 1) + tl.sum(b_fq * b_z[None, :], 1) + eps  # [BT]
        tl.store(o + p_v, (b_num / b_den[:, None]).to(o.dtype.element_ty), mask=m_tv)
        if i_v == 0:
            tl.store(den + o_t, b_den, mask=m_t)
        b_S += dot(tl.trans(b_fk), b_v, DT, PREC)
        b_z += tl.sum(b_fk, 0)


@triton.autotune(configs=_CONFIGS, key=_KEY_BWD)
@triton.jit(do_not_specialize=["T", "NSEG", "CPS"])
def linear_attn_bwd_dq_kernel(
    q, k, v, do, y, wq, wk, s0, z0, dq, den, dd, T, NSEG,
    H: tl.constexpr, GK: tl.constexpr, GV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, FH: tl.constexpr,
    CPS, BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, GW: tl.constexpr,
    HEDGEHOG: tl.constexpr, PREC: tl.constexpr, LOWP: tl.constexpr, FZ: tl.constexpr, BFZ: tl.constexpr,
    FOLD: tl.constexpr,
):  # fmt: skip
    """Forward scan of one segment, grid (NSEG, B*H), from the forward's output y and normaliser den: write
    dd [B, H, T] and dq [B, H, T, GW]: dfq (GW = F), or with the fused map the gradient of z = q W (GW = f;
    hedgehog_dz, pair_difference), or unfused with FZ > 0 (the staged Hedgehog op: the features are phi in
    SPEC order with FZ columns per half) that of z = q W (GW = FZ) from the features (phi_halves_dz).
    Otherwise the query features are not read at all (dfq needs none).
    (Summing the segment's reverse state P_s = sum fq dn^T here as well, instead of in a separate
    segment_state_kernel pass, was slower on an H200: benchmarks/README.md, session 8.)"""
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    i_bq, i_bk, i_bv = head_offsets(i_bh, H, GK, GV)
    DT = q.dtype.element_ty if LOWP else tl.float32  # dot operand dtype (see the module docstring)
    q += i_bq * T * K
    k += i_bk * T * K
    dq += i_bq * T * GW
    v += i_bv * T * V
    do += i_bq * T * V
    y += i_bq * T * V
    den += i_bq * T
    dd += i_bq * T
    b_wq = q  # placeholders when not HEDGEHOG
    b_wk = q
    if HEDGEHOG:
        i_h = (i_bh % H).to(tl.int64)
        b_wq = load_w2(wq + i_h * K * FH, K, FH, BK, BF, DT)  # [BK, BF]
        b_wk = load_w2(wk + i_h * K * FH, K, FH, BK, BF, DT)
    b_S, b_z = load_segment_state(s0, z0, i_bq, i_s, NSEG, BF, BV, 0, BV, FOLD)
    o_c = tl.arange(0, BT)
    m_causal = o_c[:, None] >= o_c[None, :]
    t_lo, t_hi = segment_chunks(i_s, CPS, T, BT)
    for i_t in range(t_lo, t_hi):
        o_t = i_t * BT + o_c
        m_t = o_t < T
        b_k = load_rows(k, o_t, m_t, K, BK)
        if HEDGEHOG:  # the query map only for its softmax (hedgehog_dz); fq itself is dead code here
            _, b_fk, b_pq, _ = _features(load_rows(q, o_t, m_t, K, BK), b_k, b_wq, b_wk, m_t, FH, BF, HEDGEHOG,
                                         PREC, DT)  # fmt: skip
        else:
            b_pq = b_k  # placeholder
            b_fk = b_k
        b_v = load_rows(v, o_t, m_t, V, BV)  # [BT, BV]
        b_do = load_rows(do, o_t, m_t, V, BV)
        b_den = tl.load(den + o_t, mask=m_t, other=1.0)  # [BT]
        b_dn = scaled_dy(b_do, b_den, DT)  # dL/dnum   [BT, BV]
        b_dd = -tl.sum(b_dn * load_rows(y, o_t, m_t, V, BV), 1)  # dL/dden = -dn . num / den   [BT]
        tl.store(dd + o_t, b_dd, mask=m_t)
        b_dA = tl.where(m_causal, dn_dot_v(b_dn, b_v, DT, PREC) + b_dd[:, None], 0.0)  # see the module docstring
        b_dfq = (
            dot(b_dA, b_fk, DT, PREC)
            + dot(b_dn, tl.trans(b_S), DT, PREC)
            + b_dd[:, None] * b_z[None, :]
        )  # [BT, BF]
        if HEDGEHOG:  # d(q W) [BT, BF / 2] from d(q W2) [BT, BF]
            store_rows(dq, pair_difference(hedgehog_dz(b_dfq, b_pq, BF), BT, BF), o_t, m_t, GW, BF // 2)
        elif FZ > 0:  # d(q W) [BT, FZ] from dphi and phi (the staged Hedgehog op)
            b_phi = load_rows(q, o_t, m_t, K, BK)  # [BT, BF]: the query features, K = F
            store_rows(dq, phi_halves_dz(b_dfq, b_phi, BT, FZ, BF, BFZ, PREC), o_t, m_t, GW, BFZ)
        else:
            store_rows(dq, b_dfq, o_t, m_t, GW, BF)
        b_S += dot(tl.trans(b_fk), b_v, DT, PREC)
        b_z += tl.sum(b_fk, 0)


@triton.autotune(configs=_CONFIGS, key=_KEY_BWD)
@triton.jit(do_not_specialize=["T", "NSEG", "CPS"])
def linear_attn_bwd_dkv_kernel(
    q, k, v, do, wq, wk, p0, r0, den, dd, dk, dv, T, NSEG,
    H: tl.constexpr, GK: tl.constexpr, GV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, FH: tl.constexpr,
    CPS, BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, GW: tl.constexpr,
    HEDGEHOG: tl.constexpr, PREC: tl.constexpr, LOWP: tl.constexpr, FZ: tl.constexpr, BFZ: tl.constexpr,
    FOLD: tl.constexpr,
):  # fmt: skip
    """Reverse scan of one segment, grid (NSEG, B*H), from the reverse state (p0, r0) of all later
    segments: dv and dk [B, H, T, GW] per query head (dfk, or the gradient of z = k W with the fused
    map, or with FZ > 0 from the key features as the dq kernel does), from den, dd of the dq kernel."""
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    i_bq, i_bk, i_bv = head_offsets(i_bh, H, GK, GV)
    DT = q.dtype.element_ty if LOWP else tl.float32  # dot operand dtype (see the module docstring)
    q += i_bq * T * K
    k += i_bk * T * K
    dk += i_bq * T * GW
    v += i_bv * T * V
    do += i_bq * T * V
    dv += i_bq * T * V
    den += i_bq * T
    dd += i_bq * T
    b_wq = q  # placeholders when not HEDGEHOG
    b_wk = q
    if HEDGEHOG:
        i_h = (i_bh % H).to(tl.int64)
        b_wq = load_w2(wq + i_h * K * FH, K, FH, BK, BF, DT)
        b_wk = load_w2(wk + i_h * K * FH, K, FH, BK, BF, DT)
    # sum_{i in later chunks} fq_i dn_i^T [BF, BV] and sum_{i in later chunks} dd_i fq_i [BF]
    b_P, b_r = load_segment_state(p0, r0, i_bq, i_s, NSEG, BF, BV, 0, BV, FOLD)
    o_c = tl.arange(0, BT)
    m_causal = o_c[:, None] >= o_c[None, :]  # [i, j]: j <= i
    t_lo, t_hi = segment_chunks(i_s, CPS, T, BT)
    for i_r in range(t_hi - t_lo):
        i_t = t_hi - 1 - i_r
        o_t = i_t * BT + o_c
        m_t = o_t < T
        b_q = load_rows(q, o_t, m_t, K, BK)
        b_k = load_rows(k, o_t, m_t, K, BK)
        b_fq, b_fk, _, b_pk = _features(b_q, b_k, b_wq, b_wk, m_t, FH, BF, HEDGEHOG, PREC, DT)
        b_v = load_rows(v, o_t, m_t, V, BV)  # [BT, BV]
        b_do = load_rows(do, o_t, m_t, V, BV)
        b_den = tl.load(den + o_t, mask=m_t, other=1.0)  # [BT]
        b_dd = tl.load(dd + o_t, mask=m_t, other=0.0)
        b_dn = scaled_dy(b_do, b_den, DT)  # [BT, BV], as the dq kernel and the reverse state sums take it
        b_A = tl.where(m_causal, dot(b_fq, tl.trans(b_fk), DT, PREC).to(DT).to(tl.float32), 0.0)  # [BT_i, BT_j]
        b_dA = tl.where(m_causal, dn_dot_v(b_dn, b_v, DT, PREC) + b_dd[:, None], 0.0)
        b_dfk = (
            dot(tl.trans(b_dA), b_fq, DT, PREC)
            + dot(b_v, tl.trans(b_P), DT, PREC)
            + b_r[None, :]
        )  # [BT, BF]
        b_dv = dot(tl.trans(b_A), b_dn, DT, PREC) + dot(b_fk, b_P, DT, PREC)
        store_rows(dv, b_dv, o_t, m_t, V, BV)
        if HEDGEHOG:  # d(k W) [BT, BF / 2] from d(k W2) [BT, BF]
            store_rows(dk, pair_difference(hedgehog_dz(b_dfk, b_pk, BF), BT, BF), o_t, m_t, GW, BF // 2)
        elif FZ > 0:  # d(k W) [BT, FZ] from dphi and phi (the staged Hedgehog op); b_fk as loaded (fp32)
            store_rows(dk, phi_halves_dz(b_dfk, b_fk, BT, FZ, BF, BFZ, PREC), o_t, m_t, GW, BFZ)
        else:
            store_rows(dk, b_dfk, o_t, m_t, GW, BF)
        b_P += dot(tl.trans(b_fq), b_dn, DT, PREC)
        b_r += tl.sum(b_dd[:, None] * b_fq, 0)


# ----------------------------------------------------------------------------------------------- launchers
def _sizes(q, v, wq, chunk_size):
    """Compile-time sizes: K (q/k last dim), V, FH (f, 0 unfused), BT, BK, BF (feature tile), BV (full V)."""
    K, V = q.shape[-1], v.shape[-1]
    FH = wq.shape[-1] if wq is not None else 0
    BK, BV = block(K), block(V)
    BF = 2 * block(FH) if wq is not None else BK
    return dict(K=K, V=V, FH=FH, BT=chunk_size, BK=BK, BF=BF, BV=BV)


def _lowp(q, wq, sz) -> bool:
    """Half-precision dot operands for fp16/bf16 inputs: tensor-core rate twice TF32's and half the shared
    memory (the fp32 state is rounded to the input's type only as a dot operand; sums stay fp32)."""
    return q.dtype != torch.float32


@functools.lru_cache(maxsize=256)  # a host-to-device copy waits for the stream: build once per shape
def _segment_bounds(T, chunk_size, cps, n_seg, device):
    """Segment s covers tokens [s CPS BT, (s + 1) CPS BT) (the linear kernels' own tokens)."""
    seg = cps * chunk_size
    return bounds_tensor([(s * seg, min((s + 1) * seg, T)) for s in range(n_seg)], device)


def _state_args(q, wq, sz):
    """segment_states arguments shared by the forward and reverse state sums."""
    return dict(H=q.shape[1], FH=sz["FH"], BT=sz["BT"], BK=sz["BK"], BF=sz["BF"], BV=sz["BV"],
                prec=dot_precision(q.dtype), lowp=_lowp(q, wq, sz))  # fmt: skip


def _forward_states(q, k, v, wq, wk, sz, segment_chunks):
    """(s0, z0, cps): the fp32 state each segment starts from, [B*H, NSEG, BF, BV] and [B*H, NSEG, BF] (an
    exclusive prefix sum of per-segment key sums; views of one buffer, scanned in one pass), and the chunks
    per segment."""
    B, H, T, _ = q.shape
    chunk_size = sz["BT"]
    cps, n_seg = plan_segments(T, chunk_size, B * H, q.device, segment_chunks)
    bounds = _segment_bounds(T, chunk_size, cps, n_seg, q.device)
    s0, z0 = segment_states(k, wk, v, bounds, GX=H // k.shape[1], GY=H // v.shape[1], **_state_args(q, wq, sz))
    return s0, z0, cps


def linear_attn_fwd(q, k, v, wq=None, wk=None, *, eps=LINEAR_EPS, chunk_size=32, block_v=None,
                    segment_chunks=None):  # fmt: skip
    """Launch the forward. q [B, H, T, K], k [B, KH, T, K] (features, or raw with wq/wk [H, K, f]);
    v [B, VH, T, D] -> (y [B, H, T, D], saved): saved = (den [B, H, T] fp32 the normaliser, s0, z0 the fp32
    state each segment starts from, cps), what the backward reads besides the inputs and y."""
    B, H, T, _ = q.shape
    sz = _sizes(q, v, wq, chunk_size)
    GK, GV = H // k.shape[1], H // v.shape[1]
    s0, z0, cps = _forward_states(q, k, v, wq, wk, sz, segment_chunks)
    n_seg = s0.shape[1]
    BVS = sz.pop("BV")
    if block_v is None:  # split D only when the segments leave the GPU underfilled
        block_v = BVS if n_seg > 1 else 64
    BV = min(BVS, block(block_v))
    o = v.new_empty(B, H, T, v.shape[-1])  # [B, H, T, D]: one output per query head
    den = q.new_empty(B, H, T, dtype=torch.float32)
    grid = (triton.cdiv(sz["V"], BV), n_seg, B * H)
    launch(
        linear_attn_fwd_kernel, grid,
        q, k, v, q if wq is None else wq, k if wk is None else wk, s0, z0, o, den, T, eps, n_seg,
        H=H, GK=GK, GV=GV, CPS=cps, BV=BV, BVS=BVS, HEDGEHOG=wq is not None,
        PREC=dot_precision(q.dtype), LOWP=_lowp(q, wq, dict(sz, BV=BVS)), FOLD=fold_mode(n_seg, FOLD_PREFIX), **sz,
    )  # fmt: skip
    return o, (den, s0, z0, cps)


def linear_attn_bwd(q, k, v, y, do, saved, wq=None, wk=None, *, chunk_size=32, phi_half=0):
    """Launch the backward (dq scan, reverse segment states, dk/dv scan) from the forward's output y and
    ``saved`` = (den, s0, z0, cps) (:func:`linear_attn_fwd`): dd = -dn . y with dn = do / den (the gradient
    of the normaliser, as FlashAttention takes rowsum(dO * O) from its output), so no kernel recomputes
    the forward. Returns (dq, dk, dv, dwq, dwk); dwq, dwk are None when unfused.

    ``phi_half`` = f > 0 (unfused only; features q, k = phi [B, H, T, 2f] in SPEC order, one key head per
    query head): dq, dk are instead the gradients of the maps' projections z = x W [B, H, T, f], taken in the
    kernels from the features themselves (the staged Hedgehog op; ``_tl_helpers.phi_halves_dz``)."""
    B, H, T, K = q.shape
    sz = _sizes(q, v, wq, chunk_size)
    hedgehog = wq is not None
    GK, GV = H // k.shape[1], H // v.shape[1]
    if phi_half and (hedgehog or GK > 1 or K != 2 * phi_half):
        raise ValueError(f"phi_half={phi_half} needs unfused features phi [B, H, T, 2 phi_half] with one key head "
                         f"per query head, got q {tuple(q.shape)}, k {tuple(k.shape)}, fused={hedgehog}")  # fmt: skip
    sargs = _state_args(q, wq, sz)
    den, s0, z0, cps = saved
    n_seg = s0.shape[1]
    bounds = _segment_bounds(T, chunk_size, cps, n_seg, q.device)
    dd = q.new_empty(B, H, T, dtype=torch.float32)
    # dq / dk rows: dfq / dfk (GW = F), or with the fused map dz = d(x W) (GW = f), projected back below.
    # dk, dv per query head; summed over each group of GK (GV) query heads below (fp32 when summed)
    GW = sz["FH"] if hedgehog else (phi_half or K)
    dq = q.new_empty(B, H, T, GW)
    dk = q.new_empty(B, H, T, GW, dtype=torch.float32 if (GK > 1 and not hedgehog) else k.dtype)
    dv = q.new_empty(B, H, T, v.shape[-1], dtype=torch.float32 if GV > 1 else v.dtype)
    common = dict(H=H, GK=GK, GV=GV, CPS=cps, GW=GW, HEDGEHOG=hedgehog, PREC=dot_precision(q.dtype),
                  LOWP=_lowp(q, wq, sz), FZ=phi_half, BFZ=block(phi_half) if phi_half else 16, **sz)  # fmt: skip
    wq_, wk_ = (wq, wk) if hedgehog else (q, k)  # placeholders, never read when unfused
    launch(linear_attn_bwd_dq_kernel, (n_seg, B * H), q, k, v, do, y, wq_, wk_, s0, z0, dq, den, dd, T, n_seg,
           FOLD=fold_mode(n_seg, FOLD_PREFIX), **common)  # fmt: skip
    # reverse states: P = sum fq dn^T, r = sum dd fq over each segment's queries, then over later segments
    p0, r0 = segment_states(q, wq, do, bounds, GX=1, GY=1, den=den, dd=dd, **sargs)
    launch(linear_attn_bwd_dkv_kernel, (n_seg, B * H), q, k, v, do, wq_, wk_, p0, r0, den, dd, dk, dv, T, n_seg,
           FOLD=fold_mode(n_seg, FOLD_SUFFIX), **common)  # fmt: skip
    if GV > 1:
        dv = dv.view(B, H // GV, GV, T, v.shape[-1]).sum(2).to(v.dtype)  # [B, VH, T, D]
    if not hedgehog:
        if GK > 1:
            dk = dk.view(B, H // GK, GK, T, K).sum(2).to(k.dtype)  # [B, KH, T, K]
        return dq, dk, dv, None, None
    # the projections' backward: hedgehog_project's kernel where it takes dz (in q's dtype), else cuBLAS GEMMs;
    # map by map, each dz freed before the next map's dx exists (this op's peak memory: project_back_any)
    maps = [(dq, q, wq, True, True), (dk, k, wk, True, True)]
    del dq, dk
    (dq, dwq), (dk, dwk) = project_back_any(maps, paired=False)
    return dq, dk, dv, dwq, dwk


class LinearAttnFunction(torch.autograd.Function):
    """Autograd wrapper; saves the inputs, the output y, the normaliser (fp32 [B, H, T]) and the segment
    start states (fp32 [B*H, NSEG, F, D], small); the backward recomputes the features."""

    @staticmethod
    def forward(ctx, q, k, v, wq, wk, eps, chunk_size, segment_chunks):
        o, (den, s0, z0, cps) = linear_attn_fwd(
            q, k, v, wq, wk, eps=eps, chunk_size=chunk_size, segment_chunks=segment_chunks
        )
        ctx.save_for_backward(q, k, v, wq, wk, o, den, s0, z0)
        ctx.chunk_size, ctx.cps = chunk_size, cps
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, wq, wk, o, den, s0, z0 = ctx.saved_tensors
        dq, dk, dv, dwq, dwk = linear_attn_bwd(
            q, k, v, o, do.contiguous(), (den, s0, z0, ctx.cps), wq, wk, chunk_size=ctx.chunk_size
        )
        return dq, dk, dv, dwq, dwk, None, None, None


# ----------------------------------------------------------------------------------------------- public ops
def _check_common(v, eps, chunk_size, segment_chunks, **qk):
    """Shapes: queries [B, H, T, *]; keys [B, KH, T, *] and v [B, VH, T, D] with KH, VH dividing H
    (grouped-query attention: query head h reads key head h // (H / KH), as HF's repeat_kv)."""
    (a, x), (b, y) = qk.items()
    for name, t in qk.items():
        check_tensor(name, t, 4, "[B, H, T, *]")
    check_tensor("v", v, 4, "[B, H, T, D]")
    check_same_dtype_device(**qk, v=v)
    B, H, T = x.shape[:3]
    if y.shape[-1] != x.shape[-1]:
        raise ValueError(f"{a} and {b} must have the same last dim, got {x.shape[-1]} and {y.shape[-1]}")
    for name, t in ((b, y), ("v", v)):
        if t.shape[0] != B or t.shape[2] != T:
            raise ValueError(f"{name} has [B, T] = {(t.shape[0], t.shape[2])} but {a} has {(B, T)}")
        if H % t.shape[1]:
            raise ValueError(
                f"{name} has {t.shape[1]} heads, which does not divide the {H} heads of {a}; grouped-query "
                "inputs need H to be a multiple of the key/value head count"
            )
    if not (isinstance(eps, float) and eps >= 0.0):
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    check_chunk_size(chunk_size)
    check_segment_chunks(segment_chunks)


def linear_attn(
    fq, fk, v, *, eps: float = LINEAR_EPS, chunk_size: int = 32, segment_chunks: int | None = None
) -> torch.Tensor:
    """Causal linear attention on precomputed features (Triton). Differentiable w.r.t. fq, fk, v.

    Args:
        fq, fk: [B, H, T, F] and [B, KH, T, F], non-negative feature-mapped queries and keys (any F).
        v: [B, VH, T, D]. KH and VH divide H (grouped-query attention without repeating k, v).
        All three share dtype (fp32 / fp16 / bf16) and a CUDA device.
        eps: added to the fp32 normaliser (SPEC.md), as in ``naive_linear_attn``.
        chunk_size: tokens per chunk (power of two >= 16).
        segment_chunks: chunks per sequence segment (see segments.py); None picks enough segments to
            fill the GPU. Results agree across choices up to fp32 rounding.
    Returns: y [B, H, T, D] in v's dtype.
    """
    check_once(lambda: _check_common(v, eps, chunk_size, segment_chunks, fq=fq, fk=fk), "linear_attn", fq, fk, v, eps,
               chunk_size, segment_chunks)  # fmt: skip
    return LinearAttnFunction.apply(
        fq.contiguous(), fk.contiguous(), v.contiguous(), None, None, eps, chunk_size, segment_chunks
    )


# Below this many tokens hedgehog_linear_attn(fuse_map=None) runs the fused kernels, from here on the staged
# op (hedgehog_linear.py: the map kernel writes phi once, the unfused kernels read it). Measured on an H200,
# bf16, batch 1, 32 heads, K = D = 128, f = 64, forward+backward fused / staged in one call: with the map's
# backward as its own kernels (results/NVIDIA_H200-2026-12-01-hedgehog-staged-session11.json) 1k 1.41 / 2.03
# ms, 4k 1.77 / 1.87 (both waiting on the host), 8k 2.54 / 2.23, 16k 4.99 / 4.35, hence 8192 at first; with dz
# taken in the linear kernels (hedgehog_linear.DZ_IN_KERNELS, two launches fewer;
# ...-staged-quick-session11.json) 1k 1.27 / 1.04, 4k 1.44 / 1.19, 8k 2.53 / 2.26, 16k 5.00 / 4.43, 64k
# 17.47 / 16.73: staged at every length. The fused kernels stay on request (fuse_map=True: 0.9 against
# 2.1 GiB at 64k).
FUSE_MAP_BELOW = 0


def hedgehog_linear_attn(
    q, k, v, wq, wk, *, eps: float = LINEAR_EPS, chunk_size: int = 32, segment_chunks: int | None = None,
    fuse_map: bool | None = None,
) -> torch.Tensor:  # fmt: skip
    """Causal linear attention on the Hedgehog features of q and k (Triton). Differentiable w.r.t. all inputs.

    Equals ``naive_linear_attn(phi_q(q), phi_k(k), v)`` with phi(x) = clamp(concat(softmax(x W_h),
    softmax(-x W_h)), min=1e-12) (SPEC.md). Two forms, the same math:
      - fused (``fuse_map=True``): every kernel computes phi from the q / k tiles in registers, so the features
        never reach global memory. Only for maps small enough to fuse (:func:`fused_hedgehog_fits`: f <= 64
        at head dim <= 128 in bf16; the fused backward would exceed an H100's shared memory beyond).
      - staged (``fuse_map=False``, ``hedgehog_linear.py``): the map kernel writes phi(q), phi(k) once in q's
        dtype and the unfused kernels read them; they are kept for the backward (2 x [B, H, T, 2f] more
        memory). Faster on an H200 at every length measured, 1k-64k (the fused kernels compute a map eight
        times per chunk, the staged op two), and it takes maps up to f = 128. Larger maps (f or K > 128)
        compute phi in PyTorch.
    ``fuse_map=None`` (default) picks fused below FUSE_MAP_BELOW tokens (0: never, as measured) when the map
    fits, staged otherwise.

    Args:
        q: [B, H, T, K], k: [B, KH, T, K] raw queries and keys (after RoPE); v: [B, VH, T, D]; KH and VH
            divide H (grouped-query attention: query head h uses key/value head h // (H / KH)).
        wq, wk: [H, K, f] per query head projections (``HedgehogFeatureMap`` weights, untied; the key map
            is applied per query head, as after HF's repeat_kv), any float dtype.
        segment_chunks: see :func:`linear_attn`.
        fuse_map: True (fused), False (staged) or None (by length, above).
    Returns: y [B, H, T, D] in v's dtype.
    """
    def check():
        _check_common(v, eps, chunk_size, segment_chunks, q=q, k=k)
        for name, w in (("wq", wq), ("wk", wk)):
            check_projection(name, w, "q", q)
        if wq.shape != wk.shape:
            raise ValueError(f"wq and wk must have the same shape, got {tuple(wq.shape)} and {tuple(wk.shape)}")
        if fuse_map not in (None, True, False):
            raise ValueError(f"fuse_map must be True, False or None (by length), got {fuse_map!r}")

    check_once(check, "hedgehog_linear_attn", q, k, v, wq, wk, eps, chunk_size, segment_chunks, fuse_map)
    H, T, K = q.shape[1], q.shape[2], q.shape[3]
    fits = fused_hedgehog_fits(K, wq.shape[-1], q.dtype)
    if fuse_map and not fits:
        raise ValueError(
            f"fuse_map=True: the fused kernels take f <= 64 at head dim <= 128 for fp16/bf16 (f <= 32 at head "
            f"dim <= 64 for fp32), got head dim {K}, f {wq.shape[-1]}, {q.dtype}; use fuse_map=False or None"
        )
    if fuse_map or (fuse_map is None and fits and T < FUSE_MAP_BELOW):
        return LinearAttnFunction.apply(
            q.contiguous(), k.contiguous(), v.contiguous(), wq.contiguous(), wk.contiguous(), eps, chunk_size,
            segment_chunks,
        )  # fmt: skip
    if hedgehog_map_fits(K, wq.shape[-1]):
        from .hedgehog_linear import staged_hedgehog_linear_attn

        return staged_hedgehog_linear_attn(q, k, v, wq, wk, eps=eps, chunk_size=chunk_size,
                                           segment_chunks=segment_chunks)  # fmt: skip
    # past the map kernel's [K, 2f] tile (K or f > 128): phi in PyTorch (fp32), then the unfused kernel
    from lolcats_lab.feature_maps import hedgehog_phi

    fq = hedgehog_phi(q.float(), wq).to(v.dtype)  # [B, H, T, 2f]
    fk = hedgehog_phi(k.float().repeat_interleave(H // k.shape[1], dim=1), wk).to(v.dtype)
    return LinearAttnFunction.apply(fq, fk, v.contiguous(), None, None, eps, chunk_size, segment_chunks)


def fused_hedgehog_fits(head_dim: int, feature_dim: int, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether :func:`hedgehog_linear_attn` runs fused: the [K, 2f] projection tile at most 128 x 128 for
    fp16/bf16 inputs (f <= 64 at K <= 128) and 64 x 64 for fp32 (f <= 32 at K <= 64); larger maps take the
    PyTorch map and the unfused kernel. Compiled for sm_90 (benchmarks/kernel_resources.py, D = 128, 32-token
    tiles): bf16 K = 128, f = 64 takes 128 KB of shared memory; fp32 K = 64, f = 32 176 KB, fp32 K = 128,
    f = 32 256 KB and f = 64 464 KB, above the H100's 227 KB (the fp32 GPU test failed to launch)."""
    limit = 64 * 64 if dtype == torch.float32 else 128 * 128
    return block(head_dim) <= 128 and block(head_dim) * 2 * block(feature_dim) <= limit

