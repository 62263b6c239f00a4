"""The hybrid backward for window-only tiles, split into parallel window kernels and two linear-state scans.

Math: that of ``hybrid_attn.py``'s backward (module docstring there), for the case its kernels call WIN_ONLY
with no sinks: a tk window that the tile divides, so a query tile's own key range [L0, c0 + BT) and a key
tile's query range [c0, Q1) hold window pairs only, and every linear pair (i, j) has j below the query
tile's L0, i.e. enters through the running state alone:

    window:  dq_i, dk_j, dv_j (window part) from e_ij = gamma exp(s_ij - M_i) over window pairs only
    linear:  dfq_i = dn_i S_i^T + dd_i z_i          S_i, z_i: the state of the keys j < L0(tile of i)
             dfk_j = v_j P_j^T + r_j,  dv_j += fk_j P_j    P_j, r_j: the reverse state of the queries >= Q1(tile of j)

``hybrid_attn.py`` computes both in one scan per (batch, head, segment): the window part of every tile waits
for the previous tile's state step, and the [F, D] fp32 state held in registers beside the window tiles takes
each kernel to 255 registers per thread (one 8-warp program per multiprocessor, latency-bound: Nsight Compute
at the 8B stage-2 shape, results/NVIDIA_H200-2026-12-01-ncu-stage2.log). Here the window part runs one
program per (tile, batch, head), with no state, and the state part scans with nothing but the state and one
tile of rows:

    1. window_dq_kernel   grid (n_tiles, B*H): dq, and dd, dM per row (for the rest)
    2. the reverse segment states (segments.py), from dd
    3. window_dkv_kernel  grid (n_tiles, B*H): dk and dv's window part
    4. linear_dkv_kernel  grid (NSEG, B*H), reverse scan: dfk, and dv += fk P
    5. linear_dq_kernel   grid (NSEG, B*H), forward scan: dfq

Reference: ``lolcats_lab.attention.hybrid.naive_hybrid_attn``; the single-scan kernels of ``hybrid_attn.py``
compute the same gradients (tests/kernels/test_hybrid_attn_kernel.py runs both against the reference).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._launch import launch
from ._tl_helpers import dot as _dot
from ._tl_helpers import head_offsets, load_segment_state, scaled_dy, segment_chunks, strided_head_offset, window_gamma
from ._tl_helpers import load_rows as _rows
from ._tl_helpers import load_rows_strided as _rows_s
from ._tl_helpers import store_rows as _store
from ._utils import FOLD_PREFIX, FOLD_SUFFIX_INCLUSIVE, autotune_configs
from .hybrid_attn import (
    _CONFIGS,
    _advance_reverse_state,
    _advance_state,
    _dkv_queries,
    _dq_step,
    _linear_start,
    _reverse_start,
    _reverse_states,
    _row_gradients,
    forward_tile,
    window_logit_grad,
)
from .segments import fold_mode

# the linear state scans on the forward's wide tiles (True) or on the window kernels' tiles (benchmarks
# compare both: profile_kernels.py --narrow-scans)
WIDE_STATE_TILES = True

# The window kernels hold no state: fewer registers, so 4 warps (two or more programs per multiprocessor)
# are candidates beside 8.
_WINDOW_CONFIGS = autotune_configs(
    triton.Config({}, num_warps=4, num_stages=2),
    triton.Config({}, num_warps=8, num_stages=2),
    triton.Config({}, num_warps=4, num_stages=3),
)


@triton.autotune(configs=_WINDOW_CONFIGS, key=["K", "V", "BT", "LOWP", "GK", "GV"])
@triton.jit(do_not_specialize=["T", "W"])
def window_dq_kernel(
    q, k, v, do, logit, o, SOB, SOH, SOT, u, dq, den, dd, mx, amax, dm, T, W, scale,
    H: tl.constexpr, GK: tl.constexpr, GV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, LOWP: tl.constexpr,
):  # fmt: skip
    """Grid (n_tiles, B*H): one query tile's dq over its window keys [L0, c0 + BT); writes dd = -dn . y and
    dM = -dy . u for the tile's rows. o and do share the element strides SOB, SOH, SOT."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh64, i_bk, i_bv = head_offsets(i_bh, H, GK, GV)
    DT = q.dtype.element_ty if LOWP else tl.float32
    q += i_bh64 * T * K
    dq += i_bh64 * T * K
    k += i_bk * T * K
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
    c0 = i_t * BT
    o_i = c0 + tl.arange(0, BT)
    m_i = o_i < T
    b_q = _rows(q, o_i, m_i, K, BK)  # [BT, BK]
    b_dn, b_dd, b_dm, b_m, b_idx = _row_gradients(do, o, u, den, mx, amax, o_i, m_i, SOT, V, BV, DT)
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    kend = tl.minimum(c0 + BT, T)
    for j0 in range(_linear_start(c0, W, True), kend, BT):  # window keys only (LIN False: no fk, fq, dfq read)
        b_dq, _ = _dq_step(
            k, v, k, b_q, b_q, b_dn, b_dd, b_m, b_dq, b_dq, o_i, j0, kend, T, W, 0, scale, gamma,
            K, K, V, BT, BK, BK, BV, True, PREC, DT, False)  # fmt: skip
    b_kmax = _rows(k, b_idx, m_i & (b_idx >= 0), K, BK)  # [BT, BK]: k at each row's argmax (gathered)
    _store(dq, (b_dq + b_dm[:, None] * b_kmax) * scale, o_i, m_i, K, BK)
    tl.store(dd + o_i, b_dd, mask=m_i)
    tl.store(dm + o_i, b_dm, mask=m_i)


