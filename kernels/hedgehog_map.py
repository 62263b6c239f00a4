"""The Hedgehog feature map as a Triton kernel pair: phi(x) written once in the input's dtype.

Math (SPEC.md "Hedgehog feature map"), per batch element, head h and token:

    phi(x) = clamp(concat(softmax(x W_h), softmax(-x W_h)), min=1e-12)        x [K], W_h [K, f], phi [2f]

Reference: ``lolcats_lab.feature_maps.hedgehog_phi`` (PyTorch, which the module runs in fp32: for bf16
inputs it reads x, writes an fp32 copy, the projection, two softmaxes, the concatenation and the clamp,
and autograd keeps the fp32 softmax outputs for the backward). Here one program per (batch, head, tile of
BT tokens) loads x and W_h, takes z = x W_h [BT, f] in one dot, computes both softmaxes in registers and
writes phi in x's dtype as two contiguous halves (softmax(z), then softmax(-z): SPEC order); autograd
saves only x. The backward recomputes the softmaxes and writes dz = d(x W_h) [B, H, T, f] in fp32; the
projection's backward then runs as two GEMMs (:func:`project_back`).

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

import torch
import triton
import triton.language as tl

from ._tl_helpers import PHI_MIN, load_rows, store_rows
from ._utils import block, check_device, check_projection, check_tensor, dot_precision

# Tokens per program, forward and backward. Each program also loads W_h (32 KB in fp32), so longer tiles read
# it less often: on an H100 (8B-shaped stage 2, 64 calls on [4, 32, 1024, 128], results/*-8b-lora-2026-11-24-
# map128.json) the forward took 2.74 ms with 128-token tiles against 3.46 with 64; the backward 4.71 against
# 4.58-4.67, so it keeps 64. Compiled for sm_90 (benchmarks/kernel_resources.py method, bf16, K = 128, f = 64,
# 8 warps): 156 / 248 registers (forward / backward) with 128-token tiles, 106 / 147 with 64, no spills; 4
# warps spill at 128 tokens, and 256-token tiles spill at 8 warps too.
_BT_FWD, _BT_BWD = 128, 64
_NUM_WARPS = 8


@triton.jit
def _softmax(b_z, m_f):
    """Softmax over the valid features (m_f [BF]) of each row of b_z [BT, BF]; 0 on padded features."""
    b_zm = tl.where(m_f[None, :], b_z, float("-inf"))
    b_e = tl.exp(b_zm - tl.max(b_zm, 1)[:, None])
    return b_e / tl.sum(b_e, 1)[:, None]


@triton.jit
def _tile_softmaxes(x, w, T, H: tl.constexpr, K: tl.constexpr, FH: tl.constexpr, BT: tl.constexpr,
                    BK: tl.constexpr, BF: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """This program's tile, grid (cdiv(T, BT), B*H): (row offset of its (batch, head) in int64, token
    positions o_t [BT], their mask, softmax(z) and softmax(-z) [BT, BF] unclamped, feature mask [BF])."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh64 = i_bh.to(tl.int64)
    o_k, o_f = tl.arange(0, BK), tl.arange(0, BF)
    m_f = o_f < FH
    p_w = w + (i_bh % H).to(tl.int64) * K * FH + o_k[:, None] * FH + o_f[None, :]
    b_w = tl.load(p_w, mask=(o_k < K)[:, None] & m_f[None, :], other=0.0).to(tl.float32)  # [BK, BF]
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < T
    b_x = load_rows(x + i_bh64 * T * K, o_t, m_t, K, BK)  # [BT, BK] fp32
    b_z = tl.dot(b_x, b_w, input_precision=PREC)  # [BT, BF] = x W_h
    return i_bh64, o_t, m_t, _softmax(b_z, m_f), _softmax(-b_z, m_f), m_f


