"""One decoding step of LoLCATs hybrid attention in Triton, batched, against a fixed-size ring-buffer cache.

Math: exactly SPEC.md "The hybrid output" for the newest query p of each row (``cache.pos[b]``):

    y_p = (gamma sum_{j in W_p} exp(s_pj - M_p) v_j + fq_p S) / (gamma sum_{j in W_p} exp(s_pj - M_p) + fq_p . z + eps)

with S = sum_{j in L_p} fk_j v_j^T [F, D], z = sum_{j in L_p} fk_j [F] (sinks excluded) and M_p the max
over window keys. Reference: ``lolcats_lab.attention.hybrid.hybrid_decode_step`` (token by token) and
row p of ``naive_hybrid_attn`` (SPEC.md "Decoding must equal training").

Cache layout (:class:`RingHybridCache`, all [B, H, ...]; memory constant in the context length):
    S_buf [NB, F, D], z_buf [NB, F]     fp32 linear state; NB = 2 for tk windows (the state of the current
                                        block's queries, and the next block's, being built), else 1
    k_buf [Wc, K], v_buf [Wc, D], fk_buf [Wc, F]   ring of window tokens, position j in slot j % Wc,
                                        Wc = w (sw) or 2w (tk: the previous and the current block);
                                        one unused slot when w = 0 (pure linear, sinks only)
    k_sink [n, K], v_sink [n, D]        the first n tokens when sink_tokens = n
    pos [B] int64                       each row's next position (its real tokens so far)
Positions live in device memory, one per row: rows of a left-padded batch hold different numbers of real
tokens, and the tk block rule depends on each row's own position, so one launch serves them all. The
kernel only reads ``pos``; :func:`hybrid_decode_step` then adds 1 in a separate op (no program reads a
half-updated value). Nothing in a step depends on a host value that changes between steps, and the step
never synchronises with the host, so it can be captured once in a CUDA graph and replayed.

One program per (batch, head) per step: (1) sw: folds into S, z the key at p - w that leaves the window (an
exact fp32 rank-1 update); w = 0: the new token itself unless it is a sink, (2) takes the linear terms
fq S, fq . z and writes S, z back in place when (1) changed them, (3) attends to the window keys, visited by
position (only the ring tiles the window covers), the sinks and the new token (held in registers), and
(4) writes the output, then the new token into its slot.

tk windows fold no block at a block start. The queries of block c (positions [cw, (c+1)w)) share one
linear state, the keys before block c - 1, held in buffer c % 2 and only read during block c; the next
block's, that plus block c - 1's keys, goes to the other buffer, ceil(F / w) of its rows per step: step
p = cw + i writes rows [i r, (i + 1) r) as this block's rows plus sum_j fk_j[rows] v_j over block c - 1,
whose keys (3) visits anyway (they are the first w keys of W_p), so the values are the tiles (3) loads
already. Each step therefore reads one state and writes r rows of the other; before session 20 a block
start folded all w keys into the state and wrote it whole, the one step in w that took 1.47x the bound
(benchmarks/README.md, session 20). State and window are read once and at most one state written: the
memory-bandwidth bound of the step (benchmarks/bench_attention.py counts a whole state written on every
step). Slot validity comes from positions: slot s holds the latest position p' <= p with p' = s (mod Wc);
it is a window key iff p' >= n_sinks and p' is in W_p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._launch import launch_jit
from ._tl_helpers import load_rows as _rows
from ._tl_helpers import window_gamma
from ._utils import block, check_same_dtype_device, check_tensor, dot_precision, is_interpreter


# Window keys per tile of the decode kernel's loops on the GPU (module-level so benchmarks can sweep it).
# H100, batch 16 x 32 heads, D = F = 128, tk window 64 (results/*-2026-11-23-decode-session4.json): 64 keys
# took 48.2 / 57.8 us at a full window / a block start against 51.7 / 61.7 us with 32, the same (44 us)
# with a window of 65 keys. Rejected on the H200 (B16 H32 D=F=128, tk w = 64; results/*-2026-12-01-decode-
# session9-*-rejected.json): holding the state 32 rows at a time (168 registers without spills against 255
# with 1,216 B compiled for sm_90): 42.1-44.2 against 39.4 us mid-block, 62.9-69.5 against 51.3 at a block
# start; spreading a head's step over 1, 2 or 4 state programs (value columns) plus a window program, then
# a finishing kernel for y and the ring: 39.9-45.2 against 41.1 us mid-block, 54.0-66.4 against 52.4 at
# a block start; 8 warps: 51-91 us. The step waits on latency, not on bytes or occupancy. With DECODE_DOTS
# (H200, results/*-2026-12-01-decode-session10.json, tk w = 64) 32 keys took 30.1 / 33.5 / 45.4 us
# mid-block / at a full window / at a block start, 31.1 us per step over a block of 64, against 31.6 /
# 33.6 / 44.7 and 31.9 with 64 keys. Session 20 (H100, the tk steps building the next block's state row by row,
# whose fold dot runs on the tiles of the previous block: results/*-2026-12-07-decode-session20-v1.json): 64 keys
# 35.9 / 38.8 / 32.3 us mid-block / at a full window / at a block start and 35.8 per step over a block,
# against 36.5 / 41.8 / 34.5 and 38.1 with 32 (the code before it: 33.4 per step over a block either way).
DECODE_TILE = 64
# The step's three matrix-vector products (fq S over the state's rows, the window scores k . q over the head
# dim, the weighted values sum_j p_j v_j over the keys) as tl.dot on a 16-row operand holding the vector in
# row 0, instead of elementwise products and row reductions. Compiled for sm_90 (4 warps, 64-key tiles;
# benchmarks/kernel_resources.py) the reductions make the step's 734 warp shuffles and 52 barriers, chains
# of dependent exchanges in a kernel that waits on latency; with the dots 114 and 32 (spills 1,212 -> 1,032
# B, shared memory 64 KB either way; 32-key tiles: 510 / 44 -> 118 / 30). Dots take the ring's dtype: bf16
# window products are exact, and the fp32 state is rounded to it as a dot operand, as the training kernels
# round it. H200,
# B16 H32 D=F=128, tk w = 64 (results/*-2026-12-01-decode-session10.json): 31.1 us per step over a block of
# 64 steps (30.1 / 33.5 / 45.4 mid-block / at a full window / at a block start) against 41.7 with the
# reductions at their best tile (64 keys: 40.2 / 44.6 / 52.2); compiled 214 registers, 43 KB shared.
# "half" (the default): dots for fp16 / bf16 rings, row reductions for fp32 ones, whose dot operands would
# take 128 KB of shared memory compiled for sm_90 at D = F = 128 (96 KB with the reductions): more than the
# 99 KB a program may use on sm_86 / sm_89 GPUs. True / False: dots or reductions for every dtype.
DECODE_DOTS = "half"
# Warps per program. H100 with the row reductions (B16 H32 D=F=128): 8 warps took 90.7 us per step against
# 53.9 us with 4 (results/*-decode-*.json). With the dots on the H200 (session10.json): 46.0 us per step
# over a block at 8 warps against 31.1 at 4 (32-key tiles; 64-key: 42.4 against 31.9). Also timed there and
# removed (results/*-decode-session10-late-maxnreg-rejected.json; 31.0 us per step over a block for this
# default in that call): a register cap (Triton's maxnreg) for more programs per SM, 168 -> 38.4 us and
# 128 (four programs per SM, one wave for 512 programs) -> 45.7 us, spilling 1-3 KB per thread; the linear
# terms after the window loop, so the state's load overlaps the window's, 31.4 us.
DECODE_WARPS = 4


@triton.jit
def _vec(p, N: tl.constexpr, BN: tl.constexpr):
    o = tl.arange(0, BN)
    return tl.load(p + o, mask=o < N, other=0.0).to(tl.float32)


@triton.jit
def _all(m_vec, m):
    """m_vec & m for a vector mask and a scalar condition (tl.where: in Triton 3.9's interpreter,
    vector & scalar booleans give an integer array that tl.load / tl.store reject as a mask)."""
    return tl.where(m, m_vec, False)


@triton.jit
def _row(p, r, m, N: tl.constexpr, BN: tl.constexpr):
    """Row r of a contiguous [*, N] matrix as an fp32 [BN] vector, zero where the scalar mask m is False."""
    o = tl.arange(0, BN)
    return tl.load(p + r * N + o, mask=_all(o < N, m), other=0.0).to(tl.float32)


@triton.jit
def _in_row0(b_x, DT: tl.constexpr):
    """b_x [N] as row 0 of a [16, N] dot operand of type DT (the tensor cores' smallest M), other rows zero."""
    return tl.where((tl.arange(0, 16) == 0)[:, None], b_x[None, :], 0.0).to(DT)


@triton.jit
def _vec_mat(b_x, b_m, DOTS: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """b_x [N] @ b_m [N, C] -> [C] fp32: a row reduction, or with DOTS one tl.dot with b_x in row 0 of a
    [16, N] operand (_in_row0), read back by a sum over the 16 rows."""
    if DOTS:
        b_out = tl.sum(tl.dot(_in_row0(b_x, DT), b_m.to(DT), input_precision=PREC), 0)
    else:
        b_out = tl.sum(b_x[:, None] * b_m, 0)
    return b_out


@triton.jit
def _mat_vec(b_m, b_x, DOTS: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """b_m [R, N] @ b_x [N] -> [R] fp32 (see _vec_mat)."""
    if DOTS:
        b_out = tl.sum(tl.dot(b_m.to(DT), tl.trans(_in_row0(b_x, DT)), input_precision=PREC), 1)
    else:
        b_out = tl.sum(b_m * b_x[None, :], 1)
    return b_out


@triton.jit
def _online(b_m, b_acc, b_l, b_s, b_vr, DOTS: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """Online softmax update with scores b_s [BC] (-inf = not a window key) and values b_vr [BC, BV].
    Safe when nothing was seen yet (b_m = -inf: the first block, or only linear keys)."""
    m_new = tl.maximum(b_m, tl.max(b_s, 0))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(b_m - m_use)  # 0 while b_m = -inf
    b_p = tl.exp(b_s - m_use)  # 0 on invalid slots
    return m_new, b_acc * alpha + _vec_mat(b_p, b_vr, DOTS, DT, PREC), b_l * alpha + tl.sum(b_p, 0)


@triton.jit(do_not_specialize=["W", "NS"])
def hybrid_decode_kernel(
    q, k, v, fq, fk, logit, S, z, kb, vb, fkb, ks, vs, y, pos, W, NS, scale, eps,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, F: tl.constexpr, WC: tl.constexpr, NSC: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, BF: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr, TK: tl.constexpr,
    LIN: tl.constexpr, PREC: tl.constexpr, DOTS: tl.constexpr, NB: tl.constexpr, RPS: tl.constexpr,
    BR: tl.constexpr,
):  # fmt: skip
    """Grid (B*H,). q, k [B*H, K]; v, y [B*H, D]; fq, fk [B*H, F]; S [B*H, NB, F, D], z [B*H, NB, F] (NB = 2
    for tk windows: the current state and the next block's, else 1); rings [B*H, WC, *]; pos [B] int64 (read
    only). LIN: window 0 (pure linear, only sinks are exact). DOTS: see DECODE_DOTS. RPS: rows of the next
    block's state written per tk step (ceil(F / W)), BR: their tile (a power of two >= 16)."""
    i_bh = tl.program_id(0)
    i_bh64 = i_bh.to(tl.int64)
    p = tl.load(pos + i_bh // H).to(tl.int64)  # this row's position
    gamma = window_gamma(logit, i_bh % H)  # sigmoid of the logit
    q += i_bh64 * K
    k += i_bh64 * K
    fq += i_bh64 * F
    fk += i_bh64 * F
    v += i_bh64 * V
    y += i_bh64 * V
    S += i_bh64 * NB * F * V
    z += i_bh64 * NB * F
    kb += i_bh64 * WC * K
    vb += i_bh64 * WC * V
    fkb += i_bh64 * WC * F
    ks += i_bh64 * NSC * K
    vs += i_bh64 * NSC * V
    b_q, b_k, b_v = _vec(q, K, BK), _vec(k, K, BK), _vec(v, V, BV)  # new token, [BK] / [BV]
    b_fq = _vec(fq, F, BF)
    o_f, o_v = tl.arange(0, BF), tl.arange(0, BV)
    m_fv = (o_f < F)[:, None] & (o_v < V)[None, :]
    blk = p // W  # tk: this step's block; its state is buffer blk % 2, the next block's the other
    if NB == 2:
        S_next, z_next = S + ((blk + 1) % 2) * F * V, z + ((blk + 1) % 2) * F
        S += (blk % 2) * F * V
        z += (blk % 2) * F
    b_S = tl.load(S + o_f[:, None] * V + o_v[None, :], mask=m_fv, other=0.0)  # [BF, BV] fp32
    b_z = tl.load(z + o_f, mask=o_f < F, other=0.0)  # [BF]
    slot = p % WC
    new_is_sink = p < NS
    RT = kb.dtype.element_ty  # the window dots' operand type (DOTS): the ring's
    # (1) fold the key that leaves the window at this step into S, z (sw: the one at p - w; window 0: the new
    # token itself unless it is a sink). tk folds nothing here: its next block's state is built in (3).
    changed = False
    if LIN:
        b_fkn = tl.where(new_is_sink, 0.0, _vec(fk, F, BF))  # [BF]
        b_S += b_fkn[:, None] * b_v[None, :]
        b_z += b_fkn
        changed = p >= NS
    elif not TK:  # one key: an exact fp32 rank-1 update
        m_r = (p >= W) & (p - W >= NS)
        b_fkr = _row(fkb, slot, m_r, F, BF)  # [BF]
        b_S += b_fkr[:, None] * _row(vb, slot, m_r, V, BV)[None, :]
        b_z += b_fkr
        changed = m_r
    # (2) the linear terms, and the state written back when (1) changed it. Done before the window loop so
    # the [F, D] state is dead during it (registers for wider key tiles).
    b_lin = _vec_mat(b_fq, b_S, DOTS, RT, PREC)  # [BV]; DOTS: the state rounded to the ring's type
    b_lin_den = tl.sum(b_fq * b_z, 0)
    if changed:
        tl.store(S + o_f[:, None] * V + o_v[None, :], b_S, mask=m_fv)
        tl.store(z + o_f, b_z, mask=o_f < F)
    # (3) attention over window keys with an online max: the new token, ring slots, sinks
    b_sn = tl.sum(b_q * b_k, 0) * scale
    if LIN:
        new_in_window = new_is_sink
    else:
        new_in_window = p >= 0  # always (SPEC.md: i is in W_i for w >= 1)
    b_m = tl.where(new_in_window, b_sn, float("-inf"))
    b_acc = tl.where(new_in_window, b_v, 0.0)  # exp(s_new - m) = 1
    b_l = tl.where(new_in_window, 1.0, 0.0)
    if not LIN:
        if TK:  # first position in W_p (SPEC.md)
            win_lo = ((p // W) - 1) * W
        else:
            win_lo = p - W + 1
        # window keys before p: positions [lo, p), all still in the ring (p - lo < WC); visited by position,
        # so a step reads only the tiles its window covers (tk, w = 64: 2 tiles of 64 keys at most, not all 2w)
        lo = tl.maximum(tl.maximum(win_lo, NS), 0)
        if TK:  # rows [r0, r0 + RPS) of the next block's state: this block's + the previous block's keys,
            # which the loop below visits anyway (their values are its tiles' b_vr)
            o_r = (p % W) * RPS + tl.arange(0, BR)  # feature rows
            m_rows = (o_r < (p % W + 1) * RPS) & (o_r < F)
            b_Sn = tl.zeros([BR, BV], dtype=tl.float32)
            b_zn = tl.zeros([BR], dtype=tl.float32)
        for c0 in range(lo, p, BC):
            o_p = c0 + tl.arange(0, BC)
            m_s = o_p < p
            o_s = o_p % WC  # their slots
            b_kr = _rows(kb, o_s, m_s, K, BK)  # [BC, BK]
            b_s = tl.where(m_s, _mat_vec(b_kr, b_q, DOTS, RT, PREC) * scale, float("-inf"))  # [BC]
            b_vr = _rows(vb, o_s, m_s, V, BV)  # [BC, BV]
            b_m, b_acc, b_l = _online(b_m, b_acc, b_l, b_s, b_vr, DOTS, RT, PREC)
            if TK:  # the previous block's keys (positions below blk * W; sinks are never in this loop)
                m_fk = (m_s & (o_p < blk * W))[:, None] & m_rows[None, :]
                b_fkr = tl.load(fkb + o_s[:, None] * F + o_r[None, :], mask=m_fk, other=0.0)  # [BC, BR]
                DT = fkb.dtype.element_ty  # half rings: products exact in the dot, sums fp32
                b_Sn += tl.dot(tl.trans(b_fkr), b_vr.to(DT), input_precision=PREC)
                b_zn += tl.sum(b_fkr.to(tl.float32), 0)
        if TK:  # write them (the other rows were or will be written by this block's other steps). Timed on
            # an H100 (session 20) against this form and rejected: these rows' loads before the loop, the
            # fold dot only on tiles below blk * W (a branch in the loop) and fk loaded as [BR, BC]: 37.7 against
            # 35.8 us per step over a block (results/*-2026-12-07-decode-session20-v2-rejected.json)
            m_rv = m_rows[:, None] & (o_v < V)[None, :]
            b_Sc = tl.load(S + o_r[:, None] * V + o_v[None, :], mask=m_rv, other=0.0)  # [BR, BV]
            tl.store(S_next + o_r[:, None] * V + o_v[None, :], b_Sc + b_Sn, mask=m_rv)
            tl.store(z_next + o_r, tl.load(z + o_r, mask=m_rows, other=0.0) + b_zn, mask=m_rows)
    o_n = tl.arange(0, BS)
    m_n = (o_n < NS) & (o_n < p)  # sinks before the new token
    b_kn = _rows(ks, o_n, m_n, K, BK)  # [BS, BK]
    b_s = tl.where(m_n, _mat_vec(b_kn, b_q, DOTS, RT, PREC) * scale, float("-inf"))
    b_m, b_acc, b_l = _online(b_m, b_acc, b_l, b_s, _rows(vs, o_n, m_n, V, BV), DOTS, RT, PREC)
    # (4) output
    b_num = gamma * b_acc + b_lin  # [BV]
    b_den = gamma * b_l + b_lin_den + eps
    tl.store(y + o_v, (b_num / b_den).to(y.dtype.element_ty), mask=o_v < V)
    tl.debug_barrier()  # the fold above read the slot written below
    o_k = tl.arange(0, BK)
    p_sink = tl.minimum(p, NSC - 1)  # in bounds even where the store is masked off
    tl.store(ks + p_sink * K + o_k, b_k.to(ks.dtype.element_ty), mask=_all(o_k < K, new_is_sink))
    tl.store(vs + p_sink * V + o_v, b_v.to(vs.dtype.element_ty), mask=_all(o_v < V, new_is_sink))
    if not LIN:
        m_ring = p >= NS
        tl.store(kb + slot * K + o_k, b_k.to(kb.dtype.element_ty), mask=_all(o_k < K, m_ring))
        tl.store(vb + slot * V + o_v, b_v.to(vb.dtype.element_ty), mask=_all(o_v < V, m_ring))
        tl.store(fkb + slot * F + o_f, _vec(fk, F, BF).to(fkb.dtype.element_ty), mask=_all(o_f < F, m_ring))


def _state_buffers(kind: str, window: int) -> int:
    """State buffers per head: 2 for tk windows (the current block's state and the next block's), else 1."""
    return 2 if kind == "tk" and window > 0 else 1


def _window_start(last: torch.Tensor, window: int, kind: str) -> torch.Tensor:
    """First position of W_last for each row (SPEC.md); last [B] int64 (-1 for an empty row) -> [B].
    Window 0: last + 1 (no window keys besides the sinks)."""
    if window == 0:
        return last + 1
    if kind == "tk":
        return ((torch.div(last, window, rounding_mode="floor") - 1) * window).clamp_min(0)
    return (last - window + 1).clamp_min(0)


@dataclass
class RingHybridCache:
    """Fixed-size decoding cache of one hybrid-attention layer (see the module docstring for the layout).

    ``positions`` [B] int64 (also ``pos``) holds each row's next position, in device memory. Tensors are
    updated in place by :func:`hybrid_decode_step`. Assigning an int to ``pos`` fills every row in place.
    """

    S_buf: torch.Tensor  # [B, H, NB, F, D] fp32; NB = 2 for tk windows (this block's state, the next's), else 1
    z_buf: torch.Tensor  # [B, H, NB, F] fp32
    k_buf: torch.Tensor  # [B, H, Wc, K]
    v_buf: torch.Tensor  # [B, H, Wc, D]
    fk_buf: torch.Tensor  # [B, H, Wc, F]
    k_sink: torch.Tensor  # [B, H, max(n, 1), K]
    v_sink: torch.Tensor  # [B, H, max(n, 1), D]
    positions: torch.Tensor  # [B] int64
    window: int
    kind: str
    sink_tokens: int

    @property
    def pos(self) -> torch.Tensor:
        """[B] int64: the position of each row's next token."""
        return self.positions

    @pos.setter
    def pos(self, value) -> None:
        if isinstance(value, torch.Tensor):
            self.positions.copy_(value)
        else:
            self.positions.fill_(int(value))

    def _current(self) -> torch.Tensor:
        """[B] int64: the state buffer each row's next step reads (tk: its block's parity; else 0)."""
        if self.S_buf.shape[2] == 1:
            return torch.zeros_like(self.positions)
        return torch.remainder(torch.div(self.positions, self.window, rounding_mode="floor"), 2)

    @property
    def S(self) -> torch.Tensor:
        """[B, H, F, D] fp32, a copy: the linear state each row's next step starts from. tk: its query's own
        state (the keys before its block's previous block); sw and window 0: the last token's, into which
        the next step first folds the key that leaves its window."""
        idx = self._current()[:, None, None, None, None].expand(-1, self.S_buf.shape[1], 1, *self.S_buf.shape[3:])
        return self.S_buf.gather(2, idx)[:, :, 0]

    @property
    def z(self) -> torch.Tensor:
        """[B, H, F] fp32, a copy: the normaliser's state beside ``S``."""
        idx = self._current()[:, None, None, None].expand(-1, self.z_buf.shape[1], 1, self.z_buf.shape[3])
        return self.z_buf.gather(2, idx)[:, :, 0]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor the cache holds (for memory accounting)."""
        return (self.S_buf, self.z_buf, self.k_buf, self.v_buf, self.fk_buf, self.k_sink, self.v_sink,
                self.positions)  # fmt: skip

    @classmethod
    def empty(cls, batch, heads, head_dim, value_dim, feature_dim, *, window, kind="tk", sink_tokens=0,
              device=None, dtype=torch.float32) -> "RingHybridCache":  # fmt: skip
        """An empty cache (every row at position 0). window = 0: pure linear attention (plus sinks)."""
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ValueError(f"window must be an int >= 0, got {window!r}")
        if kind not in ("tk", "sw"):
            raise ValueError(f"kind must be 'tk' or 'sw', got {kind!r}")
        if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 0:
            raise ValueError(f"sink_tokens must be an int >= 0, got {sink_tokens!r}")
        B, H, ns = batch, heads, max(sink_tokens, 1)
        wc = max(1, window * (2 if kind == "tk" else 1))  # one unused slot for window 0
        nb = _state_buffers(kind, window)
        z = dict(device=device, dtype=dtype)
        return cls(
            S_buf=torch.zeros(B, H, nb, feature_dim, value_dim, device=device),
            z_buf=torch.zeros(B, H, nb, feature_dim, device=device),
            k_buf=torch.zeros(B, H, wc, head_dim, **z), v_buf=torch.zeros(B, H, wc, value_dim, **z),
            fk_buf=torch.zeros(B, H, wc, feature_dim, **z),
            k_sink=torch.zeros(B, H, ns, head_dim, **z), v_sink=torch.zeros(B, H, ns, value_dim, **z),
            positions=torch.zeros(B, dtype=torch.int64, device=device),
            window=window, kind=kind, sink_tokens=sink_tokens,
        )  # fmt: skip

    @classmethod
    def from_prompt(cls, k, v, fk, *, window, kind="tk", sink_tokens=0, lengths=None,
                    chunk=4096) -> "RingHybridCache":  # fmt: skip
        """The cache after a prompt (k, v [B, H, T, *], fk [B, H, T, F]), ready for each row's next token.

        lengths: [B] int tensor, the real tokens of each row, stored first (compact order: row b's tokens
        are k[b, :, :lengths[b]], the rest is padding and ignored); None: every row holds T tokens.
        PyTorch, once per prompt (one host sync to check ``lengths``): S, z over the keys that are linear
        for each row's last token (tk: for its next token, and the next block's state in the other buffer),
        summed in fp32 over ``chunk`` tokens at a time (bounded memory at long prompts); the ring gets what
        token-by-token decoding would have left in it.
        """
        B, H, T, K = k.shape
        if v.shape[:3] != (B, H, T) or fk.shape[:3] != (B, H, T):
            raise ValueError(f"k, v, fk must share [B, H, T], got {tuple(k.shape)}, {tuple(v.shape)}, "
                             f"{tuple(fk.shape)}")  # fmt: skip
        c = cls.empty(B, H, K, v.shape[-1], fk.shape[-1], window=window, kind=kind, sink_tokens=sink_tokens,
                      device=k.device, dtype=k.dtype)  # fmt: skip
        if lengths is None:
            n = torch.full((B,), T, dtype=torch.int64, device=k.device)
        else:
            if not isinstance(lengths, torch.Tensor) or lengths.shape != (B,) or lengths.is_floating_point():
                got = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
                raise ValueError(f"lengths must be an int tensor of shape [B] = ({B},), got {got}")
            n = lengths.to(device=k.device, dtype=torch.int64)
            if bool(((n < 0) | (n > T)).any()):
                raise ValueError(f"lengths must lie in [0, T] = [0, {T}], got {n.tolist()}")
        c.positions.copy_(n)
        if T == 0:
            return c
        j = torch.arange(T, device=k.device)  # [T]
        last = n - 1  # [B]
        if c.S_buf.shape[2] == 2:  # tk: next position n in block n // w reads buffer (n // w) % 2, keys below
            # (n // w - 1) w; the other holds the next block's, keys below (n // w) w (the steps of block n // w
            # would have built it row by row)
            blk = torch.div(n, window, rounding_mode="floor")
            his = (((blk - 1) * window).clamp_min(0), blk * window)
            bufs = (torch.remainder(blk, 2), torch.remainder(blk + 1, 2))
        else:  # keys linear for each row's last token; its next step folds what leaves the window then
            his, bufs = (_window_start(last, window, kind),), (torch.zeros_like(n),)
        for hi, buf in zip(his, bufs):
            lin = (j[None, :] >= sink_tokens) & (j[None, :] < hi[:, None])  # [B, T]
            S, z = torch.zeros_like(c.S_buf[:, :, 0]), torch.zeros_like(c.z_buf[:, :, 0])
            for t0 in range(0, T, chunk):
                fk_c = fk[:, :, t0 : t0 + chunk].float() * lin[:, None, t0 : t0 + chunk, None]  # [B, H, c, F]
                S += torch.einsum("bhtf,bhtd->bhfd", fk_c, v[:, :, t0 : t0 + chunk].float())
                z += fk_c.sum(2)
            c.S_buf.scatter_(2, buf[:, None, None, None, None].expand(-1, H, 1, *S.shape[2:]), S[:, :, None])
            c.z_buf.scatter_(2, buf[:, None, None, None].expand(-1, H, 1, z.shape[2]), z[:, :, None])
        ns = min(sink_tokens, T)
        real = (j[None, :ns] < n[:, None])[:, None, :, None]  # [B, 1, ns, 1]
        c.k_sink[:, :, :ns] = torch.where(real, k[:, :, :ns], 0)
        c.v_sink[:, :, :ns] = torch.where(real, v[:, :, :ns], 0)
        if window > 0:  # slot s: the latest position p' <= last with p' = s (mod Wc), as stepping leaves it
            wc = c.k_buf.shape[2]
            s = torch.arange(wc, device=k.device)
            p_s = last[:, None] - torch.remainder(last[:, None] - s[None, :], wc)  # [B, Wc]
            keep = ((p_s >= 0) & (p_s >= sink_tokens))[:, None, :, None]  # [B, 1, Wc, 1]
            idx = p_s.clamp(0, T - 1)[:, None, :, None]  # [B, 1, Wc, 1]
            for buf, x in ((c.k_buf, k), (c.v_buf, v), (c.fk_buf, fk)):
                got = x.gather(2, idx.expand(B, H, wc, x.shape[-1]))  # [B, H, Wc, *]
                buf.copy_(torch.where(keep, got, 0))
        return c


def _use_dots(ring_dtype: torch.dtype) -> bool:
    """Whether the step takes its matrix-vector products as dots for a ring of this dtype (DECODE_DOTS)."""
    if DECODE_DOTS == "half":
        return ring_dtype in (torch.float16, torch.bfloat16)
    return bool(DECODE_DOTS)


def hybrid_decode_step(q, k, v, fq, fk, window_logit, cache: RingHybridCache, *, scale=None, eps=1e-12):
    """One token for every sequence of the batch: q, k [B, H, 1, K], v [B, H, 1, D], fq, fk [B, H, 1, F].

    Returns (y [B, H, 1, D] in v's dtype, cache) with the cache updated in place (``cache.pos`` + 1 for
    every row, on the device). Not differentiable (inference). No host synchronisation: the step can be
    captured in a CUDA graph (each replay advances the cache by one token).
    """
    check_tensor("q", q, 4, "[B, H, 1, K]")
    for name, x in (("k", k), ("v", v), ("fq", fq), ("fk", fk)):
        check_tensor(name, x, 4, "[B, H, 1, *]")
    check_same_dtype_device(q=q, k=k, v=v, fq=fq, fk=fk)
    if q.shape[2] != 1:
        raise ValueError(f"hybrid_decode_step takes one token (dim 2 == 1), got {q.shape[2]}; prefill with "
                         "RingHybridCache.from_prompt")  # fmt: skip
    B, H, _, K = q.shape
    D, F = v.shape[-1], fq.shape[-1]
    nb = _state_buffers(cache.kind, cache.window)
    expect = dict(k_buf=(B, H, cache.k_buf.shape[2], K), v_buf=(B, H, cache.k_buf.shape[2], D),
                  S_buf=(B, H, nb, F, D), z_buf=(B, H, nb, F), positions=(B,))  # fmt: skip
    for name, shape in expect.items():
        if tuple(getattr(cache, name).shape) != shape:
            raise ValueError(f"cache.{name} has shape {tuple(getattr(cache, name).shape)}, expected {shape} for "
                             "these inputs; build the cache with matching sizes")  # fmt: skip
    if k.shape != q.shape or fk.shape != fq.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"fq {tuple(fq.shape)}, fk {tuple(fk.shape)}")  # fmt: skip
    if not isinstance(window_logit, torch.Tensor) or window_logit.shape != (H,):
        raise ValueError(f"window_logit must be a tensor of shape [H] = ({H},), one logit per head")
    if cache.positions.dtype != torch.int64 or cache.positions.device != q.device:
        raise ValueError(f"cache.positions must be int64 on {q.device}, got {cache.positions.dtype} on "
                         f"{cache.positions.device}")  # fmt: skip
    scale = K**-0.5 if scale is None else float(scale)
    rows_per_step = triton.cdiv(F, max(cache.window, 1))  # tk: rows of the next block's state per step
    y = torch.empty_like(v)
    launch_jit(
        hybrid_decode_kernel, (B * H,),
        q.contiguous(), k.contiguous(), v.contiguous(), fq.contiguous(), fk.contiguous(), window_logit.contiguous(),
        cache.S_buf, cache.z_buf, cache.k_buf, cache.v_buf, cache.fk_buf, cache.k_sink, cache.v_sink, y,
        cache.positions, max(cache.window, 1), cache.sink_tokens, scale, eps,
        H=H, K=K, V=D, F=F, WC=cache.k_buf.shape[2], NSC=cache.k_sink.shape[2], BK=block(K), BV=block(D),
        BF=block(F), BC=16 if is_interpreter() else DECODE_TILE, BS=block(cache.k_sink.shape[2]), TK=cache.kind == "tk",
        LIN=cache.window == 0, PREC=dot_precision(cache.fk_buf.dtype), DOTS=_use_dots(cache.fk_buf.dtype),
        NB=nb, RPS=rows_per_step, BR=block(rows_per_step),
        num_warps=DECODE_WARPS,  # no autotuning (in place: a tuning rerun would fold twice)
    )  # fmt: skip
    cache.positions.add_(1)  # after the kernel, as its own op: every program read the old value
    return y, cache
