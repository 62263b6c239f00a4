"""Sequence parallelism for the chunked kernels: split T into segments, sum each segment's state, scan.

A chunked linear-attention kernel keeps a running state S = sum_j phi(k_j) v_j^T [F, D] (and z = sum_j
phi(k_j) [F]) while it walks the sequence chunk by chunk. Walked by one program per (batch, head), a 64k
sequence is a chain of 1,024 dependent chunk steps on 32 of an H100's 132 multiprocessors. Here the walk
is cut into NSEG segments of CPS chunks each, run as separate programs, two levels deep:

    1. segment_state_kernel, grid (NSEG, B*H): each program sums its segment's keys into (S_s, z_s)
       independently; no program waits for another;
    2. segment_scan_kernel: an exclusive prefix sum over segments (forward) or suffix sum (backward), in
       place, gives every segment the state it starts from (one pass over the states, S and z together:
       they share one buffer [B*H, NSEG, BF*BV + BF] fp32, S row-major then z, split by
       ``split_states``; ``exclusive_prefix`` / ``suffix_sum`` are the scan's PyTorch references);
    3. the attention kernels, grid (..., NSEG, B*H), start each segment from that state.

The key range a segment's state covers is set by the caller as explicit bounds [lo_s, hi_s) per segment
(``bounds`` [NSEG, 2] int32): the linear kernels use the segment's own tokens, the hybrid kernels the keys
that pass from window to linear while the segment's queries are processed (SPEC.md's L_i), and the
backward kernels ranges of queries. Ranges must tile a prefix (forward) or suffix (backward) of the
sequence in order, so the scan of the per-segment sums is the state at each segment's start.

Reverse mode (backward): sums phi(q_i) (dy_i / den_i)^T and dd_i phi(q_i) instead, the reverse states of
the backward (see linear_attn.py), with den, dd [B, H, T] fp32 from the dq kernel.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ._launch import launch, launch_jit
from ._tl_helpers import dot, hedgehog_fwd, load_rows, load_rows_strided, load_w2, strided_head_offset
from ._utils import FOLD_NONE, autotune_configs, check_segment_chunks, multiprocessors

_CONFIGS = autotune_configs(
    triton.Config({}, num_warps=8, num_stages=2),
    triton.Config({}, num_warps=4, num_stages=2),
    triton.Config({}, num_warps=4, num_stages=3),
)
# Tokens per load step of the sums on precomputed half-precision features (at most 128 of them; the fused
# Hedgehog form keeps the caller's chunk, its map's registers growing with the tile). Timed on an H100 at
# [1, 32, 4096, 128] bf16, 8 segments (benchmarks/sweep_segment_states.py, results/*-2026-12-07-sweep-segment-
# states-session17.json): 32-token steps at 4 warps x 2 stages took 56.3 / 70.3 us (forward / reverse), 64-token
# steps at 4 x 3 42.2 / 56.0; 128-token steps and 8 warps were slower. Same call, whole ops at 4k against the
# 32-token steps: forward+backward 2% faster replayed (linear, Hedgehog staged and hybrid alike).
_STATE_TILE = 64

# programs per multiprocessor the auto plan aims for. At 8 warps and 255 registers one program fills an SM's
# register file, so these are waves of programs rather than programs resident together.
_PROGRAMS_PER_SM = 8
# shortest segment the auto plan makes on a GPU: each segment costs a [F, D] fp32 state written, scanned and
# read (64 KB at F = D = 128), about what 256 tokens of bf16 q, k, v take to load. Profiled on an H100 (1k
# tokens, 32 heads): 33 one-chunk segments spent 0.5 of 1.1 ms fwd+bwd scanning 69 MB of states. Swept
# there (B = 1, 32 heads, bf16, fwd+bwd; ...-2026-11-24-tune-session5.json, ...-segments512.json): at 8k,
# 16-17 segments of 512 tokens beat 32 of 256 (Hedgehog fused 2.56-2.59 vs 2.90 ms, linear 1.92 vs 2.02),
# while from 16k on fewer segments than the 8-per-SM plan gives were slower (4 per SM: 64k Hedgehog fused
# 20.5 vs 17.8 ms, ...-per-sm4-rejected.json). 16k and longer keep the 8-per-SM plan either way.
_MIN_SEGMENT_TOKENS = 512


@triton.autotune(configs=_CONFIGS, key=["K", "V", "FH", "BT", "BF", "BV", "HEDGEHOG", "REVERSE", "LOWP", "GX", "GY"])
@triton.jit(do_not_specialize=["T", "NSEG"])
def segment_state_kernel(
    x, w, y, SYB, SYH, SYT, den, dd, bounds, s_out, z_out, T, NSEG,
    H: tl.constexpr, GX: tl.constexpr, GY: tl.constexpr, K: tl.constexpr, V: tl.constexpr, FH: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HEDGEHOG: tl.constexpr, REVERSE: tl.constexpr, PREC: tl.constexpr, LOWP: tl.constexpr,
):  # fmt: skip
    """Grid (NSEG, B*H). x [B, H/GX, T, K] (features, or raw with the Hedgehog projection w [H, K, FH]);
    y [B, H/GY, T, V] with element strides SYB, SYH, SYT (its last dim contiguous). Writes
    S_s = sum_{lo<=j<hi} phi(x_j) y'_j^T [BF, BV] and z_s = sum c_j phi(x_j) [BF] (fp32, padded), with
    y' = y, c = 1 forward and y' = y / den, c = dd in reverse. s_out, z_out: the S and z parts of one state
    buffer, each segment's block BF * BV + BF floats apart (split_states)."""
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh64 = i_bh.to(tl.int64)
    i_bx = ((i_bh // H) * (H // GX) + (i_bh % H) // GX).to(tl.int64)
    DT = x.dtype.element_ty if LOWP else tl.float32
    x += i_bx * T * K
    y += strided_head_offset(i_bh, H, GY, SYB, SYH)
    lo = tl.load(bounds + 2 * i_s)
    hi = tl.load(bounds + 2 * i_s + 1)
    if HEDGEHOG:
        b_w = load_w2(w + (i_bh % H).to(tl.int64) * K * FH, K, FH, BK, BF, DT)  # [BK, BF]
    b_S = tl.zeros([BF, BV], dtype=tl.float32)
    b_z = tl.zeros([BF], dtype=tl.float32)
    for j0 in range(lo, hi, BT):
        o_j = j0 + tl.arange(0, BT)
        m_j = o_j < hi
        b_x = load_rows(x, o_j, m_j, K, BK)  # [BT, BK]
        if HEDGEHOG:
            b_f, _ = hedgehog_fwd(b_x, b_w, m_j, FH, BF, PREC)  # [BT, BF]
            b_f = b_f.to(DT).to(tl.float32)  # as the attention kernels round it (linear_attn._features)
        else:
            b_f = b_x
        b_y = load_rows_strided(y, o_j, m_j, SYT, V, BV)  # [BT, BV]
        if REVERSE:
            b_y = b_y / tl.load(den + i_bh64 * T + o_j, mask=m_j, other=1.0)[:, None]
            b_z += tl.sum(tl.load(dd + i_bh64 * T + o_j, mask=m_j, other=0.0)[:, None] * b_f, 0)
        else:
            b_z += tl.sum(b_f, 0)
        b_S += dot(tl.trans(b_f), b_y, DT, PREC)
    o_f, o_v = tl.arange(0, BF), tl.arange(0, BV)
    base = (i_bh64 * NSEG + i_s) * (BF * BV + BF)
    tl.store(s_out + base + o_f[:, None] * BV + o_v[None, :], b_S)
    tl.store(z_out + base + o_f, b_z)


# ----------------------------------------------------------------------------------------------- host side
def plan_segments(T: int, chunk_size: int, n_bh: int, device: torch.device, segment_chunks: int | None = None):
    """(chunks per segment, number of segments) for a sequence of T tokens and n_bh = B * H programs.

    Auto (segment_chunks None): enough segments that n_bh * NSEG fills the GPU ``_PROGRAMS_PER_SM`` times
    over; as few as that allows, since each segment boundary costs a state of [F, D] fp32. A short sequence
    or a large batch gets one segment: the original single-scan form (see :func:`_one_segment_suffices`).
    On a GPU no segment is shorter than ``_MIN_SEGMENT_TOKENS`` (its state would cost more than its
    tokens)."""
    n_chunks = max(1, math.ceil(T / chunk_size))
    if segment_chunks is None:
        if device.type == "cuda":
            sms = multiprocessors(device)
            max_seg = max(1, n_chunks * chunk_size // _MIN_SEGMENT_TOKENS)
        else:
            sms = 4  # the CPU interpreter: a few short segments, so tests exercise the multi-segment path
            max_seg = n_chunks
        n_seg = min(max_seg, max(1, math.ceil(_PROGRAMS_PER_SM * sms / max(n_bh, 1))))
        if device.type == "cuda" and _one_segment_suffices(n_chunks, n_seg, n_bh, sms):
            n_seg = 1
        segment_chunks = math.ceil(n_chunks / n_seg)
    check_segment_chunks(segment_chunks)
    return segment_chunks, math.ceil(n_chunks / segment_chunks)


def _one_segment_suffices(n_chunks: int, n_seg: int, n_bh: int, sms: int) -> bool:
    """Whether one segment per (batch, head) is as fast as n_seg, counting waves of programs: the main
    kernels hold one program per SM (8 warps at 255 registers fill the register file), so a program's
    chunks run back to back and n programs take ceil(n / sms) waves. When B * H already fills the SMs (an
    8B model's stage 2 at batch 4: 128 programs on 132 SMs), more segments add waves without shortening
    them, and their state sums and scans are pure cost (5.6 ms per step there: `bench_8b.py` profile,
    results/*-8b-lora-2026-11-24-top40.json)."""
    def waves_x_chunks(s):
        return math.ceil(n_bh * s / sms) * math.ceil(n_chunks / s)

    return waves_x_chunks(1) <= waves_x_chunks(n_seg)


# Up to this many segments, the kernels that start from segment states add up the per-segment sums they need
# themselves (_tl_helpers.load_segment_state's FOLD) and no scan kernel runs: one launch fewer per direction,
# which below 8k tokens, where the host sets the time (benchmarks/README.md), is what counts. Each program
# then reads at most FOLD_MAX_SEGMENTS - 1 states of [F, D] fp32 (64 KB at F = D = 128, from L2, before its
# first chunk); the scan kernel it replaces reads and writes every state once. With more segments (16k tokens
# and up at 32 heads) the scan stays: there the kernels set the time and the reads would grow with NSEG^2.
FOLD_MAX_SEGMENTS = 8


def fold_segments(n_seg: int) -> bool:
    """Whether the consumers of a plan of ``n_seg`` segments fold the per-segment sums themselves (no scan):
    1 < n_seg <= FOLD_MAX_SEGMENTS (one segment starts from nothing and needs neither)."""
    return 1 < n_seg <= FOLD_MAX_SEGMENTS


def fold_mode(n_seg: int, mode: int) -> int:
    """The FOLD argument for a kernel that reads states of an ``n_seg``-segment plan: ``mode`` (FOLD_PREFIX,
    FOLD_SUFFIX or FOLD_SUFFIX_INCLUSIVE, the sum its segment starts from) when the plan folds, else FOLD_NONE."""
    return mode if fold_segments(n_seg) else FOLD_NONE


def bounds_tensor(pairs, device) -> torch.Tensor:
    """[(lo, hi), ...] -> [NSEG, 2] int32 with hi >= lo (empty ranges allowed). Callers cache the result per
    shape (functools.lru_cache): copying from the host to a CUDA device waits for the work queued before it,
    which would serialise Python's launch overhead with the GPU's work on every call."""
    flat = [(int(lo), int(max(hi, lo))) for lo, hi in pairs]
    return torch.tensor(flat, dtype=torch.int32, device=device)


@functools.lru_cache(maxsize=8)
def zero_states(rows: int, n: int, device: torch.device) -> torch.Tensor:
    """A zero state buffer [rows, 1, n] fp32 for one-segment plans, made once per shape and device and
    shared: the kernels only read start states (an 8B stage-2 layer filled a fresh 8.4 MB one twice per
    forward+backward). Never write into it."""
    return torch.zeros(rows, 1, n, dtype=torch.float32, device=device)


def split_states(states: torch.Tensor, BF: int, BV: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A state buffer [rows, NSEG, BF*BV + BF] -> views S [rows, NSEG, BF, BV] and z [rows, NSEG, BF]. The
    kernels read both through load_segment_state (segment blocks BF*BV + BF floats apart)."""
    rows, n_seg, L = states.shape  # as_strided: one call per view (slicing then viewing took two, on the host)
    S = states.as_strided((rows, n_seg, BF, BV), (n_seg * L, L, BV, 1))
    return S, states.as_strided((rows, n_seg, BF), (n_seg * L, L, 1), states.storage_offset() + BF * BV)


def segment_states(x, w, y, bounds, *, H, GX, GY, FH, BT, BK, BF, BV, prec, lowp, den=None, dd=None,
                   inclusive=False):  # fmt: skip
    """The state each segment starts from: segment_state_kernel's per-segment sums, then one scan over them
    (prefix sums forward; suffix sums in reverse, i.e. when den, dd are given), exclusive or ``inclusive``.
    When the plan folds (:func:`fold_segments`), the per-segment sums unscanned: the consumers add them up.

    Returns views (S [B*H, NSEG, BF, BV], z [B*H, NSEG, BF]) fp32 of one buffer [B*H, NSEG, BF*BV + BF]
    (``split_states``), so that one scan launch covers both."""
    B, T = x.shape[0], x.shape[2]
    n_seg = bounds.shape[0]
    if y.stride(3) != 1:
        raise ValueError(f"y must have a contiguous last dim, got strides {y.stride()}")
    if n_seg == 1 and not inclusive:  # one segment starts from nothing: no sums to take
        return split_states(zero_states(B * H, BF * BV + BF, x.device), BF, BV)
    states = x.new_empty(B * H, n_seg, BF * BV + BF, dtype=torch.float32)
    S, z = split_states(states, BF, BV)
    reverse = den is not None
    if w is None and lowp and BF <= 128 and BV <= 128:
        BT = max(BT, _STATE_TILE)  # only the loop's step: the bounds say which tokens each segment sums
    launch(
        segment_state_kernel, (n_seg, B * H),
        x, x if w is None else w, y, *y.stride()[:3], den if reverse else S, dd if reverse else S, bounds, S, z, T,
        n_seg,
        H=H, GX=GX, GY=GY, K=x.shape[-1], V=y.shape[-1], FH=FH, BT=BT, BK=BK, BF=BF, BV=BV,
        HEDGEHOG=w is not None, REVERSE=reverse, PREC=prec, LOWP=lowp,
    )  # fmt: skip
    if not fold_segments(n_seg):
        scan_segments_(states, reverse=reverse, inclusive=inclusive)
    return S, z


@triton.jit(do_not_specialize=["NSEG"])
def segment_scan_kernel(
    x, NSEG, N: tl.constexpr, BN: tl.constexpr, BS: tl.constexpr, REVERSE: tl.constexpr, INCLUSIVE: tl.constexpr
):  # fmt: skip
    """Grid (cdiv(N, BN), rows). x [rows, NSEG, N] fp32 contiguous, scanned in place over NSEG: prefix sums
    (REVERSE False) or suffix sums (True), exclusive or inclusive. BS segments at a time: a [BS, BN] block
    is loaded whole, scanned along the segments with tl.cumsum and offset by the sum of the blocks before it
    (exclusive sums scan the block shifted by one segment), so a program waits on NSEG / BS loads, not NSEG
    (a loop of dependent load-store steps, one segment each, left the H100 idle: 0.46 ms of a 16k-token
    linear-attention forward+backward of 4.2)."""
    i_n, i_r = tl.program_id(0), tl.program_id(1)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    x += i_r.to(tl.int64) * NSEG * N
    o_b = tl.arange(0, BS)
    b_carry = tl.zeros([BN], dtype=tl.float32)
    for i0 in range(0, NSEG, BS):
        o_s = NSEG - 1 - i0 - o_b if REVERSE else i0 + o_b  # in visiting order: a suffix sum walks down
        m = ((o_s >= 0) & (o_s < NSEG))[:, None] & m_n[None, :]
        p = x + o_s[:, None] * N + o_n[None, :]
        b_x = tl.load(p, mask=m, other=0.0)  # [BS, BN]
        if INCLUSIVE:
            tl.store(p, tl.cumsum(b_x, axis=0) + b_carry[None, :], mask=m)
        else:  # the block shifted by one segment (its first row's predecessor is in the carry): no x_s - x_s
            step = -N if REVERSE else N
            b_prev = tl.load(p - step, mask=m & (o_b > 0)[:, None], other=0.0)
            b_out = tl.cumsum(b_prev, axis=0) + b_carry[None, :]
            tl.debug_barrier()  # rows are read by one thread and rewritten by another: every load first
            tl.store(p, b_out, mask=m)
        b_carry += tl.sum(b_x, 0)


def scan_segments_(t: torch.Tensor, *, reverse: bool, inclusive: bool) -> torch.Tensor:
    """In place over dim 1 of a contiguous fp32 [rows, NSEG, ...]: exclusive / inclusive prefix sums, or
    suffix sums when ``reverse`` (references: exclusive_prefix, suffix_sum). Returns t."""
    rows, n_seg = t.shape[0], t.shape[1]
    n = math.prod(t.shape[2:])  # floats per (row, segment); t[0, 0].numel() built a view: 5x the host time
    if n_seg == 1:  # nothing to add: an inclusive scan is the input, an exclusive one zero
        return t if inclusive else t.zero_()
    # [BS, BN] blocks of 4096 floats (16 KB), 32 per thread; BS fixed, so that the order of the additions,
    # hence every bit of a segment's sum, does not depend on how many segments follow it
    bs = 16
    bn = min(4096 // bs, triton.next_power_of_2(n))
    launch_jit(
        segment_scan_kernel, (triton.cdiv(n, bn), rows),
        t, n_seg, N=n, BN=bn, BS=bs, REVERSE=reverse, INCLUSIVE=inclusive, num_warps=4,
    )  # fmt: skip
    return t


def exclusive_prefix(t: torch.Tensor) -> torch.Tensor:
    """out[:, s] = sum_{s' < s} t[:, s'] over dim 1 (the state a segment starts from, forward). PyTorch
    reference of ``scan_segments_(t, reverse=False, inclusive=False)``."""
    out = torch.zeros_like(t)
    if t.shape[1] > 1:
        torch.cumsum(t[:, :-1], dim=1, out=out[:, 1:])
    return out


def suffix_sum(t: torch.Tensor, *, inclusive: bool) -> torch.Tensor:
    """out[:, s] = sum_{s' > s} (or >= s when inclusive) t[:, s'] over dim 1 (reverse states, backward).
    PyTorch reference of ``scan_segments_(t, reverse=True, inclusive=...)``."""
    rev = torch.flip(t, dims=[1])
    if inclusive:
        return torch.flip(torch.cumsum(rev, dim=1), dims=[1])
    return torch.flip(exclusive_prefix(rev), dims=[1])