@triton.jit(do_not_specialize=["T"])
def hedgehog_map_fwd_kernel(
    x, w, phi, T, H: tl.constexpr, K: tl.constexpr, FH: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BF: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(T, BT), B*H): phi of tokens [i_t BT, (i_t + 1) BT) of one (batch, head), two halves."""
    i_bh64, o_t, m_t, b_p, b_n, m_f = _tile_softmaxes(x, w, T, H, K, FH, BT, BK, BF, PREC)
    p_phi = phi + i_bh64 * T * 2 * FH + o_t[:, None] * 2 * FH + tl.arange(0, BF)[None, :]
    m = m_t[:, None] & m_f[None, :]
    tl.store(p_phi, tl.maximum(b_p, PHI_MIN).to(phi.dtype.element_ty), mask=m)
    tl.store(p_phi + FH, tl.maximum(b_n, PHI_MIN).to(phi.dtype.element_ty), mask=m)


@triton.jit
def _softmax_back(b_g, b_p):
    """Back through clamp(softmax, 1e-12) for one half: the clamp passes gradient where p >= 1e-12, and
    softmax's backward is p (g - sum(g p)) per row."""
    b_g = tl.where(b_p >= PHI_MIN, b_g, 0.0)
    return b_p * (b_g - tl.sum(b_g * b_p, 1)[:, None])


@triton.jit(do_not_specialize=["T"])
def hedgehog_map_bwd_kernel(
    x, w, dphi, dz, T, H: tl.constexpr, K: tl.constexpr, FH: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BF: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(T, BT), B*H): dz [B, H, T, f] fp32, the gradient of z = x W_h (softmax(-z) enters with a
    minus sign)."""
    i_bh64, o_t, m_t, b_p, b_n, m_f = _tile_softmaxes(x, w, T, H, K, FH, BT, BK, BF, PREC)
    p_dphi = dphi + i_bh64 * T * 2 * FH + o_t[:, None] * 2 * FH + tl.arange(0, BF)[None, :]
    m = m_t[:, None] & m_f[None, :]
    b_gp = tl.load(p_dphi, mask=m, other=0.0).to(tl.float32)
    b_gn = tl.load(p_dphi + FH, mask=m, other=0.0).to(tl.float32)
    b_dz = _softmax_back(b_gp, b_p) - _softmax_back(b_gn, b_n)  # [BT, BF]
    store_rows(dz + i_bh64 * T * FH, b_dz, o_t, m_t, FH, BF)


def _launch_args(x, w, bt):
    B, H, T, K = x.shape
    FH = w.shape[-1]
    grid = (triton.cdiv(T, bt), B * H)
    return grid, dict(H=H, K=K, FH=FH, BT=bt, BK=block(K), BF=block(FH), PREC=dot_precision(x.dtype),
                      num_warps=_NUM_WARPS)


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
    dz = dz.to(x.dtype)
    dz_g = dz.view(B, XH, G, T, f)
    dw = None
    if need_dw:  # [XH, K, B T] @ [XH, B T, G f]: the sum over b and t in one GEMM per key head
        x_f = x.transpose(0, 1).reshape(XH, B * T, K)  # a view when B == 1
        dz_f = dz_g.permute(1, 0, 3, 2, 4).reshape(XH, B * T, G * f)  # a view when B == G == 1
        dw = torch.bmm(x_f.transpose(1, 2), dz_f).view(XH, K, G, f).transpose(1, 2).reshape(H, K, f).to(w.dtype)
    dx = None
    if need_dx:  # [B, XH, T, G f] @ [XH, G f, K]: summed over the G heads in the GEMM
        w_f = w.to(x.dtype).view(XH, G, K, f).permute(0, 1, 3, 2).reshape(XH, G * f, K)
        dx = torch.matmul(dz_g.permute(0, 1, 3, 2, 4).reshape(B, XH, T, G * f), w_f)
    return dx, dw


class HedgehogMapFunction(torch.autograd.Function):
    """phi = hedgehog(x, w); saves x and w only (the backward recomputes the softmaxes)."""

    @staticmethod
    def forward(ctx, x, w):
        grid, meta = _launch_args(x, w, _BT_FWD)
        phi = x.new_empty(*x.shape[:3], 2 * w.shape[-1])  # [B, H, T, 2f] in x's dtype
        hedgehog_map_fwd_kernel[grid](x, w, phi, x.shape[2], **meta)
        ctx.save_for_backward(x, w)
        return phi

    @staticmethod
    def backward(ctx, dphi):
        x, w = ctx.saved_tensors
        grid, meta = _launch_args(x, w, _BT_BWD)
        dz = x.new_empty(*x.shape[:3], w.shape[-1], dtype=torch.float32)  # [B, H, T, f]
        hedgehog_map_bwd_kernel[grid](x, w, dphi.contiguous(), dz, x.shape[2], **meta)
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
