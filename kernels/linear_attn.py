"""Causal linear attention in Triton: chunked forward and backward, optionally with the Hedgehog map fused in.

Math (SPEC.md "Pure linear attention"), per batch element and head, with fq = phi_q(q), fk = phi_k(k):

    y_i = sum_{j<=i} (fq_i . fk_j) v_j / (sum_{j<=i} fq_i . fk_j + eps),      eps = 1e-12 (fp32)

Reference: ``lolcats_lab.attention.linear.naive_linear_attn`` (causal, no key mask).

Shapes at the public boundary, layout [B, H, T, *] (keys may have KH and values VH heads, dividing H:
grouped-query heads are read in place, query head h using key/value head h // (H / KH), as HF's repeat_kv):
    unfused  (:func:`linear_attn`):           fq, fk [B, H, T, F] (non-negative), v [B, H, T, D]
    fused    (:func:`hedgehog_linear_attn`):  q, k [B, H, T, K], v [B, H, T, D], wq, wk [H, K, f]
             phi(x) = clamp(concat(softmax(x W_h), softmax(-x W_h)), min=1e-12) over the f features
             (SPEC.md "Hedgehog feature map"; F = 2f), computed in registers from the q/k tiles, so the
             features never reach global memory. Inside the kernels the two halves are interleaved
             (pos_0, neg_0, pos_1, ...) rather than concatenated: only dot products over F are taken,
             so the order is irrelevant as long as queries and keys share it. The projection is loaded
             widened, W2 = (w_0, -w_0, w_1, -w_1, ...), so x W2 gives (z, -z) interleaved in one tl.dot
             and each softmax is a reduction over one column parity (no reshapes, which Triton's GPU
             layouts reject for dot results).
    output y [B, H, T, D] in v's dtype.

Precision: accumulation and the state are fp32 everywhere. Dot operands are fp32 (exact "ieee" for fp32
inputs, TF32 for fp16/bf16 inputs), except with fp16/bf16 inputs in the fused kernels and when the
state tile is larger than 128 x 128 (F or D above 128): then every dot operand (features, state,
projection) is cast to the input's half type ("LOWP"), which halves the shared memory the operands
take (fp32 operands exceed the H100's 227 KB there) and uses the half-precision tensor cores.

Algorithm: one program per (batch, head) walks the sequence in chunks of BT tokens, keeping the state
S = sum_j fk_j v_j^T [F, D] and z = sum_j fk_j [F] of earlier chunks in registers (fla's "fused chunk"
form). Within a chunk the masked quadratic term A = tril(fq fk^T) is used. Every tile is loaded, cast to
fp32, and accumulated in fp32; F, D and T need not be powers of two (tiles are padded and masked).

Backward (dn_i = dy_i / den_i, dd_i = -dn_i . y_i, and dA_ij = dn_i . v_j + dd_i for j <= i):
    dfq_i = sum_{j<=i} dA_ij fk_j  = S_i dn_i + dd_i z_i + intra-chunk      (forward scan, kernel 1)
    dfk_j = sum_{i>=j} dA_ij fq_i  = P_j v_j + r_j + intra-chunk            (reverse scan, kernel 2)
    dv_j  = sum_{i>=j} (fq_i . fk_j) dn_i = P_j^T fk_j + intra-chunk
with the reverse states P_j = sum_{i>=j} fq_i dn_i^T [F, D] and r_j = sum_{i>=j} dd_i fq_i [F]. Kernel 1
recomputes the forward (so nothing but the inputs is saved) and writes den and dd ([B, H, T] fp32) for
kernel 2. With the fused map both kernels recompute phi and back-propagate through the softmaxes, writing
dq / dk and per-(batch, head) partial dW that are summed over the batch in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import (
    autotune_configs,
    block,
    check_chunk_size,
    check_same_dtype_device,
    check_tensor,
    dot_precision,
)

LINEAR_EPS = 1e-12
PHI_MIN = tl.constexpr(1e-12)  # the Hedgehog clamp (SPEC.md); constexpr so kernels may read it

_CONFIGS = autotune_configs(  # two candidates: every extra one costs a compile per shape and dtype
    triton.Config({}, num_warps=8, num_stages=1),
    triton.Config({}, num_warps=4, num_stages=1),
)


# ----------------------------------------------------------------------------------------------- helpers
@triton.jit
def _load_rows(p, o_t, m_t, X: tl.constexpr, BX: tl.constexpr):
    """Rows o_t of a contiguous [T, X] matrix as an fp32 [BT, BX] tile, zero outside (T, X)."""
    o_x = tl.arange(0, BX)
    b_x = tl.load(p + o_t[:, None] * X + o_x[None, :], mask=m_t[:, None] & (o_x < X)[None, :], other=0.0)
    return b_x.to(tl.float32)


@triton.jit
def _store_rows(p, b_x, o_t, m_t, X: tl.constexpr, BX: tl.constexpr):
    o_x = tl.arange(0, BX)
    tl.store(p + o_t[:, None] * X + o_x[None, :], b_x.to(p.dtype.element_ty), mask=m_t[:, None] & (o_x < X)[None, :])


@triton.jit
def _dot(a, b, DT: tl.constexpr, PREC: tl.constexpr):
    """a @ b with both operands cast to DT (fp32 accumulation)."""
    return tl.dot(a.to(DT), b.to(DT), input_precision=PREC)


@triton.jit
def _load_w2(p, K: tl.constexpr, FH: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, DT):
    """One head's projection W [K, f] widened to W2 = [w_0, -w_0, w_1, -w_1, ...] as a [BK, BF] tile of
    dtype DT, so that x W2 = (z_0, -z_0, z_1, -z_1, ...) with z = x W.

    DT is fp32 for fp32 inputs and the inputs' half type otherwise: the projection dots then run on the
    half-precision tensor cores and their operands take half the shared memory (W rounded to 8 or 11
    significant bits; z, the softmaxes and every sum stay fp32)."""
    o_k, o_c = tl.arange(0, BK), tl.arange(0, BF)
    sign = tl.where(o_c % 2 == 0, 1.0, -1.0)
    m_c = (o_c // 2) < FH
    b_w = tl.load(p + o_k[:, None] * FH + (o_c // 2)[None, :], mask=(o_k < K)[:, None] & m_c[None, :], other=0.0)
    return (b_w.to(tl.float32) * sign[None, :]).to(DT)  # [BK, BF]


@triton.jit
def _load_w2t(p, K: tl.constexpr, FH: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, DT):
    """W2 transposed, [BF, BK] (see _load_w2); loaded directly rather than through tl.trans."""
    o_k, o_c = tl.arange(0, BK), tl.arange(0, BF)
    sign = tl.where(o_c % 2 == 0, 1.0, -1.0)
    m_c = (o_c // 2) < FH
    b_w = tl.load(p + o_k[None, :] * FH + (o_c // 2)[:, None], mask=m_c[:, None] & (o_k < K)[None, :], other=0.0)
    return (b_w.to(tl.float32) * sign[:, None]).to(DT)  # [BF, BK]


@triton.jit
def _hedgehog_fwd(b_x, b_w2, m_t, FH: tl.constexpr, BF: tl.constexpr, PREC: tl.constexpr):
    """phi(x) for a tile: b_x [BT, BK], b_w2 [BK, BF] (see _load_w2) -> (phi [BT, BF], softmaxes [BT, BF]).

    Even columns hold softmax(z), odd columns softmax(-z), each normalised over its own parity. The
    softmaxes are also returned unclamped for the backward. Rows beyond T (m_t False) and padded
    features get phi = 0, so they add nothing to any sum.
    """
    b_z = tl.dot(b_x.to(b_w2.dtype), b_w2, input_precision=PREC)  # [BT, BF] = (z_0, -z_0, z_1, -z_1, ...)
    o_c = tl.arange(0, BF)
    m_even = (o_c % 2 == 0)[None, :]
    m_c = ((o_c // 2) < FH)[None, :]
    b_zm = tl.where(m_c, b_z, float("-inf"))
    mx_e = tl.max(tl.where(m_even, b_zm, float("-inf")), 1)
    mx_o = tl.max(tl.where(m_even, float("-inf"), b_zm), 1)
    b_e = tl.exp(b_zm - tl.where(m_even, mx_e[:, None], mx_o[:, None]))  # 0 on padded features
    s_e = tl.sum(tl.where(m_even, b_e, 0.0), 1)
    s_o = tl.sum(tl.where(m_even, 0.0, b_e), 1)
    b_p = b_e / tl.where(m_even, s_e[:, None], s_o[:, None])  # [BT, BF]
    b_phi = tl.where(m_c & m_t[:, None], tl.maximum(b_p, PHI_MIN), 0.0)
    return b_phi, b_p


@triton.jit
def _hedgehog_bwd(b_x, b_w2t, b_dphi, b_p, BF: tl.constexpr, PREC: tl.constexpr):
    """Back through phi: d phi [BT, BF] -> (dx [BT, BK], dW2 [BK, BF]) for this tile; b_w2t is W2^T [BF, BK].

    The clamp passes gradient where softmax >= 1e-12; softmax backward per parity is p (g - sum(g p)).
    W = W2[:, 0::2] = -W2[:, 1::2], so dW = dW2[:, 0::2] - dW2[:, 1::2] (reduced by the launcher).
    """
    m_even = (tl.arange(0, BF) % 2 == 0)[None, :]
    b_g = tl.where(b_p >= PHI_MIN, b_dphi, 0.0)
    b_h = b_g * b_p
    s_e = tl.sum(tl.where(m_even, b_h, 0.0), 1)
    s_o = tl.sum(tl.where(m_even, 0.0, b_h), 1)
    b_dz = b_p * (b_g - tl.where(m_even, s_e[:, None], s_o[:, None]))  # d/d(x W2)   [BT, BF]
    b_dzl = b_dz.to(b_w2t.dtype)  # the projection's dtype: fp32, or the input's half type (see _load_w2)
    b_dx = tl.dot(b_dzl, b_w2t, input_precision=PREC)  # [BT, BK]
    b_dw = tl.dot(tl.trans(b_x.to(b_w2t.dtype)), b_dzl, input_precision=PREC)  # [BK, BF]
    return b_dx, b_dw


# ----------------------------------------------------------------------------------------------- kernels
@triton.autotune(configs=_CONFIGS, key=["K", "V", "FH", "BT", "HEDGEHOG", "LOWP", "GK", "GV"])
@triton.jit(do_not_specialize=["T"])
def linear_attn_fwd_kernel(
    q, k, v, wq, wk, o, T, eps,
    H: tl.constexpr, GK: tl.constexpr, GV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, FH: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HEDGEHOG: tl.constexpr, PREC: tl.constexpr, LOWP: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(D, BV), B*H). q, k: [B, H, T, K] (features when not HEDGEHOG, then K = F); v, o: [B, H, T, D]."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh64 = i_bh.to(tl.int64)
    i_bk = ((i_bh // H) * (H // GK) + (i_bh % H) // GK).to(tl.int64)  # key head (grouped-query: GK per key head)
    i_bv = ((i_bh // H) * (H // GV) + (i_bh % H) // GV).to(tl.int64)  # value head
    DT = q.dtype.element_ty if LOWP else tl.float32  # dot operand dtype (_dot; see the module docstring)
    q += i_bh64 * T * K
    k += i_bk * T * K
    v += i_bv * T * V + i_v * BV
    o += i_bh64 * T * V + i_v * BV
    NV = V - i_v * BV  # columns left in this block (masks the last one)
    if HEDGEHOG:
        i_h = (i_bh % H).to(tl.int64)
        b_wq = _load_w2(wq + i_h * K * FH, K, FH, BK, BF, DT)  # [BK, BF]
        b_wk = _load_w2(wk + i_h * K * FH, K, FH, BK, BF, DT)
    b_S = tl.zeros([BF, BV], dtype=tl.float32)  # sum_j fk_j v_j^T over earlier chunks
    b_z = tl.zeros([BF], dtype=tl.float32)  # sum_j fk_j
    o_c = tl.arange(0, BT)
    for i_t in range(tl.cdiv(T, BT)):
        o_t = i_t * BT + o_c
        m_t = o_t < T
        b_q = _load_rows(q, o_t, m_t, K, BK)  # [BT, BK]
        b_k = _load_rows(k, o_t, m_t, K, BK)
        if HEDGEHOG:
            b_fq, _ = _hedgehog_fwd(b_q, b_wq, m_t, FH, BF, PREC)  # [BT, BF]
            b_fk, _ = _hedgehog_fwd(b_k, b_wk, m_t, FH, BF, PREC)
        else:
            b_fq, b_fk = b_q, b_k
        m_tv = m_t[:, None] & (tl.arange(0, BV) < NV)[None, :]  # [BT, BV]
        p_v = o_t[:, None] * V + tl.arange(0, BV)[None, :]
        b_v = tl.load(v + p_v, mask=m_tv, other=0.0).to(tl.float32)  # [BT, BV]
        b_A = _dot(b_fq, tl.trans(b_fk), DT, PREC)  # [BT, BT]
        b_A = tl.where(o_c[:, None] >= o_c[None, :], b_A, 0.0)
        b_num = _dot(b_A, b_v, DT, PREC) + _dot(b_fq, b_S, DT, PREC)  # [BT, BV]
        b_den = tl.sum(b_A, 1) + tl.sum(b_fq * b_z[None, :], 1) + eps  # [BT]
        tl.store(o + p_v, (b_num / b_den[:, None]).to(o.dtype.element_ty), mask=m_tv)
        b_S += _dot(tl.trans(b_fk), b_v, DT, PREC)
        b_z += tl.sum(b_fk, 0)


@triton.autotune(configs=_CONFIGS, key=["K", "V", "FH", "BT", "HEDGEHOG", "LOWP", "GK", "GV"])
@triton.jit(do_not_specialize=["T"])
def linear_attn_bwd_dq_kernel(
    q, k, v, do, wq, wk, dq, dwq, den, dd, T, eps,
    H: tl.constexpr, GK: tl.constexpr, GV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, FH: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HEDGEHOG: tl.constexpr, PREC: tl.constexpr, LOWP: tl.constexpr,
):  # fmt: skip
    """Forward scan, grid (B*H,): recompute y, write den, dd [B, H, T] and dq (dfq, or dq and partial dWq)."""
    i_bh = tl.program_id(0)
    i_bh64 = i_bh.to(tl.int64)
    i_bk = ((i_bh // H) * (H // GK) + (i_bh % H) // GK).to(tl.int64)  # key head (grouped-query: GK per key head)
    i_bv = ((i_bh // H) * (H // GV) + (i_bh % H) // GV).to(tl.int64)  # value head
    DT = q.dtype.element_ty if LOWP else tl.float32  # dot operand dtype (_dot; see the module docstring)
    q += i_bh64 * T * K
    k += i_bk * T * K
    dq += i_bh64 * T * K
    v += i_bv * T * V
    do += i_bh64 * T * V
    den += i_bh64 * T
    dd += i_bh64 * T
    if HEDGEHOG:
        i_h = (i_bh % H).to(tl.int64)
        b_wq = _load_w2(wq + i_h * K * FH, K, FH, BK, BF, DT)  # [BK, BF]
        b_wqt = _load_w2t(wq + i_h * K * FH, K, FH, BK, BF, DT)  # [BF, BK]
        b_wk = _load_w2(wk + i_h * K * FH, K, FH, BK, BF, DT)
        b_dwq = tl.zeros([BK, BF], dtype=tl.float32)
    b_S = tl.zeros([BF, BV], dtype=tl.float32)
    b_z = tl.zeros([BF], dtype=tl.float32)
    o_c = tl.arange(0, BT)
    m_causal = o_c[:, None] >= o_c[None, :]
    for i_t in range(tl.cdiv(T, BT)):
        o_t = i_t * BT + o_c
        m_t = o_t < T
        b_q = _load_rows(q, o_t, m_t, K, BK)
        b_k = _load_rows(k, o_t, m_t, K, BK)
        if HEDGEHOG:
            b_fq, b_pq = _hedgehog_fwd(b_q, b_wq, m_t, FH, BF, PREC)
            b_fk, _ = _hedgehog_fwd(b_k, b_wk, m_t, FH, BF, PREC)
        else:
            b_fq, b_fk = b_q, b_k
        b_v = _load_rows(v, o_t, m_t, V, BV)  # [BT, BV]
        b_do = _load_rows(do, o_t, m_t, V, BV)
        b_A = tl.where(m_causal, _dot(b_fq, tl.trans(b_fk), DT, PREC), 0.0)  # [BT, BT]
        b_num = _dot(b_A, b_v, DT, PREC) + _dot(b_fq, b_S, DT, PREC)  # [BT, BV]
        b_den = tl.sum(b_A, 1) + tl.sum(b_fq * b_z[None, :], 1) + eps  # [BT]
        b_dn = b_do / b_den[:, None]  # dL/dnum   [BT, BV]
        b_dd = -tl.sum(b_dn * b_num, 1) / b_den  # dL/dden   [BT]
        tl.store(den + o_t, b_den, mask=m_t)
        tl.store(dd + o_t, b_dd, mask=m_t)
        b_dA = tl.where(m_causal, _dot(b_dn, tl.trans(b_v), DT, PREC) + b_dd[:, None], 0.0)
        b_dfq = (
            _dot(b_dA, b_fk, DT, PREC)
            + _dot(b_dn, tl.trans(b_S), DT, PREC)
            + b_dd[:, None] * b_z[None, :]
        )  # [BT, BF]
        if HEDGEHOG:
            b_dq, b_dw = _hedgehog_bwd(b_q, b_wqt, tl.where(m_t[:, None], b_dfq, 0.0), b_pq, BF, PREC)
            b_dwq += b_dw
            _store_rows(dq, b_dq, o_t, m_t, K, BK)
        else:
            _store_rows(dq, b_dfq, o_t, m_t, K, BK)
        b_S += _dot(tl.trans(b_fk), b_v, DT, PREC)
        b_z += tl.sum(b_fk, 0)
    if HEDGEHOG:
        o_k, o_c = tl.arange(0, BK), tl.arange(0, BF)  # partial dW2 [K, 2f] of this (batch, head)
        tl.store(
            dwq + i_bh64 * K * 2 * FH + o_k[:, None] * 2 * FH + o_c[None, :], b_dwq,
            mask=(o_k < K)[:, None] & (o_c < 2 * FH)[None, :],
        )


@triton.autotune(configs=_CONFIGS, key=["K", "V", "FH", "BT", "HEDGEHOG", "LOWP", "GK", "GV"])
@triton.jit(do_not_specialize=["T"])
def linear_attn_bwd_dkv_kernel(
    q, k, v, do, wq, wk, den, dd, dk, dv, dwk, T,
    H: tl.constexpr, GK: tl.constexpr, GV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, FH: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HEDGEHOG: tl.constexpr, PREC: tl.constexpr, LOWP: tl.constexpr,
):  # fmt: skip
    """Reverse scan, grid (B*H,): dk (dfk, or dk and partial dWk) and dv from den, dd of kernel 1."""
    i_bh = tl.program_id(0)
    i_bh64 = i_bh.to(tl.int64)
    i_bk = ((i_bh // H) * (H // GK) + (i_bh % H) // GK).to(tl.int64)  # key head (grouped-query: GK per key head)
    i_bv = ((i_bh // H) * (H // GV) + (i_bh % H) // GV).to(tl.int64)  # value head
    DT = q.dtype.element_ty if LOWP else tl.float32  # dot operand dtype (_dot; see the module docstring)
    q += i_bh64 * T * K
    k += i_bk * T * K
    dk += i_bh64 * T * K
    v += i_bv * T * V
    do += i_bh64 * T * V
    dv += i_bh64 * T * V
    den += i_bh64 * T
    dd += i_bh64 * T
    if HEDGEHOG:
        i_h = (i_bh % H).to(tl.int64)
        b_wq = _load_w2(wq + i_h * K * FH, K, FH, BK, BF, DT)
        b_wk = _load_w2(wk + i_h * K * FH, K, FH, BK, BF, DT)
        b_wkt = _load_w2t(wk + i_h * K * FH, K, FH, BK, BF, DT)  # [BF, BK]
        b_dwk = tl.zeros([BK, BF], dtype=tl.float32)
    b_P = tl.zeros([BF, BV], dtype=tl.float32)  # sum_{i in later chunks} fq_i dn_i^T
    b_r = tl.zeros([BF], dtype=tl.float32)  # sum_{i in later chunks} dd_i fq_i
    o_c = tl.arange(0, BT)
    m_causal = o_c[:, None] >= o_c[None, :]  # [i, j]: j <= i
    NT = tl.cdiv(T, BT)
    for i_r in range(NT):
        i_t = NT - 1 - i_r
        o_t = i_t * BT + o_c
        m_t = o_t < T
        b_q = _load_rows(q, o_t, m_t, K, BK)
        b_k = _load_rows(k, o_t, m_t, K, BK)
        if HEDGEHOG:
            b_fq, _ = _hedgehog_fwd(b_q, b_wq, m_t, FH, BF, PREC)
            b_fk, b_pk = _hedgehog_fwd(b_k, b_wk, m_t, FH, BF, PREC)
        else:
            b_fq, b_fk = b_q, b_k
        b_v = _load_rows(v, o_t, m_t, V, BV)  # [BT, BV]
        b_do = _load_rows(do, o_t, m_t, V, BV)
        b_den = tl.load(den + o_t, mask=m_t, other=1.0)  # [BT]
        b_dd = tl.load(dd + o_t, mask=m_t, other=0.0)
        b_dn = b_do / b_den[:, None]  # [BT, BV]
        b_A = tl.where(m_causal, _dot(b_fq, tl.trans(b_fk), DT, PREC), 0.0)  # [BT_i, BT_j]
        b_dA = tl.where(m_causal, _dot(b_dn, tl.trans(b_v), DT, PREC) + b_dd[:, None], 0.0)
        b_dfk = (
            _dot(tl.trans(b_dA), b_fq, DT, PREC)
            + _dot(b_v, tl.trans(b_P), DT, PREC)
            + b_r[None, :]
        )  # [BT, BF]
        b_dv = _dot(tl.trans(b_A), b_dn, DT, PREC) + _dot(b_fk, b_P, DT, PREC)
        _store_rows(dv, b_dv, o_t, m_t, V, BV)
        if HEDGEHOG:
            b_dk, b_dw = _hedgehog_bwd(b_k, b_wkt, tl.where(m_t[:, None], b_dfk, 0.0), b_pk, BF, PREC)
            b_dwk += b_dw
            _store_rows(dk, b_dk, o_t, m_t, K, BK)
        else:
            _store_rows(dk, b_dfk, o_t, m_t, K, BK)
        b_P += _dot(tl.trans(b_fq), b_dn, DT, PREC)
        b_r += tl.sum(b_dd[:, None] * b_fq, 0)
    if HEDGEHOG:
        o_k, o_c = tl.arange(0, BK), tl.arange(0, BF)  # partial dW2 [K, 2f] of this (batch, head)
        tl.store(
            dwk + i_bh64 * K * 2 * FH + o_k[:, None] * 2 * FH + o_c[None, :], b_dwk,
            mask=(o_k < K)[:, None] & (o_c < 2 * FH)[None, :],
        )


# ----------------------------------------------------------------------------------------------- launchers
def _sizes(q, v, wq, chunk_size):
    """Compile-time sizes: K (q/k last dim), V, FH (f, 0 unfused), BT, BK, BF (feature tile), BV (full V)."""
    K, V = q.shape[-1], v.shape[-1]
    FH = wq.shape[-1] if wq is not None else 0
    BK, BV = block(K), block(V)
    BF = 2 * block(FH) if wq is not None else BK
    return dict(K=K, V=V, FH=FH, BT=chunk_size, BK=BK, BF=BF, BV=BV)


def _lowp(q, wq, sz) -> bool:
    """Half-precision dot operands: fp16/bf16 inputs and (fused map, or a state tile above 128 x 128)."""
    return q.dtype != torch.float32 and (wq is not None or sz["BF"] * sz["BV"] > 128 * 128)


def linear_attn_fwd(q, k, v, wq=None, wk=None, *, eps=LINEAR_EPS, chunk_size=64, block_v=64):
    """Launch the forward. q [B, H, T, K], k [B, KH, T, K] (features, or raw with wq/wk [H, K, f]);
    v [B, VH, T, D] -> y [B, H, T, D]."""
    B, H, T, _ = q.shape
    sz = _sizes(q, v, wq, chunk_size)
    lowp = _lowp(q, wq, sz)  # decided on the full D, as in the backward
    BV = min(sz.pop("BV"), block(block_v))
    o = v.new_empty(B, H, T, v.shape[-1])  # [B, H, T, D]: one output per query head
    grid = (triton.cdiv(sz["V"], BV), B * H)
    linear_attn_fwd_kernel[grid](
        q, k, v, q if wq is None else wq, k if wk is None else wk, o, T, eps,
        H=H, GK=H // k.shape[1], GV=H // v.shape[1], BV=BV, HEDGEHOG=wq is not None,
        PREC=dot_precision(q.dtype), LOWP=lowp, **sz,
    )  # fmt: skip
    return o


def linear_attn_bwd(q, k, v, do, wq=None, wk=None, *, eps=LINEAR_EPS, chunk_size=64):
    """Launch both backward kernels. Returns (dq, dk, dv, dwq, dwk); dwq, dwk are None when unfused."""
    B, H, T, K = q.shape
    sz = _sizes(q, v, wq, chunk_size)
    hedgehog = wq is not None
    den = q.new_empty(B, H, T, dtype=torch.float32)
    dd = q.new_empty(B, H, T, dtype=torch.float32)
    GK, GV = H // k.shape[1], H // v.shape[1]
    # dk, dv per query head; summed over each group of GK (GV) query heads below (fp32 when summed)
    dq = torch.empty_like(q)
    dk = q.new_empty(B, H, T, K, dtype=torch.float32 if GK > 1 else k.dtype)
    dv = q.new_empty(B, H, T, v.shape[-1], dtype=torch.float32 if GV > 1 else v.dtype)
    dwq = q.new_empty(B, H, K, 2 * sz["FH"], dtype=torch.float32) if hedgehog else None  # per (b, h) dW2
    dwk = torch.empty_like(dwq) if hedgehog else None
    common = dict(H=H, GK=GK, GV=GV, HEDGEHOG=hedgehog, PREC=dot_precision(q.dtype), LOWP=_lowp(q, wq, sz), **sz)
    wq_, wk_ = (wq, wk) if hedgehog else (q, k)  # placeholders, never read when unfused
    linear_attn_bwd_dq_kernel[(B * H,)](
        q, k, v, do, wq_, wk_, dq, dwq if hedgehog else den, den, dd, T, eps, **common
    )
    linear_attn_bwd_dkv_kernel[(B * H,)](
        q, k, v, do, wq_, wk_, den, dd, dk, dv, dwk if hedgehog else den, T, **common
    )
    if GK > 1:
        dk = dk.view(B, H // GK, GK, T, K).sum(2).to(k.dtype)  # [B, KH, T, K]
    if GV > 1:
        dv = dv.view(B, H // GV, GV, T, v.shape[-1]).sum(2).to(v.dtype)  # [B, VH, T, D]
    if hedgehog:
        # W2 = (w_0, -w_0, w_1, -w_1, ...): dW = dW2[..., 0::2] - dW2[..., 1::2], summed over the batch
        dwq = (dwq[..., 0::2] - dwq[..., 1::2]).sum(0).to(wq.dtype)  # [H, K, f]
        dwk = (dwk[..., 0::2] - dwk[..., 1::2]).sum(0).to(wk.dtype)
    return dq, dk, dv, dwq, dwk


class LinearAttnFunction(torch.autograd.Function):
    """Autograd wrapper; saves only the inputs (the backward recomputes features and normalisers)."""

    @staticmethod
    def forward(ctx, q, k, v, wq, wk, eps, chunk_size):
        o = linear_attn_fwd(q, k, v, wq, wk, eps=eps, chunk_size=chunk_size)
        ctx.save_for_backward(q, k, v, wq, wk)
        ctx.eps, ctx.chunk_size = eps, chunk_size
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, wq, wk = ctx.saved_tensors
        dq, dk, dv, dwq, dwk = linear_attn_bwd(
            q, k, v, do.contiguous(), wq, wk, eps=ctx.eps, chunk_size=ctx.chunk_size
        )
        return dq, dk, dv, dwq, dwk, None, None


# ----------------------------------------------------------------------------------------------- public ops
def _check_common(v, eps, chunk_size, **qk):
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


def linear_attn(fq, fk, v, *, eps: float = LINEAR_EPS, chunk_size: int = 64) -> torch.Tensor:
    """Causal linear attention on precomputed features (Triton). Differentiable w.r.t. fq, fk, v.

    Args:
        fq, fk: [B, H, T, F] and [B, KH, T, F], non-negative feature-mapped queries and keys (any F).
        v: [B, VH, T, D]. KH and VH divide H (grouped-query attention without repeating k, v).
        All three share dtype (fp32 / fp16 / bf16) and a CUDA device.
        eps: added to the fp32 normaliser (SPEC.md), as in ``naive_linear_attn``.
        chunk_size: tokens per chunk (power of two >= 16).
    Returns: y [B, H, T, D] in v's dtype.
    """
    _check_common(v, eps, chunk_size, fq=fq, fk=fk)
    return LinearAttnFunction.apply(fq.contiguous(), fk.contiguous(), v.contiguous(), None, None, eps, chunk_size)


def hedgehog_linear_attn(q, k, v, wq, wk, *, eps: float = LINEAR_EPS, chunk_size: int = 64) -> torch.Tensor:
    """Causal linear attention with the Hedgehog feature map fused in (Triton). Differentiable w.r.t. all inputs.

    Equals ``naive_linear_attn(phi_q(q), phi_k(k), v)`` with phi(x) = clamp(concat(softmax(x W_h),
    softmax(-x W_h)), min=1e-12) (SPEC.md), without writing phi(q), phi(k) to memory.

    Args:
        q: [B, H, T, K], k: [B, KH, T, K] raw queries and keys (after RoPE); v: [B, VH, T, D]; KH and VH
            divide H (grouped-query attention: query head h uses key/value head h // (H / KH)).
        wq, wk: [H, K, f] per query head projections (``HedgehogFeatureMap`` weights, untied; the key map
            is applied per query head, as after HF's repeat_kv), any float dtype.
    Returns: y [B, H, T, D] in v's dtype.
    """
    _check_common(v, eps, chunk_size, q=q, k=k)
    H, K = q.shape[1], q.shape[3]
    for name, w in (("wq", wq), ("wk", wk)):
        check_tensor(name, w, 3, "[H, K, f]")
        if w.shape[:2] != (H, K):
            raise ValueError(f"{name} must have shape [H, K, f] with H={H}, K={K} (from q), got {tuple(w.shape)}")
        if w.device != q.device:
            raise ValueError(f"{name} is on {w.device} but q is on {q.device}; move them to one device")
    if wq.shape != wk.shape:
        raise ValueError(f"wq and wk must have the same shape, got {tuple(wq.shape)} and {tuple(wk.shape)}")
    return LinearAttnFunction.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), wq.contiguous(), wk.contiguous(), eps, chunk_size
    )
