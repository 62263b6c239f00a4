"""The Hedgehog feature map as a Triton kernel pair: phi(x) written once in the input's dtype.

Math (SPEC.md "Hedgehog feature map"), per batch element, head h and token:

    phi(x) = clamp(concat(softmax(x W_h), softmax(-x W_h)), min=1e-12)        x [K], W_h [K, f], phi [2f]

Reference: ``lolcats_lab.feature_maps.hedgehog_phi`` (PyTorch, which the module runs in fp32: for bf16 inputs
it reads x, writes an fp32 copy, the projection, two softmaxes, the concatenation and the clamp, and autograd
keeps the fp32 softmax outputs for the backward). Here a program loads W_h once and walks a run of tiles of BT
tokens of one (batch, head) (see _PROGRAMS_PER_SM); per tile it takes z = x W_h [BT, f] in one dot, computes
both softmaxes in registers and writes phi in x's dtype as two contiguous halves (softmax(z), then
softmax(-z): SPEC order); autograd saves only x. The backward recomputes the softmaxes and writes dz = d(x
W_h) [B, H, T, f] in x's dtype; the projection's backward then runs as two GEMMs (:func:`project_back`; the
ops with both maps take ``hedgehog_project``'s one launch for q's and k's instead).
Given x's gradient so far (``map_backward(dx=...)``), the backward instead adds dz W_h^T into it itself.

Unlike the fused attention kernels, which keep the two halves interleaved (pos_0, neg_0, ...) because only
dot products over F are taken there, this kernel's output is read by others, so it is written in SPEC
order, and from contiguous tiles: an earlier version wrote the interleaved tile through a column
permutation, and those scattered 2-byte stores made its forward take 0.32 ms per call on an H100 at
[4, 32, 1024, 128] (more than its backward; `bench_8b.py` stage-2 profile, 2026-11-23).

Precision: the projection dot takes fp32 operands (x is exact in TF32 when it is bf16/fp16; W is rounded to
TF32 on the GPU, fp32 inputs use three-TF32 dots: _utils.dot_precision); softmaxes and sums in fp32.
Shapes: x [B, H, T, K], w [H, K, f] -> phi [B, H, T, 2f]; K <= 128 and f <= 128.
"""

from __future__ import annotations

import functools
import warnings

import torch
import triton
import triton.language as tl

from ._launch import launch_jit
from ._tl_helpers import PHI_MIN, load_rows, store_rows
from ._utils import block, check_device, check_projection, check_tensor, dot_precision, tile_runs

# Tokens per tile, forward and backward. Compiled for sm_90 (benchmarks/kernel_resources.py method, bf16,
# K = 128, f = 64, 8 warps): 156 / 248 registers (forward / backward) with 128-token tiles, 106 / 147 with 64,
# no spills; 4 warps spill at 128 tokens, and 256-token tiles spill at 8 warps too. With one tile per program
# (sessions 3-5) the forward took 2.74 ms with 128-token tiles against 3.46 with 64 over the 64 calls of an
# 8B stage-2 step on an H100 ([4, 32, 1024, 128], results/*-8b-lora-2026-11-24-map128.json): each program
# loaded W_h (32 KB in fp32) for one tile. Now each program loads W_h once and walks several tiles, so the
# loads of one tile can overlap the work of the previous one (num_stages). Swept at that shape on an H200
# (benchmarks/sweep_hybrid_plan.py --map, results/NVIDIA_H200-2026-12-01-sweep-map-stage2.json; tile x warps
# x stages x programs per SM, medians of do_bench): forward best at 128-token tiles, 8 warps, 2 stages, one
# program per SM (34.8 us per call; one tile per program as before, with Triton's default 3 stages: 42.8 us),
# backward at 64-token tiles, 8 warps, 3 stages, one program per SM (48.8 us; as before: 70.3 us). The
# backward that also adds dz W^T into x's gradient (ADD_DX, stage 2) reads and writes that [BT, K] tile too,
# and swept on its own (...-sweep-map-add-dx.json) it is fastest at 64-token tiles with 4 warps and 2 stages
# (61.2 us; 88 us at the write-dz settings: 5.65 ms over an 8B stage-2 step, ...-8b-lora-2026-12-01-add-dx.json).
# Session 11 swept the same grid at [1, 32, 16384, 128] with dz written (the staged linear op's backward;
# ...-sweep-map-16k-session11.json): one program per SM left the forward at 0.167 ms and the backward at
# 0.246; four per SM at 3 stages (about 512 programs at both shapes) take 0.108 / 0.162 there, and at the
# stage-2 shape 37.0 against 34.8 us (forward) and 52.5 against 48.8 (backward, timed adding dx). The
# add-dx backward (stage 2's only map backward) keeps one program per SM.
_BT_FWD, _BT_BWD = 128, 64
_NUM_WARPS = 8
_STAGES_FWD, _STAGES_BWD = 3, 3
_WARPS_ADD_DX, _STAGES_ADD_DX = 4, 2
_PROGRAMS_PER_SM = 4  # forward and the write-dz backward
_PROGRAMS_PER_SM_ADD_DX = 1
_INTERPRETER_SMS = 4  # the CPU interpreter has no multiprocessors; any small count exercises the tiling


