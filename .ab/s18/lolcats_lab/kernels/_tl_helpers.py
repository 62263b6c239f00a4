"""Triton device helpers shared by the kernels: tile loads and stores, dots, the fused Hedgehog map, head
offsets. Only ``@triton.jit`` functions live here (no launches); see _utils.py for host-side helpers.

Hedgehog layout inside the kernels: phi(x) = clamp(concat(softmax(x W), softmax(-x W)), min=1e-12) over
the f features (SPEC.md "Hedgehog feature map"; F = 2f) is computed with its two halves interleaved
(pos_0, neg_0, pos_1, ...) rather than concatenated: only dot products over F are taken, so the order is
irrelevant as long as queries and keys share it. The projection is loaded widened,
W2 = (w_0, -w_0, w_1, -w_1, ...), so x W2 gives (z, -z) interleaved in one tl.dot and each softmax is a
reduction over one column parity (no reshapes, which Triton's GPU layouts reject for dot results).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from . import _utils

PHI_MIN = tl.constexpr(1e-12)  # the Hedgehog clamp (SPEC.md); constexpr so kernels may read it
# phi_halves_dz folds the two halves of phi by reshape and split instead of a dot with an (I; -I) matrix when
# each half is a power of two >= 16 wide: exact (the dot rounds dz to TF32), no [BF, BFZ] matrix in shared
# memory, and at phi of 256 features it fits an H100 (compiled for sm_90 with Triton 3.9, the staged dq / dk-dv
# kernels at 8 warps: 128 / 128 KB of shared memory against 200 / 216 KB with the dot; at 128 features 64 / 64
# against 72 / 80 KB, spills 614 / 632 against 618 / 588 B), so hedgehog_linear takes dz in the kernels for
# f = 128 too. Timed on an H100 in session 18 (benchmarks/README.md, "Kernel record"): the default op at 4k,
# f = 64, replayed from a CUDA graph, 1.116 -> 1.102 ms alone and 1.087 -> 1.048 beside DN_ROUNDED; f = 128
# 1.4% / 2.3% faster at 4k / 16k, with 27% less peak memory at 16k (no dphi tensor). LOLCATS_PHI_FOLD_SPLIT=0
# in the environment when this module is imported restores the dot.
PHI_FOLD_SPLIT = tl.constexpr(os.environ.get("LOLCATS_PHI_FOLD_SPLIT", "1") == "1")
# The linear backward's dn = dy / den rounded to the dot operand type once, where it is computed, so that every
# term sees the same dn: dd = -dn . y (fp32 sums of the rounded values) and dA = dn . v + dd then take dn . v on
# half-precision operands. Rounded this way the backward is exactly that of dy' = round(dn) den (~2^-9 relative
# from dy in bf16), whose terms cancel as the exact ones do; unrounded, dd kept fp32 dn while the state terms
# (P = sum fq dn^T, dn S^T) rounded it, and dn . v took fp32 (TF32) operands so as not to add to that mismatch.
# Timed on an H100 in session 18 (benchmarks/README.md, "Kernel record"), bf16 at 4k, replayed from a CUDA
# graph: the linear op 0.867 -> 0.808 ms, the Hedgehog op 1.116 -> 1.087 (dk/dv kernel 0.42 -> 0.37 ms, dq 0.22
# -> 0.19 with PHI_FOLD_SPLIT), gradients as close to the fp32 reference as before (relative RMS 2.6e-3 to
# 5.8e-3 either way). No effect on fp32 inputs; LOLCATS_DN_ROUNDED=0 in the environment when this module is
# imported restores the TF32 dot. The hybrid kernels take the same form only with DN_ROUNDED_HYBRID
# (LOLCATS_DN_ROUNDED_HYBRID=1): CPU-tested, not yet timed or tested on a GPU (gpu_session.sh dn-hybrid).
DN_ROUNDED = tl.constexpr(os.environ.get("LOLCATS_DN_ROUNDED", "1") == "1")
DN_ROUNDED_HYBRID = tl.constexpr(os.environ.get("LOLCATS_DN_ROUNDED_HYBRID", "0") == "1")


@triton.jit
def head_offsets(i_bh, H: tl.constexpr, GK: tl.constexpr, GV: tl.constexpr):
    """(query head, key head, value head) row indices in int64 for program i_bh = b * H + h.

    Grouped-query inputs are read in place: query head h uses key head h // GK and value head h // GV
    (GK = H / KH, GV = H / VH), as after HF's repeat_kv."""
    i_bk = (i_bh // H) * (H // GK) + (i_bh % H) // GK
    i_bv = (i_bh // H) * (H // GV) + (i_bh % H) // GV
    return i_bh.to(tl.int64), i_bk.to(tl.int64), i_bv.to(tl.int64)


@triton.jit
def load_rows(p, o_t, m_t, X: tl.constexpr, BX: tl.constexpr):
    """Rows o_t of a contiguous [T, X] matrix as an fp32 [len(o_t), BX] tile, zero outside (m_t, X)."""
    o_x = tl.arange(0, BX)
    b_x = tl.load(p + o_t[:, None] * X + o_x[None, :], mask=m_t[:, None] & (o_x < X)[None, :], other=0.0)
    return b_x.to(tl.float32)


@triton.jit
def store_rows(p, b_x, o_t, m_t, X: tl.constexpr, BX: tl.constexpr):
    """Write the [len(o_t), BX] tile b_x to rows o_t of a contiguous [T, X] matrix (cast to its dtype)."""
    o_x = tl.arange(0, BX)
    tl.store(p + o_t[:, None] * X + o_x[None, :], b_x.to(p.dtype.element_ty), mask=m_t[:, None] & (o_x < X)[None, :])


@triton.jit
def strided_head_offset(i_bh, H: tl.constexpr, G: tl.constexpr, SB, SH):
    """Element offset (int64) of program i_bh = b * H + h's head in a tensor with batch and head strides
    SB, SH and H / G heads (head h // G: grouped-query heads read in place)."""
    return (i_bh // H).to(tl.int64) * SB + ((i_bh % H) // G).to(tl.int64) * SH


@triton.jit
def load_rows_strided(p, o_t, m_t, S, X: tl.constexpr, BX: tl.constexpr):
    """load_rows for a matrix whose rows are S elements apart (its last dim contiguous): e.g. one head of a
    [B, T, H, X] tensor, S = H X."""
    o_x = tl.arange(0, BX)
    b_x = tl.load(p + o_t[:, None].to(tl.int64) * S + o_x[None, :], mask=m_t[:, None] & (o_x < X)[None, :], other=0.0)
    return b_x.to(tl.float32)


@triton.jit
def store_rows_strided(p, b_x, o_t, m_t, S, X: tl.constexpr, BX: tl.constexpr):
    """store_rows for a matrix whose rows are S elements apart (see load_rows_strided)."""
    o_x = tl.arange(0, BX)
    p_x = p + o_t[:, None].to(tl.int64) * S + o_x[None, :]
    tl.store(p_x, b_x.to(p.dtype.element_ty), mask=m_t[:, None] & (o_x < X)[None, :])


@triton.jit
def dot(a, b, DT: tl.constexpr, PREC: tl.constexpr):
    """a @ b with both operands cast to DT (fp32 accumulation)."""
    return tl.dot(a.to(DT), b.to(DT), input_precision=PREC)


@triton.jit
def scaled_dy(b_dy, b_den, DT: tl.constexpr, HYBRID: tl.constexpr = False):
    """dn = dy / den [BT, BV] in fp32 from dy [BT, BV] and the normaliser den [BT]: the gradient of the
    numerator; rounded to DT (then exactly a dot operand) when DN_ROUNDED (DN_ROUNDED_HYBRID in the hybrid
    kernels, HYBRID)."""
    b_dn = b_dy / b_den[:, None]
    if (DN_ROUNDED and not HYBRID) or (DN_ROUNDED_HYBRID and HYBRID):
        b_dn = b_dn.to(DT).to(tl.float32)
    return b_dn


@triton.jit
def dn_dot_v(b_dn, b_v, DT: tl.constexpr, PREC: tl.constexpr, HYBRID: tl.constexpr = False):
    """dn v^T [BT, BT] (dn [BT, BV] from scaled_dy, v [BT, BV]): on DT operands when dn is rounded to DT,
    else on fp32 (TF32) ones, the cancelling term of dA = dn . v + dd (see DN_ROUNDED)."""
    if (DN_ROUNDED and not HYBRID) or (DN_ROUNDED_HYBRID and HYBRID):
        return dot(b_dn, tl.trans(b_v), DT, PREC)
    return dot(b_dn, tl.trans(b_v), tl.float32, PREC)


# How a kernel finds the state its segment starts from (segments.py): FOLD_NONE, the buffer was scanned and
# holds it; otherwise the buffer holds each segment's own sums and the kernel adds up those of the segments
# before its own (FOLD_PREFIX: forward), after it (FOLD_SUFFIX: reverse, exclusive) or from it on
# (FOLD_SUFFIX_INCLUSIVE), in place of the scan kernel (segments.fold_segments).
FOLD_NONE = tl.constexpr(_utils.FOLD_NONE)
FOLD_PREFIX = tl.constexpr(_utils.FOLD_PREFIX)
FOLD_SUFFIX = tl.constexpr(_utils.FOLD_SUFFIX)
FOLD_SUFFIX_INCLUSIVE = tl.constexpr(_utils.FOLD_SUFFIX_INCLUSIVE)


@triton.jit
def _segment_block(s0, z0, i_seg, BF: tl.constexpr, BVS: tl.constexpr, v0, BV: tl.constexpr):
    """Columns [v0, v0 + BV) of S[i_seg] [BF, BVS] and z[i_seg] [BF] (segment blocks BF * BVS + BF apart)."""
    o_f, o_v = tl.arange(0, BF), tl.arange(0, BV)
    base = i_seg * (BF * BVS + BF)
    b_S = tl.load(s0 + base + o_f[:, None] * BVS + v0 + o_v[None, :])  # [BF, BV]
    b_z = tl.load(z0 + base + o_f)  # [BF]
    return b_S, b_z


@triton.jit
def load_segment_state(s0, z0, row, i_s, NSEG, BF: tl.constexpr, BVS: tl.constexpr, v0, BV: tl.constexpr,
                       FOLD: tl.constexpr):  # fmt: skip
    """The state segment i_s of state row ``row`` (= b * H + h, int64) starts from (segments.py): columns
    [v0, v0 + BV) of the padded fp32 matrix S [BF, BVS] and the vector z [BF]. s0, z0: the S and z views of
    one state buffer [rows, NSEG, BF * BVS + BF] (segments.split_states). FOLD_NONE: the buffer was scanned
    and holds each segment's start state; otherwise it holds each segment's own sums and those of the
    segments before i_s (FOLD_PREFIX), after it (FOLD_SUFFIX) or from it on (FOLD_SUFFIX_INCLUSIVE) are
    added here, in segment order."""
    first = row * NSEG
    if FOLD == FOLD_NONE:
        b_S, b_z = _segment_block(s0, z0, first + i_s, BF, BVS, v0, BV)
    else:
        if FOLD == FOLD_PREFIX:
            lo = 0
            hi = i_s
        elif FOLD == FOLD_SUFFIX:
            lo = i_s + 1
            hi = NSEG
        else:
            lo = i_s
            hi = NSEG
        b_S = tl.zeros([BF, BV], dtype=tl.float32)
        b_z = tl.zeros([BF], dtype=tl.float32)
        for j in range(lo, hi):
            t_S, t_z = _segment_block(s0, z0, first + j, BF, BVS, v0, BV)
            b_S += t_S
            b_z += t_z
    return b_S, b_z


@triton.jit
def window_gamma(logit, h):
    """gamma_h = sigmoid(window_logit[h]) in fp32, from the hybrid's logits [H] in any float dtype (SPEC.md):
    taken in the kernels, so no launch computes gamma first."""
    return tl.sigmoid(tl.load(logit + h).to(tl.float32))


@triton.jit
def segment_chunks(i_s, CPS, T, BT: tl.constexpr):
    """[first, end) chunk indices of segment i_s: CPS chunks of BT tokens, the last segment cut at T."""
    return i_s * CPS, tl.minimum((i_s + 1) * CPS, tl.cdiv(T, BT))


@triton.jit
def load_w2(p, K: tl.constexpr, FH: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, DT):
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
def parity_max(b_x, m_even):
    """Row maxima of b_x [BT, BF] over its even and its odd columns."""
    return tl.max(tl.where(m_even, b_x, float("-inf")), 1), tl.max(tl.where(m_even, float("-inf"), b_x), 1)


@triton.jit
def parity_sum(b_x, m_even):
    """Row sums of b_x [BT, BF] over its even and its odd columns."""
    return tl.sum(tl.where(m_even, b_x, 0.0), 1), tl.sum(tl.where(m_even, 0.0, b_x), 1)


@triton.jit
def hedgehog_fwd(b_x, b_w2, m_t, FH: tl.constexpr, BF: tl.constexpr, PREC: tl.constexpr):
    """phi(x) for a tile: b_x [BT, BK], b_w2 [BK, BF] (see load_w2) -> (phi [BT, BF], softmaxes [BT, BF]).

    Even columns hold softmax(z), odd columns softmax(-z), each normalised over its own parity. The
    softmaxes are also returned unclamped for the backward. Rows beyond T (m_t False) and padded
    features get phi = 0, so they add nothing to any sum.
    """
    b_z = tl.dot(b_x.to(b_w2.dtype), b_w2, input_precision=PREC)  # [BT, BF] = (z_0, -z_0, z_1, -z_1, ...)
    o_c = tl.arange(0, BF)
    m_even = (o_c % 2 == 0)[None, :]
    m_c = ((o_c // 2) < FH)[None, :]
    b_zm = tl.where(m_c, b_z, float("-inf"))
    mx_e, mx_o = parity_max(b_zm, m_even)
    b_e = tl.exp(b_zm - tl.where(m_even, mx_e[:, None], mx_o[:, None]))  # 0 on padded features
    s_e, s_o = parity_sum(b_e, m_even)
    b_p = b_e / tl.where(m_even, s_e[:, None], s_o[:, None])  # [BT, BF]
    b_phi = tl.where(m_c & m_t[:, None], tl.maximum(b_p, PHI_MIN), 0.0)
    return b_phi, b_p


@triton.jit
def hedgehog_dz(b_dphi, b_p, BF: tl.constexpr):
    """Back through the two softmaxes and the clamp of phi: d phi [BT, BF] -> dz [BT, BF], the gradient of
    z2 = x W2 (interleaved, see load_w2). The clamp passes gradient where softmax >= 1e-12; softmax
    backward per parity is p (g - sum(g p)). The projection's own backward (dx = dz W2^T, dW2 = x^T dz)
    is left to the launcher: as GEMMs over the whole sequence they keep two [K, F] matrices out of the
    kernels' registers. With W = W2[:, 0::2] = -W2[:, 1::2], d/d(x W) = dz[:, 0::2] - dz[:, 1::2]."""
    m_even = (tl.arange(0, BF) % 2 == 0)[None, :]
    b_g = tl.where(b_p >= PHI_MIN, b_dphi, 0.0)
    s_e, s_o = parity_sum(b_g * b_p, m_even)
    return b_p * (b_g - tl.where(m_even, s_e[:, None], s_o[:, None]))  # [BT, BF]


@triton.jit
def phi_halves_dz(b_g, b_phi, BT: tl.constexpr, FZ: tl.constexpr, BF: tl.constexpr, BFZ: tl.constexpr,
                  PREC: tl.constexpr):  # fmt: skip
    """The gradient of z = x W [BT, BFZ] (fp32; columns past FZ are garbage, masked by the store) from that of
    phi [BT, BF] (b_g) and phi itself (b_phi), with phi = clamp(concat(softmax(z), softmax(-z)), 1e-12) in
    SPEC order: columns [0, FZ) the first half, [FZ, 2 FZ) the second, zero beyond. Per half the softmax
    backward is p (g - sum(g p)); the second half enters with a minus sign, and the two are folded into
    one [BT, FZ] tile by a reshape to [BT, 2, FZ] and a split where each half is BFZ wide (PHI_FOLD_SPLIT),
    else by a dot with E [BF, BFZ] = (I; -I), which needs no reshape of the [BT, BF] tile.
    phi stands in for the softmax: where the clamp acted (p < 1e-12) the gradient it lets through is about
    1e-12 |g|, against the reference's 0."""
    o_f = tl.arange(0, BF)
    m_first = (o_f < FZ)[None, :]
    b_gp = b_g * b_phi
    s_first = tl.sum(tl.where(m_first, b_gp, 0.0), 1)  # [BT]
    s_second = tl.sum(tl.where(m_first, 0.0, b_gp), 1)  # padding columns hold phi = 0
    b_d = b_phi * (b_g - tl.where(m_first, s_first[:, None], s_second[:, None]))  # [BT, BF]
    if PHI_FOLD_SPLIT and 2 * FZ == BF and FZ == BFZ:  # power-of-two halves: [BT, 2, FZ] -> first - second
        b_first, b_second = tl.split(tl.permute(tl.reshape(b_d, [BT, 2, FZ]), (0, 2, 1)))
        return b_first - b_second
    o_r, o_c = o_f[:, None], tl.arange(0, BFZ)[None, :]
    m_c = o_c < FZ
    b_fold = tl.where((o_r == o_c) & m_c, 1.0, tl.where((o_r == o_c + FZ) & m_c, -1.0, 0.0))  # [BF, BFZ]
    return tl.dot(b_d, b_fold, input_precision=PREC)


@triton.jit
def pair_difference(b_x, BT: tl.constexpr, BF: tl.constexpr):
    """Interleaved columns (a_0, b_0, a_1, b_1, ...) of b_x [BT, BF] -> a - b [BT, BF // 2] (fp32). With
    hedgehog_dz's output: the gradient of z = x W from that of z2 = x W2 (see load_w2)."""
    b_a, b_b = tl.split(tl.reshape(b_x, [BT, BF // 2, 2]))
    return b_a - b_b
