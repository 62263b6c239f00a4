"""The Hedgehog feature map as a Triton kernel pair: phi(x) written once in the input's dtype.

Math (SPEC.md "Hedgehog feature map"), per batch element, head h and token:

    phi(x) = clamp(concat(softmax(x W_h), softmax(-x W_h)), min=1e-12)        x [K], W_h [K, f], phi [2f]

Reference: ``lolcats_lab.feature_maps.hedgehog_phi`` (PyTorch, which the module runs in fp32: for bf16
inputs it reads x, writes an fp32 copy, the projection, two softmaxes, the concatenation and the clamp,
and autograd keeps the fp32 softmax outputs for the backward). Here one program per (batch, head, tile of
BT tokens) loads x and the widened projection W2 (_tl_helpers.load_w2), computes both softmaxes in
registers and writes phi in x's dtype, in SPEC order (the softmax(z) half, then the softmax(-z) half);
autograd saves only x. The backward recomputes the softmaxes, writes d(x W2) in fp32 (_tl_helpers.
hedgehog_dz) and runs the projection's backward as two GEMMs (linear_attn.hedgehog_project_back).

Precision: the projection dot takes fp32 operands (x is exact in TF32 when it is bf16/fp16; W is rounded to
TF32 on the GPU, fp32 inputs use three-TF32 dots: _utils.dot_precision); softmaxes and sums in fp32.
Shapes: x [B, H, T, K], w [H, K, f] -> phi [B, H, T, 2f]; K <= 128 and f <= 128.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._tl_helpers import hedgehog_dz, hedgehog_fwd, load_rows, load_w2, store_rows
from ._utils import block, check_device, check_projection, check_tensor, dot_precision

_BT = 64  # tokens per program


@triton.jit
def _spec_columns(FH: tl.constexpr, BF: tl.constexpr):
    """Column of phi (SPEC order) for each interleaved kernel column c = (pos_0, neg_0, pos_1, ...), and
    which columns are real features."""
    o_c = tl.arange(0, BF)
    return (o_c % 2) * FH + o_c // 2, (o_c // 2) < FH


@triton.jit
def _tile_softmaxes(x, w, T, H: tl.constexpr, K: tl.constexpr, FH: tl.constexpr, BT: tl.constexpr,
                    BK: tl.constexpr, BF: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """This program's tile, grid (cdiv(T, BT), B*H): (row offset of its (batch, head) in int64, token
    positions o_t [BT], their mask, phi and the unclamped softmaxes [BT, BF] with interleaved columns)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh64 = i_bh.to(tl.int64)
    b_w = load_w2(w + (i_bh % H).to(tl.int64) * K * FH, K, FH, BK, BF, tl.float32)  # [BK, BF]
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < T
    b_phi, b_p = hedgehog_fwd(load_rows(x + i_bh64 * T * K, o_t, m_t, K, BK), b_w, m_t, FH, BF, PREC)
    return i_bh64, o_t, m_t, b_phi, b_p


@triton.jit(do_not_specialize=["T"])
def hedgehog_map_fwd_kernel(
    x, w, phi, T, H: tl.constexpr, K: tl.constexpr, FH: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BF: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(T, BT), B*H): phi of tokens [i_t BT, (i_t + 1) BT) of one (batch, head)."""
    i_bh64, o_t, m_t, b_phi, _ = _tile_softmaxes(x, w, T, H, K, FH, BT, BK, BF, PREC)
    col, m_c = _spec_columns(FH, BF)
    tl.store(phi + i_bh64 * T * 2 * FH + o_t[:, None] * 2 * FH + col[None, :], b_phi.to(phi.dtype.element_ty),
             mask=m_t[:, None] & m_c[None, :])  # fmt: skip


@triton.jit(do_not_specialize=["T"])
def hedgehog_map_bwd_kernel(
    x, w, dphi, dz, T, H: tl.constexpr, K: tl.constexpr, FH: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BF: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(T, BT), B*H): dz [B, H, T, 2f] fp32, the gradient of x W2 (interleaved columns)."""
    i_bh64, o_t, m_t, _, b_p = _tile_softmaxes(x, w, T, H, K, FH, BT, BK, BF, PREC)
    col, m_c = _spec_columns(FH, BF)
    p_dphi = dphi + i_bh64 * T * 2 * FH + o_t[:, None] * 2 * FH + col[None, :]
    b_dphi = tl.load(p_dphi, mask=m_t[:, None] & m_c[None, :], other=0.0).to(tl.float32)
    store_rows(dz + i_bh64 * T * 2 * FH, hedgehog_dz(b_dphi, b_p, BF), o_t, m_t, 2 * FH, BF)


def _launch_args(x, w):
    B, H, T, K = x.shape
    FH = w.shape[-1]
    grid = (triton.cdiv(T, _BT), B * H)
    return grid, dict(H=H, K=K, FH=FH, BT=_BT, BK=block(K), BF=2 * block(FH), PREC=dot_precision(x.dtype))


class HedgehogMapFunction(torch.autograd.Function):
    """phi = hedgehog(x, w); saves x and w only (the backward recomputes the softmaxes)."""

    @staticmethod
    def forward(ctx, x, w):
        grid, meta = _launch_args(x, w)
        phi = x.new_empty(*x.shape[:3], 2 * w.shape[-1])  # [B, H, T, 2f] in x's dtype
        hedgehog_map_fwd_kernel[grid](x, w, phi, x.shape[2], **meta)
        ctx.save_for_backward(x, w)
        return phi

    @staticmethod
    def backward(ctx, dphi):
        from .linear_attn import hedgehog_project_back

        x, w = ctx.saved_tensors
        grid, meta = _launch_args(x, w)
        dz = x.new_empty(*x.shape[:3], 2 * w.shape[-1], dtype=torch.float32)  # [B, H, T, 2f]
        hedgehog_map_bwd_kernel[grid](x, w, dphi.contiguous(), dz, x.shape[2], **meta)
        # stage 1 trains only the maps: x (from frozen projections) then needs no gradient, and no GEMM for it
        return hedgehog_project_back(dz, x, w, need_dx=ctx.needs_input_grad[0])


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