@triton.autotune(configs=_WINDOW_CONFIGS, key=["K", "V", "BT", "LOWP", "GK", "GV"])
@triton.jit(do_not_specialize=["T", "W"])
def window_dkv_kernel(
    q, k, v, do, SOB, SOH, SOT, logit, den, dd, mx, amax, dm, dk, dv, T, W, scale,
    H: tl.constexpr, GK: tl.constexpr, GV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, LOWP: tl.constexpr,
):  # fmt: skip
    """Grid (n_tiles, B*H): one key tile's dk and the window part of its dv, over its window queries
    [c0, Q1) (dv per query head: [B, H, T, D]; the linear part is added by linear_dkv_kernel)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh64, i_bk, i_bv = head_offsets(i_bh, H, GK, GV)
    DT = q.dtype.element_ty if LOWP else tl.float32
    q += i_bh64 * T * K
    k += i_bk * T * K
    dk += i_bh64 * T * K
    v += i_bv * T * V
    dv += i_bh64 * T * V
    do += strided_head_offset(i_bh, H, 1, SOB, SOH)
    den += i_bh64 * T
    dd += i_bh64 * T
    mx += i_bh64 * T
    amax += i_bh64 * T
    dm += i_bh64 * T
    gamma = window_gamma(logit, i_bh % H)
    c0 = i_t * BT
    o_j = c0 + tl.arange(0, BT)
    m_j = o_j < T
    b_k = _rows(k, o_j, m_j, K, BK)  # [BT, BK]
    b_v = _rows(v, o_j, m_j, V, BV)  # [BT, BV]
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    b_dk, _, b_dv = _dkv_queries(  # LIN False: fq, fk and dfk are not read
        q, q, do, SOT, den, dd, mx, amax, dm, b_k, b_k, b_v, b_dk, b_dk, b_dv, o_j, c0,
        _reverse_start(c0, T, W, BT, True), T, W, 0, scale, gamma, K, K, V, BT, BK, BK, BV, True, PREC, DT, False,
    )  # fmt: skip
    _store(dk, b_dk * scale, o_j, m_j, K, BK)
    _store(dv, b_dv, o_j, m_j, V, BV)


# restore_value: the kernel adds into dv, and the autotuner runs each candidate several times on the first
# call; without it the first call's dv held the window part plus the linear part once per timing run (seen on
# an H200 as a different second-step loss in bench_8b's stage 2 than with the single-scan kernels)
@triton.autotune(configs=_CONFIGS, key=["F", "V", "BT", "LOWP", "GV"], restore_value=["dv"])
@triton.jit(do_not_specialize=["T", "W", "NSEG", "CPS"])
def linear_dkv_kernel(
    fq, fk, v, do, SOB, SOH, SOT, p0, r0, den, dd, dfk, dv, T, W, NSEG,
    H: tl.constexpr, GV: tl.constexpr, F: tl.constexpr, V: tl.constexpr, CPS, BT: tl.constexpr,
    BF: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, LOWP: tl.constexpr, FOLD: tl.constexpr,
):  # fmt: skip
    """Grid (NSEG, B*H). Reverse scan over one segment's key tiles with the reverse state (P, r) of the
    queries that see the whole tile as linear (from p0, r0: see hybrid_attn_bwd_dkv_kernel): writes
    dfk = v P^T + r and adds fk P to dv [B, H, T, D] (which holds the window part)."""
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh64, _, i_bv = head_offsets(i_bh, H, 1, GV)
    DT = fq.dtype.element_ty if LOWP else tl.float32
    fq += i_bh64 * T * F
    fk += i_bh64 * T * F
    dfk += i_bh64 * T * F
    v += i_bv * T * V
    dv += i_bh64 * T * V
    do += strided_head_offset(i_bh, H, 1, SOB, SOH)
    den += i_bh64 * T
    dd += i_bh64 * T
    b_P, b_r = load_segment_state(p0, r0, i_bh64, i_s, NSEG, BF, BV, 0, BV, FOLD)
    t_lo, t_hi = segment_chunks(i_s, CPS, T, BT)
    Q_done = _reverse_start((t_hi - 1) * BT, T, W, BT, True)
    for i_r in range(t_hi - t_lo):
        c0 = (t_hi - 1 - i_r) * BT
        o_j = c0 + tl.arange(0, BT)
        m_j = o_j < T
        Q1 = _reverse_start(c0, T, W, BT, True)
        b_P, b_r = _advance_reverse_state(fq, do, SOT, den, dd, b_P, b_r, Q1, Q_done, F, V, BT, BF, BV, PREC, DT)
        Q_done = Q1
        b_fk = _rows(fk, o_j, m_j, F, BF)  # [BT, BF]
        b_v = _rows(v, o_j, m_j, V, BV)  # [BT, BV]
        _store(dfk, _dot(b_v, tl.trans(b_P), DT, PREC) + b_r[None, :], o_j, m_j, F, BF)
        _store(dv, _rows(dv, o_j, m_j, V, BV) + _dot(b_fk, b_P, DT, PREC), o_j, m_j, V, BV)


@triton.autotune(configs=_CONFIGS, key=["F", "V", "BT", "LOWP", "GV"])
@triton.jit(do_not_specialize=["T", "W", "NSEG", "CPS"])
def linear_dq_kernel(
    fk, v, do, SOB, SOH, SOT, s0, z0, den, dd, dfq, dm, logit, d_logit, T, W, NSEG,
    H: tl.constexpr, GV: tl.constexpr, F: tl.constexpr, V: tl.constexpr, CPS, BT: tl.constexpr,
    BF: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, LOWP: tl.constexpr, FOLD: tl.constexpr,
):  # fmt: skip
    """Grid (NSEG, B*H). Forward scan over one segment's query tiles with the linear state (S, z) of the keys
    below each tile's L0 (from the forward's segment states s0, z0): writes dfq = dn S^T + dd z. The
    backward's last kernel: programs (0, h) also write d window_logit[h] from window_dq_kernel's dM
    (window_logit_grad)."""
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh64, _, i_bv = head_offsets(i_bh, H, 1, GV)
    DT = fk.dtype.element_ty if LOWP else tl.float32
    fk += i_bh64 * T * F
    dfq += i_bh64 * T * F
    v += i_bv * T * V
    do += strided_head_offset(i_bh, H, 1, SOB, SOH)
    den += i_bh64 * T
    dd += i_bh64 * T
    b_S, b_z = load_segment_state(s0, z0, i_bh64, i_s, NSEG, BF, BV, 0, BV, FOLD)
    t_lo, t_hi = segment_chunks(i_s, CPS, T, BT)
    L_done = _linear_start(t_lo * BT, W, True)
    for i_t in range(t_lo, t_hi):
        c0 = i_t * BT
        o_i = c0 + tl.arange(0, BT)
        m_i = o_i < T
        L0 = _linear_start(c0, W, True)
        b_S, b_z = _advance_state(fk, v, b_S, b_z, L_done, L0, 0, F, V, BT, BF, BV, PREC, DT)
        L_done = L0
        b_den = tl.load(den + o_i, mask=m_i, other=1.0)
        b_dn = scaled_dy(_rows_s(do, o_i, m_i, SOT, V, BV), b_den, DT, True)  # [BT, BV]
        b_dd = tl.load(dd + o_i, mask=m_i, other=0.0)  # [BT]
        _store(dfq, _dot(b_dn, tl.trans(b_S), DT, PREC) + b_dd[:, None] * b_z[None, :], o_i, m_i, F, BF)
    if (i_s == 0) & (i_bh < H):  # one program per head, batch element 0: dM is complete
        window_logit_grad(dm + i_bh64 * T, logit, d_logit, i_bh, T, H)


def split_applies(meta: dict, sink_tokens: int) -> bool:
    """Whether :func:`split_backward` computes this backward: window-only tiles (meta's WIN_ONLY: tk with the
    tile dividing the window) and no sink tokens (sink key tiles mix window and linear queries)."""
    return bool(meta["WIN_ONLY"]) and sink_tokens == 0


def split_backward(q, k, v, fq, fk, logit, do, o, row, s0, z0, cps, grads, *, window, scale, meta):
    """Launch the five steps of the module docstring. logit: window_logit [H] contiguous; ``row``: the
    forward's RowStats; (s0, z0, cps): its segment start states and tiles per segment (of meta's BT tokens);
    ``grads``: the output buffers (dq, dk, dv, dfq, dfk, dd, dm, d_logit) to fill."""
    B, H, T, _ = q.shape
    dq, dk, dv, dfq, dfk, dd, dm, d_logit = grads
    n_seg, BT = s0.shape[1], meta["BT"]
    win = {name: meta[name] for name in ("H", "GK", "GV", "K", "V", "BT", "BK", "BV", "PREC", "LOWP")}
    lin = {name: meta[name] for name in ("H", "GV", "F", "V", "BF", "BV", "PREC", "LOWP")}
    # the scans walk the forward's tile (64 tokens where the window allows: hybrid_attn.forward_tile) over the
    # same segments: a state step per tile, so half the dependent steps of 32-token tiles
    lin["BT"], lin_cps = forward_tile(BT, window, "tk", cps, n_seg) if WIDE_STATE_TILES else (BT, cps)
    tiles = (triton.cdiv(T, BT), B * H)
    launch(
        window_dq_kernel, tiles,
        q, k, v, do, logit, o, *o.stride()[:3], row.u, dq, row.den, dd, row.mx, row.amax, dm, T, window, scale, **win,
    )  # fmt: skip
    p0, r0 = _reverse_states(fq, do, row, dd, T, window, "tk", BT, cps, n_seg, meta)  # needs dd
    launch(
        window_dkv_kernel, tiles,
        q, k, v, do, *o.stride()[:3], logit, row.den, dd, row.mx, row.amax, dm, dk, dv, T, window, scale, **win,
    )  # fmt: skip
    launch(
        linear_dkv_kernel, (n_seg, B * H),
        fq, fk, v, do, *o.stride()[:3], p0, r0, row.den, dd, dfk, dv, T, window, n_seg, CPS=lin_cps,
        FOLD=fold_mode(n_seg, FOLD_SUFFIX_INCLUSIVE), **lin,
    )  # fmt: skip
    launch(
        linear_dq_kernel, (n_seg, B * H),
        fk, v, do, *o.stride()[:3], s0, z0, row.den, dd, dfq, dm, logit, d_logit, T, window, n_seg, CPS=lin_cps,
        FOLD=fold_mode(n_seg, FOLD_PREFIX), **lin,
    )  # fmt: skip