@triton.jit
def _softmax(b_z, m_f):
    """Softmax over the valid features (m_f [BF]) of each row of b_z [BT, BF]; 0 on padded features."""
    b_zm = tl.where(m_f[None, :], b_z, float("-inf"))
    b_e = tl.exp(b_zm - tl.max(b_zm, 1)[:, None])
    return b_e / tl.sum(b_e, 1)[:, None]


@triton.jit
def _program_setup(w, T, TPP, H: tl.constexpr, GX: tl.constexpr, K: tl.constexpr, FH: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr):  # fmt: skip
    """Grid (cdiv(n_tiles, TPP), B*H): (this program's (batch, query head) and (batch, x head) in int64, its
    projection W_h [BK, BF] fp32 (zero-padded), the feature mask [BF], and its tiles [t_lo, t_hi) of BT
    tokens). x has H / GX heads: query head h reads x head h // GX (grouped-query keys, read in place)."""
    i_p, i_bh = tl.program_id(0), tl.program_id(1)
    o_k, o_f = tl.arange(0, BK), tl.arange(0, BF)
    m_f = o_f < FH
    p_w = w + (i_bh % H).to(tl.int64) * K * FH + o_k[:, None] * FH + o_f[None, :]
    b_w = tl.load(p_w, mask=(o_k < K)[:, None] & m_f[None, :], other=0.0).to(tl.float32)  # [BK, BF]
    t_lo = i_p * TPP
    i_bx = (i_bh // H) * (H // GX) + (i_bh % H) // GX
    return i_bh.to(tl.int64), i_bx.to(tl.int64), b_w, m_f, t_lo, tl.minimum(t_lo + TPP, tl.cdiv(T, BT))


@triton.jit
def _tile_softmaxes(x, b_w, m_f, i_t, T, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """Tile i_t of one head's x [T, K]: (token positions o_t [BT], their mask, softmax(z) and softmax(-z)
    [BT, BF] unclamped), z = x W_h."""
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < T
    b_x = load_rows(x, o_t, m_t, K, BK)  # [BT, BK] fp32
    b_z = tl.dot(b_x, b_w, input_precision=PREC)  # [BT, BF] = x W_h
    return o_t, m_t, _softmax(b_z, m_f), _softmax(-b_z, m_f)


@triton.jit(do_not_specialize=["T", "TPP"])
def hedgehog_map_fwd_kernel(
    x, w, phi, x2, w2, phi2, T, TPP, H: tl.constexpr, GX: tl.constexpr, GX2: tl.constexpr, K: tl.constexpr,
    FH: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(n_tiles, TPP), B*H, 1 or 2): phi of TPP tiles of BT tokens of one (batch, query head), two
    halves; programs with program_id(2) = 1 map the second input (x2 with H / GX2 heads, w2, phi2: the pair of
    :func:`map_forward_pair`, one launch for q's and k's maps)."""
    if tl.program_id(2) == 0:
        _map_fwd_tiles(x, w, phi, T, TPP, H, GX, K, FH, BT, BK, BF, PREC)
    else:
        _map_fwd_tiles(x2, w2, phi2, T, TPP, H, GX2, K, FH, BT, BK, BF, PREC)


@triton.jit
def _map_fwd_tiles(x, w, phi, T, TPP, H: tl.constexpr, GX: tl.constexpr, K: tl.constexpr, FH: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """One program's tiles of hedgehog_map_fwd_kernel for one map."""
    i_bh64, i_bx64, b_w, m_f, t_lo, t_hi = _program_setup(w, T, TPP, H, GX, K, FH, BT, BK, BF)
    x += i_bx64 * T * K
    phi += i_bh64 * T * 2 * FH
    for i_t in range(t_lo, t_hi):
        o_t, m_t, b_p, b_n = _tile_softmaxes(x, b_w, m_f, i_t, T, K, BT, BK, PREC)
        p_phi = phi + o_t[:, None] * 2 * FH + tl.arange(0, BF)[None, :]
        m = m_t[:, None] & m_f[None, :]
        tl.store(p_phi, tl.maximum(b_p, PHI_MIN).to(phi.dtype.element_ty), mask=m)
        tl.store(p_phi + FH, tl.maximum(b_n, PHI_MIN).to(phi.dtype.element_ty), mask=m)


@triton.jit
def _softmax_back(b_g, b_p):
    """Back through clamp(softmax, 1e-12) for one half: the clamp passes gradient where p >= 1e-12, and
    softmax's backward is p (g - sum(g p)) per row."""
    b_g = tl.where(b_p >= PHI_MIN, b_g, 0.0)
    return b_p * (b_g - tl.sum(b_g * b_p, 1)[:, None])


@triton.jit(do_not_specialize=["T", "TPP"])
def hedgehog_map_bwd_kernel(
    x, w, dphi, dz, dx, T, TPP, H: tl.constexpr, GX: tl.constexpr, K: tl.constexpr, FH: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr, PREC: tl.constexpr, WRITE_DZ: tl.constexpr,
    ADD_DX: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(n_tiles, TPP), B*H): dz = d(x W_h) [BT, f] per tile in fp32 (softmax(-z) enters with a
    minus sign); WRITE_DZ stores it to dz [B, H, T, f] (in dz's dtype, for the weight's gradient), ADD_DX
    adds dz W_h^T into dx [B, H, T, K] in place (x's gradient, already holding the attention's part; GX = 1:
    with grouped x heads several programs would add into one row)."""
    i_bh64, i_bx64, b_w, m_f, t_lo, t_hi = _program_setup(w, T, TPP, H, GX, K, FH, BT, BK, BF)
    x += i_bx64 * T * K
    dphi += i_bh64 * T * 2 * FH
    dz += i_bh64 * T * FH
    dx += i_bx64 * T * K
    for i_t in range(t_lo, t_hi):
        o_t, m_t, b_p, b_n = _tile_softmaxes(x, b_w, m_f, i_t, T, K, BT, BK, PREC)
        p_dphi = dphi + o_t[:, None] * 2 * FH + tl.arange(0, BF)[None, :]
        m = m_t[:, None] & m_f[None, :]
        b_gp = tl.load(p_dphi, mask=m, other=0.0).to(tl.float32)
        b_gn = tl.load(p_dphi + FH, mask=m, other=0.0).to(tl.float32)
        b_dz = _softmax_back(b_gp, b_p) - _softmax_back(b_gn, b_n)  # [BT, BF]
        if WRITE_DZ:
            store_rows(dz, b_dz, o_t, m_t, FH, BF)
        if ADD_DX:
            b_dx = load_rows(dx, o_t, m_t, K, BK) + tl.dot(b_dz, tl.trans(b_w), input_precision=PREC)  # [BT, BK]
            store_rows(dx, b_dx, o_t, m_t, K, BK)


def _launch_args(x, w, bt, stages, warps, programs_per_sm=None):
    """(grid, TPP, compile-time and launch options): about _PROGRAMS_PER_SM programs per multiprocessor, each
    walking TPP consecutive tiles of one (batch, query head); at least one tile each. x [B, XH, T, K] has
    XH = H / GX heads for w's H. The options dict is shared between calls with the same shapes: read it,
    never modify it."""
    per_sm = _PROGRAMS_PER_SM if programs_per_sm is None else programs_per_sm
    return _launch_plan(tuple(x.shape), tuple(w.shape), x.dtype, x.device, bt, stages, warps, per_sm)


@functools.lru_cache(maxsize=256)  # host time: 24 us a call uncached on the CPU machine, 4 launches per layer
def _launch_plan(x_shape, w_shape, dtype, device, bt, stages, warps, programs_per_sm):
    B, XH, T, K = x_shape
    H, FH = w_shape[0], w_shape[-1]
    grid, tpp = tile_runs(T, bt, B * H, device, programs_per_sm, _INTERPRETER_SMS)
    return grid, tpp, dict(H=H, GX=H // XH, K=K, FH=FH, BT=bt, BK=block(K), BF=block(FH), PREC=dot_precision(dtype),
                           num_warps=warps, num_stages=stages)  # fmt: skip


_FP32_OUT_GEMMS = True  # half-precision GEMMs with an fp32 result on CUDA (torch.bmm out_dtype); off after a refusal


def _bmm_as(a, b, dtype):
    """torch.bmm(a, b) in ``dtype``: on CUDA, half-precision inputs straight into an fp32 result (cuBLAS's fp32
    output, ``out_dtype``: no rounding to half precision and no cast kernel after it); elsewhere, or where
    this torch refuses ``out_dtype`` (turned off for the process, with a warning), a GEMM and then a cast."""
    global _FP32_OUT_GEMMS
    if _FP32_OUT_GEMMS and dtype == torch.float32 and a.is_cuda and a.dtype in (torch.bfloat16, torch.float16):
        try:
            return torch.bmm(a, b, out_dtype=torch.float32)
        except torch.OutOfMemoryError:
            raise
        except (TypeError, RuntimeError, NotImplementedError) as err:
            _FP32_OUT_GEMMS = False
            warnings.warn(f"torch.bmm(out_dtype=torch.float32) failed ({err}); the Hedgehog map's weight "
                          "gradient takes a half-precision GEMM and a cast from now on", stacklevel=2)  # fmt: skip
    return torch.bmm(a, b).to(dtype)


def project_back(dz, x, w, need_dx: bool = True, need_dw: bool = True):
    """The backward of z = x W_h as two GEMMs over the whole sequence (cuBLAS on the GPU).

    dz [B, H, T, f] (any float dtype; cast to x's for the GEMMs), x [B, XH, T, K] (XH dividing H: grouped-
    query keys shared by G = H / XH query heads), w [H, K, f]. Returns dx = sum over each head group of
    dz w^T [B, XH, T, K] in x's dtype and dw = sum_b x^T dz [H, K, f] in w's dtype; None for what is not
    needed. Batched matmuls with the batch and the head group folded into the GEMM dims: the einsum form
    of the same contractions was the largest host cost of the fused Hedgehog forward+backward in the H100
    host profile (about 340 of 2,230 us per call at 1k tokens, profile_kernels.py --host), and takes
    1.2-1.5x this form's host time on tiny CPU tensors."""
    B, H, T, f = dz.shape
    XH, K = x.shape[1], x.shape[-1]
    G = H // XH
    # the GEMMs' dz: batch and tokens as rows, each x head's G query heads side by side [XH, B T, G f]; a view
    # when B == G == 1, else one copy that both GEMMs read
    dz_f = dz.to(x.dtype).view(B, XH, G, T, f).permute(1, 0, 3, 2, 4).reshape(XH, B * T, G * f)
    dw = None
    if need_dw:  # [XH, K, B T] @ [XH, B T, G f]: the sum over b and t in one GEMM per key head
        x_f = x.transpose(0, 1).reshape(XH, B * T, K)  # a view when B == 1
        dw = _bmm_as(x_f.transpose(1, 2), dz_f, w.dtype)  # [XH, K, G f]: [H, K, f] when G == 1
        if G > 1:
            dw = dw.view(XH, K, G, f).transpose(1, 2).reshape(H, K, f)
    dx = None
    if need_dx:  # [XH, B T, G f] @ [XH, G f, K]: summed over the G heads in the GEMM
        w_f = w.to(x.dtype).transpose(1, 2).reshape(XH, G * f, K)  # w_f[i, g f + j] = w[i G + g, :, j]
        dx = torch.bmm(dz_f, w_f).view(XH, B, T, K).transpose(0, 1).contiguous()  # [B, XH, T, K]
    return dx, dw


def map_forward(x, w):
    """Launch the forward: phi [B, H, T, 2f] in x's dtype (x contiguous [B, XH, T, K] with XH dividing H,
    w [H, K, f]: query head h maps x head h // (H / XH), as after HF's repeat_kv, without the repeat)."""
    grid, tpp, meta = _launch_args(x, w, _BT_FWD, _STAGES_FWD, _NUM_WARPS)
    phi = x.new_empty(x.shape[0], w.shape[0], x.shape[2], 2 * w.shape[-1])  # [B, H, T, 2f] in x's dtype
    launch_jit(hedgehog_map_fwd_kernel, grid, x, w, phi, x, w, phi, x.shape[2], tpp, GX2=meta["GX"], **meta)
    return phi


def map_forward_pair(x, w, x2, w2):
    """(map_forward(x, w), map_forward(x2, w2)) in one launch: q's and k's maps, which share the batch, query
    heads, length, head dim, feature count and dtype (x2 may have fewer heads: grouped-query keys). A launch
    is about 15 us of host time on the H100 machine (session 19's host breakdown), which an eager 4k call
    waits on."""
    if x2.shape[0] != x.shape[0] or x2.shape[2:] != x.shape[2:] or w2.shape != w.shape or x2.dtype != x.dtype:
        raise ValueError(f"map_forward_pair needs maps of one shape: x {tuple(x.shape)} {x.dtype}, w {tuple(w.shape)}; "
                         f"x2 {tuple(x2.shape)} {x2.dtype}, w2 {tuple(w2.shape)}")  # fmt: skip
    (g0, g1), tpp, meta = _launch_args(x, w, _BT_FWD, _STAGES_FWD, _NUM_WARPS)
    phi = x.new_empty(x.shape[0], w.shape[0], x.shape[2], 2 * w.shape[-1])  # [B, H, T, 2f] in x's dtype
    phi2 = torch.empty_like(phi)
    launch_jit(hedgehog_map_fwd_kernel, (g0, g1, 2), x, w, phi, x2, w2, phi2, x.shape[2], tpp,
               GX2=w2.shape[0] // x2.shape[1], **meta)  # fmt: skip
    return phi, phi2


def map_backward(x, w, dphi, dx=None, need_dz: bool = True):
    """Launch the backward through the softmaxes (x [B, XH, T, K], w [H, K, f], dphi [B, H, T, 2f], as
    :func:`map_forward`). Returns dz = d(x W_h) [B, H, T, f] per query head in x's dtype when ``need_dz``
    (the weight's gradient takes it; x's gradient from it via :func:`project_back`, which sums the query
    heads of each x head), else None. With ``dx`` ([B, H, T, K] contiguous, x's dtype: e.g. the attention's
    gradient of the same x; XH = H only), the kernel also adds dz W_h^T into it in place, from dz still in
    registers (fp32): no dz round trip through memory and no separate GEMM or add for x's gradient."""
    if dx is not None and (dx.shape != x.shape or dx.dtype != x.dtype or not dx.is_contiguous()):
        raise ValueError(f"dx must be contiguous with x's shape and dtype {tuple(x.shape)}, {x.dtype}; got "
                         f"{tuple(dx.shape)}, {dx.dtype}")  # fmt: skip
    if dx is not None and x.shape[1] != w.shape[0]:
        raise ValueError(f"adding into dx needs one x head per map head, got {x.shape[1]} x heads for "
                         f"{w.shape[0]} maps; take dz (need_dz=True) and project_back instead")  # fmt: skip
    add_dx = dx is not None
    stages, warps, per_sm = ((_STAGES_ADD_DX, _WARPS_ADD_DX, _PROGRAMS_PER_SM_ADD_DX) if add_dx
                             else (_STAGES_BWD, _NUM_WARPS, _PROGRAMS_PER_SM))  # fmt: skip
    grid, tpp, meta = _launch_args(x, w, _BT_BWD, stages, warps, per_sm)
    dz = x.new_empty(x.shape[0], w.shape[0], x.shape[2], w.shape[-1]) if need_dz else x  # [B, H, T, f]; x: never written
    launch_jit(
        hedgehog_map_bwd_kernel, grid, x, w, dphi.contiguous(), dz, dx if add_dx else x, x.shape[2], tpp,
        WRITE_DZ=need_dz, ADD_DX=add_dx, **meta,
    )  # fmt: skip
    return dz if need_dz else None


class HedgehogMapFunction(torch.autograd.Function):
    """phi = hedgehog(x, w); saves x and w only (the backward recomputes the softmaxes)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return map_forward(x, w)

    @staticmethod
    def backward(ctx, dphi):
        x, w = ctx.saved_tensors
        dz = map_backward(x, w, dphi)
        # stage 1 trains only the maps (x from frozen projections needs no gradient); stage 2 only LoRA
        return project_back(dz, x, w, need_dx=ctx.needs_input_grad[0], need_dw=ctx.needs_input_grad[1])


def hedgehog_map_fits(head_dim: int, feature_dim: int) -> bool:
    """Whether the kernel takes this map: K <= 128 and f <= 128 (the [K, 2f] fp32 projection tile)."""
    return block(head_dim) <= 128 and block(feature_dim) <= 128


def hedgehog_map(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Hedgehog feature map (Triton): x [B, H, T, K], weight [H, K, f] -> phi [B, H, T, 2f] in x's dtype,
    differentiable w.r.t. both. Equals ``lolcats_lab.feature_maps.hedgehog_phi`` (SPEC.md)."""
    check_tensor("x", x, 4, "[B, H, T, K]")
    check_device("x", x)
    check_projection("weight", weight, "x", x)
    if not hedgehog_map_fits(x.shape[3], weight.shape[-1]):
        raise ValueError(
            f"the Triton Hedgehog map takes head_dim <= 128 and feature_dim <= 128, got {x.shape[3]} and "
            f"{weight.shape[-1]}; use lolcats_lab.feature_maps.hedgehog_phi"
        )
    return HedgehogMapFunction.apply(x.contiguous(), weight.contiguous())
