"""The backward of the Hedgehog maps' projections z = x W_h: one Triton launch for q's and k's maps.

Math, per batch element b, query head h (x head h // G: grouped-query keys read in place) and token t:

    dx[b, i, t] = sum over the G query heads h of x head i of  dz[b, h, t] W_h^T        [K]
    dW_h        = sum over b, t of  x[b, h // G, t]^T dz[b, h, t]                       [K, f]

Reference: ``hedgehog_map.project_back`` (the same contractions as two cuBLAS GEMMs per map), and beside it
the einsum in ``tests/kernels/test_hedgehog_project_kernel.py``.

Why a kernel: at 4k tokens an eager forward+backward of the staged Hedgehog op waits on the host, and py-spy
on the H100 machine put 24% of its busy host time in ``project_back``'s four GEMM calls (session 19,
benchmarks/README.md): about twice a kept Triton launch each, with cuBLASLt's heuristics looked up per call for
the fp32-output GEMM, and a dozen view / permute / cast operators around them. Here both maps are one launch
and both maps' weight gradients one reduction.

Layout: one launch for both maps (grid z), each program walking TPP consecutive tiles of BT tokens of one
(batch, query head) of one map; it loads W_h once and accumulates its share of dW_h [K, f] in fp32 registers;
the shares go to a partial buffer [P B, H, K, f] fp32 per map (P programs per head), summed over that dim by
PyTorch (deterministic, unlike atomics). The program of the first query head of each x head (g = 0) also
writes dx for its tiles, adding the other G - 1 heads' dz W^T (their W from L2). Dot operands in x's half
type for fp16/bf16 inputs (fp32 accumulation, as cuBLAS's bf16 GEMMs), three-TF32 for fp32
(_utils.dot_precision).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._launch import launch_jit
from ._tl_helpers import dot, load_rows, store_rows
from ._utils import block, dot_precision, is_interpreter, tile_runs
from .hedgehog_map import project_back

# On an H100 (session 19, bf16, batch 1, 32 heads, K = 128, f = 64; benchmarks/README.md): the Hedgehog op's host
# time per eager forward+backward at 4k 0.735 -> 0.581 ms, its device time replayed from a CUDA graph 1.058 ->
# 1.051 ms at 4k and 4.062 -> 4.045 at 16k; both maps' projection backward alone 0.100 -> 0.084 ms at 4k and
# 0.326 -> 0.301 at 16k against the four GEMMs (results/NVIDIA_H100_80GB_HBM3-2026-12-07-project-back-*-session19
# .json, ...-sweep-project-back-session19.json; the op's A/B ran at 8 warps, the 4 below come from the sweep after
# it). LOLCATS_PROJECT_BACK_KERNEL=0 in the environment when this module is imported keeps the GEMMs.
PROJECT_BACK_KERNEL = os.environ.get("LOLCATS_PROJECT_BACK_KERNEL", "1") == "1"
# Swept there (tile x warps x programs per SM, 2 stages): 64-token tiles, 4 warps, 2 programs per SM are the
# fastest at 4k (0.084 ms; 8 warps 0.086, 32- / 128-token tiles 0.105 / 0.088) and within 10% of the best at 16k
# (0.301 against 0.273 with 4 programs per SM, which take 0.097 at 4k).
_BT = 64
_NUM_WARPS, _STAGES = 4, 2
# Grouped x heads (G > 1: the program of a group's first head also adds the other heads' dz W^T): 4 warps, the
# build whose results the H100 checked (K = 64 / 128, G = 2 / 3, session 19). Compiled for sm_90 on the CPU
# (benchmarks/kernel_resources.py --only "project back", Triton 3.9), K = 128, f = 64, G = 4 spills 1,456 B per
# thread at 4 warps against 288 at 8 (G = 1: 8 against 0 B; results/kernel-resources-sm90-2026-12-07-project-
# back.json): 8 warps may be the faster build for grouped heads, once checked and timed on a GPU.
_NUM_WARPS_GROUPED = 4
_PROGRAMS_PER_SM = 2
# Grouped x heads (G > 1) need head dims of at least 64 (BK >= 64): on the H100 in session 19 the compiled kernel
# left one query head's dz W^T out of dx at K = 16 and 32 (relative error 0.57-0.74 against the einsum, G = 2, 3;
# bf16 and fp16), while K = 64 and 128 matched it (2.4e-3) and every K was right with G = 1 and in the
# interpreter. Not understood; such maps take the GEMMs (project_back_any) and project_back_maps refuses them.
_GROUPED_MIN_BK = 64


@triton.jit(do_not_specialize=["T", "TPP", "PART_OFFSET2"])
def project_back_kernel(
    x, w, dz, dx, x2, w2, dz2, dx2, dw_part, T, TPP, PART_OFFSET2, H: tl.constexpr, G: tl.constexpr,
    G2: tl.constexpr, K: tl.constexpr, FH: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr,
    PREC: tl.constexpr, LOWP: tl.constexpr, NEED_DX: tl.constexpr, NEED_DW: tl.constexpr, NEED_DX2: tl.constexpr,
    NEED_DW2: tl.constexpr,
):  # fmt: skip
    """Grid (P, B*H, 1 or 2): program (p, b H + h, m) takes tiles [p TPP, (p + 1) TPP) of query head h of batch
    b of map m: (x, w, dz, dx, G) for m = 0, (x2, w2, dz2, dx2, G2) for m = 1, its dW partials at element 0 or
    PART_OFFSET2 of dw_part."""
    if tl.program_id(2) == 0:
        _project_tiles(x, w, dz, dx, dw_part, T, TPP, H, G, K, FH, BT, BK, BF, PREC, LOWP, NEED_DX, NEED_DW)
    else:
        _project_tiles(x2, w2, dz2, dx2, dw_part + PART_OFFSET2, T, TPP, H, G2, K, FH, BT, BK, BF, PREC, LOWP,
                       NEED_DX2, NEED_DW2)  # fmt: skip


@triton.jit
def _project_tiles(
    x, w, dz, dx, dw_part, T, TPP, H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, FH: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, PREC: tl.constexpr, LOWP: tl.constexpr,
    NEED_DX: tl.constexpr, NEED_DW: tl.constexpr,
):  # fmt: skip
    """One program's tiles for one map: x [B, H / G, T, K], w [H, K, FH], dz [B, H, T, FH] contiguous; dx like
    x; dw_part [P B H, K, FH] fp32 (this map's block)."""
    DT = x.dtype.element_ty if LOWP else tl.float32
    i_p, i_bh = tl.program_id(0), tl.program_id(1)
    h = i_bh % H
    i_bx = ((i_bh // H) * (H // G) + h // G).to(tl.int64)
    o_k, o_f = tl.arange(0, BK), tl.arange(0, BF)
    m_w = (o_k < K)[:, None] & (o_f < FH)[None, :]
    p_w = w + h.to(tl.int64) * K * FH + o_k[:, None] * FH + o_f[None, :]
    b_w = tl.load(p_w, mask=m_w, other=0.0).to(tl.float32)  # [BK, BF]
    x += i_bx * T * K
    dx += i_bx * T * K
    dz += i_bh.to(tl.int64) * T * FH
    t_lo = i_p * TPP
    t_hi = tl.minimum(t_lo + TPP, tl.cdiv(T, BT))
    b_dw = tl.zeros([BK, BF], dtype=tl.float32)
    for i_t in range(t_lo, t_hi):
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < T
        b_dz = load_rows(dz, o_t, m_t, FH, BF)  # [BT, BF]
        if NEED_DW:
            b_x = load_rows(x, o_t, m_t, K, BK)  # [BT, BK]
            b_dw += dot(tl.trans(b_x), b_dz, DT, PREC)  # [BK, BF]
        if NEED_DX:
            if h % G == 0:  # this x head's first query head writes dx, summing the group's heads
                b_dx = dot(b_dz, tl.trans(b_w), DT, PREC)  # [BT, BK]
                for j in tl.static_range(1, G):
                    b_dzj = load_rows(dz + j * T * FH, o_t, m_t, FH, BF)
                    b_wj = tl.load(p_w + j * K * FH, mask=m_w, other=0.0).to(tl.float32)
                    b_dx += dot(b_dzj, tl.trans(b_wj), DT, PREC)
                store_rows(dx, b_dx, o_t, m_t, K, BK)
    if NEED_DW:
        p_dw = dw_part + (i_p * tl.num_programs(1) + i_bh).to(tl.int64) * K * FH
        tl.store(p_dw + o_k[:, None] * FH + o_f[None, :], b_dw, mask=m_w)


def _grouped_too_narrow(dz, x) -> bool:
    """Grouped x heads with a head dim the kernel does not take (see _GROUPED_MIN_BK)."""
    return dz.shape[1] != x.shape[1] and block(x.shape[-1]) < _GROUPED_MIN_BK


def kernel_takes(dz, x, w) -> bool:
    """Whether project_back_any launches the kernel for this map: PROJECT_BACK_KERNEL, a GPU tensor (or the
    interpreter), K and f up to 128 (the [K, f] fp32 accumulator), K >= 64 for grouped x heads, contiguous
    inputs of one float dtype for x and dz."""
    return (PROJECT_BACK_KERNEL and (x.is_cuda or is_interpreter()) and block(x.shape[-1]) <= 128
            and block(w.shape[-1]) <= 128 and not _grouped_too_narrow(dz, x) and dz.dtype == x.dtype
            and x.is_contiguous() and dz.is_contiguous() and w.is_contiguous())  # fmt: skip


def project_back_maps(maps):
    """dx and dW of one or two maps' projections, ``[(dz, x, w, need_dx, need_dw), ...]`` with dz [B, H, T, f],
    x [B, XH, T, K] (XH dividing H), w [H, K, f], both of one shape but for XH (the staged op's q and k maps;
    grouped-query keys have fewer heads): one launch, the weight gradients of both maps from one partial
    buffer and one sum. Returns ``[(dx or None, dw or None), ...]``: dx in x's dtype, dw in w's dtype."""
    if not 1 <= len(maps) <= 2:
        raise ValueError(f"project_back_maps takes one or two maps, got {len(maps)}")
    for dz, x, *_ in maps:
        if _grouped_too_narrow(dz, x):
            raise ValueError(f"grouped x heads ({x.shape[1]} for {dz.shape[1]} maps) need a head dim of at least "
                             f"{_GROUPED_MIN_BK - 31} for this kernel, got {x.shape[-1]}; use project_back_any, "
                             "which takes hedgehog_map.project_back's GEMMs there")  # fmt: skip
    dxs = [x.new_empty(x.shape) if need_dx else None for _, x, _, need_dx, _ in maps]
    # the kernel's two map slots; a lone map fills both, and the grid's z extent of 1 launches only the first
    (dz, x, w, need_dx, need_dw), (dz2, x2, w2, need_dx2, need_dw2) = (maps * 2)[:2]
    dx, dx2 = (dxs * 2)[:2]
    B, H, T, f = dz.shape
    K = x.shape[-1]
    grid, tpp = tile_runs(T, _BT, B * H, x.device, _PROGRAMS_PER_SM)
    n_dw = sum(1 for m in maps if m[4])
    part = x.new_empty(n_dw, grid[0] * B, H, K, f, dtype=torch.float32) if n_dw else x  # [P B, H, K, f] per map
    G, G2 = H // x.shape[1], H // x2.shape[1]
    launch_jit(
        project_back_kernel, (*grid, len(maps)), x, w, dz, dx if need_dx else x, x2, w2, dz2,
        dx2 if need_dx2 else x2, part, T, tpp, grid[0] * B * H * K * f if need_dw else 0, H=H, G=G, G2=G2, K=K,
        FH=f, BT=_BT, BK=block(K), BF=block(f), PREC=dot_precision(x.dtype), LOWP=x.dtype != torch.float32,
        NEED_DX=need_dx, NEED_DW=need_dw, NEED_DX2=need_dx2, NEED_DW2=need_dw2,
        num_warps=_NUM_WARPS if G == G2 == 1 else _NUM_WARPS_GROUPED, num_stages=_STAGES,
    )  # fmt: skip
    dws = iter(part.sum(1).unbind() if n_dw else ())  # each [H, K, f] fp32 (one operator for the views)
    return [(dx_m, next(dws).to(w_m.dtype) if need_w else None) for (_, _, w_m, _, need_w), dx_m in zip(maps, dxs)]


def project_back_any(maps, *, paired: bool = True):
    """``[(dz, x, w, need_dx, need_dw), ...]`` -> ``[(dx or None, dw or None), ...]`` as :func:`project_back_maps`
    where the kernel takes every map that needs something (:func:`kernel_takes`; one dz shape and head dim),
    else map by map: the kernel for each map it takes, ``hedgehog_map.project_back``'s GEMMs for the others. A
    map that needs nothing is not read (its dz may be None).

    ``paired=False`` always goes map by map and sets each entry of ``maps`` to None once its map is done, so
    a caller that keeps no other reference to a dz frees it before the next map's dx is allocated: one dz
    [B, H, T, f] less at the peak than a paired launch, which needs both (the fused op, whose point is
    memory: 918 MiB at 64k with this order in session 18's H100 table, 1,174 with both dz held in session 20,
    results/NVIDIA_H100_80GB_HBM3-2026-12-07-peak-fused-0-session20.json)."""
    live = [i for i, m in enumerate(maps) if m[3] or m[4]]
    one_shape = len({(maps[i][0].shape, maps[i][1].shape[-1]) for i in live}) == 1
    if paired and live and one_shape and all(kernel_takes(*maps[i][:3]) for i in live):
        got = iter(project_back_maps([maps[i] for i in live]))
        return [next(got) if i in live else (None, None) for i in range(len(maps))]
    out = [(None, None)] * len(maps)
    for i in live:
        dz, x, w, need_dx, need_dw = maps[i]
        if not paired:
            maps[i] = None  # the caller's list no longer holds this dz
        if kernel_takes(dz, x, w):
            out[i] = project_back_maps([(dz, x, w, need_dx, need_dw)])[0]
        else:
            out[i] = project_back(dz, x, w, need_dx=need_dx, need_dw=need_dw)
        del dz  # freed here unless the caller holds it
    return out
