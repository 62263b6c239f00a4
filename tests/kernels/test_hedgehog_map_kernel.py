"""The Triton Hedgehog feature map (kernels/hedgehog_map.py) against the PyTorch map, forward and gradients.

CPU: Triton's interpreter in fp32 (exact dots), so tolerances are fp32's (tests/tolerances.py); bf16 on a
GPU only (the interpreter's bf16 loads are wrong)."""

import pytest
import torch

from lolcats_lab.feature_maps import hedgehog_phi
from lolcats_lab.kernels import triton_hedgehog_map
from tests.tolerances import TOLERANCES, check_close, rel_rms

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytestmark = pytest.mark.usefixtures("poison_empty")  # unwritten outputs show up as NaN


def _case(B, H, T, K, f, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(B, H, T, K, generator=g)).to(DEVICE, dtype)
    w = torch.randn(H, K, f, generator=g).to(DEVICE)  # fp32 weights, as the module keeps them
    dphi = torch.randn(B, H, T, 2 * f, generator=g).to(DEVICE, dtype)
    return x, w, dphi


def _run(fn, x, w, dphi):
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    phi = fn(x, w)
    phi.backward(dphi)
    return phi, x.grad, w.grad


@pytest.mark.parametrize("T", [1, 63, 64, 65, 129])
@pytest.mark.parametrize("K,f", [(16, 8), (12, 6), (20, 33)], ids=["K16-f8", "K12-f6", "K20-f33"])
def test_map_matches_pytorch(T, K, f):
    """Outputs in SPEC order (softmax(z) half first) and both gradients; T not a multiple of the 64-token
    tile, K and f not powers of two (padded in-kernel)."""
    x, w, dphi = _case(2, 3, T, K, f, torch.float32, seed=T + K)
    want = _run(hedgehog_phi, x, w, dphi)
    got = _run(triton_hedgehog_map, x, w, dphi)
    for name, a, b in zip(("phi", "dx", "dw"), want, got):
        check_close(name, a, b, **TOLERANCES[torch.float32])


def test_map_large_logits_and_halves_in_order():
    """Logits of +-40 (softmaxes saturate; the clamp at 1e-12 cuts gradients) and the two halves are where
    the SPEC puts them: swapping them is far off (negative control)."""
    x, w, dphi = _case(1, 2, 70, 16, 8, torch.float32, seed=1, scale=10.0)
    want = _run(hedgehog_phi, x, w, dphi)
    got = _run(triton_hedgehog_map, x, w, dphi)
    for name, a, b in zip(("phi", "dx", "dw"), want, got):
        check_close(name, a, b, **TOLERANCES[torch.float32])
    swapped = torch.cat([got[0][..., 8:], got[0][..., :8]], -1)
    assert rel_rms(want[0], swapped) > 0.1


def test_map_rejects_bad_input():
    x, w, _ = _case(1, 2, 8, 16, 8, torch.float32, seed=0)
    with pytest.raises(ValueError, match=r"weight must have shape \[H, K, f\] with H=2, K=16"):
        triton_hedgehog_map(x, w[:1])
    with pytest.raises(ValueError, match=r"head_dim <= 128 and feature_dim <= 128, got 16 and 200"):
        triton_hedgehog_map(x, torch.randn(2, 16, 200, device=DEVICE))
    with pytest.raises(ValueError, match=r"^x must have shape \[B, H, T, K\] \(4 dims\)"):
        triton_hedgehog_map(x[0], w)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU (run on the GPU machine with -m gpu)")
def test_gpu_map_bf16():
    """bf16 at the 8B recipe's shape (K = 128, f = 64): within bf16's tolerance of the fp32 PyTorch map."""
    x, w, dphi = _case(2, 8, 1000, 128, 64, torch.bfloat16, seed=3)
    want = _run(hedgehog_phi, x.float(), w, dphi.float())
    got = _run(triton_hedgehog_map, x, w, dphi)
    for name, a, b in zip(("phi", "dx", "dw"), want, got):
        check_close(name, a, b.float(), **TOLERANCES[torch.bfloat16])


def test_feature_map_module_uses_the_kernel_when_asked():
    """HedgehogFeatureMap(impl="triton") runs the kernel (here in the interpreter) and equals impl="torch",
    gradients of the weight included; "auto" keeps CPU / fp32 inputs on PyTorch; a bad impl is refused."""
    from lolcats_lab.feature_maps import make_feature_map

    fmap = make_feature_map("hedgehog", 2, 12, feature_dim=5, init="random").to(DEVICE)
    x, _, dphi = _case(1, 2, 40, 12, 5, torch.float32, seed=9)
    outs = []
    for impl in ("torch", "triton"):
        fmap.impl = impl
        fmap.zero_grad()
        xi = x.clone().requires_grad_()
        y = fmap(xi)
        y.backward(dphi)
        outs.append((y, xi.grad, fmap.weight.grad.clone()))
    for name, a, b in zip(("phi", "dx", "dw"), *outs):
        check_close(name, a, b, **TOLERANCES[torch.float32])
    fmap.impl = "auto"
    assert fmap._use_triton(x) == (DEVICE == "cuda" and x.dtype != torch.float32)
    fmap.impl = "cuda"
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'torch', 'triton'\), got 'cuda'"):
        fmap(x)


def test_map_weight_gradient_alone():
    """x without gradient (stage 1: q, k from frozen projections): the weight's gradient is unchanged and
    x gets none."""
    x, w, dphi = _case(1, 2, 33, 12, 6, torch.float32, seed=4)
    want = _run(hedgehog_phi, x, w, dphi)[2]
    wg = w.detach().clone().requires_grad_()
    triton_hedgehog_map(x, wg).backward(dphi)
    check_close("dw", want, wg.grad, **TOLERANCES[torch.float32])
    assert x.grad is None


def test_map_frozen_weight_gets_no_gradient():
    """Stage 2 freezes the maps: the backward skips dW (w.grad stays None) and dx still matches."""
    x, w, dphi = _case(1, 2, 65, 16, 8, torch.float32, seed=3)
    want = _run(hedgehog_phi, x, w, dphi)[1]
    xg = x.detach().clone().requires_grad_()
    triton_hedgehog_map(xg, w).backward(dphi)
    assert w.grad is None
    check_close("dx", want, xg.grad, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("programs_per_sm", [1, 4])
def test_map_programs_walking_several_tiles(monkeypatch, programs_per_sm):
    """16-token tiles with one program per (batch, head) walking all 7 tiles of T = 100, or three programs
    walking 3 / 3 / 1 (the last run cut short): outputs and gradients still equal the PyTorch map."""
    import lolcats_lab.kernels.hedgehog_map as hm

    monkeypatch.setattr(hm, "_BT_FWD", 16)
    monkeypatch.setattr(hm, "_BT_BWD", 16)
    monkeypatch.setattr(hm, "_PROGRAMS_PER_SM", programs_per_sm)
    x, w, dphi = _case(2, 3, 100, 16, 8, torch.float32, seed=programs_per_sm)
    grid, tpp, _ = hm._launch_args(x, w, 16, 2, 8)
    assert (grid, tpp) == (((1, 6), 7) if programs_per_sm == 1 else ((3, 6), 3)) or DEVICE == "cuda"
    want = _run(hedgehog_phi, x, w, dphi)
    got = _run(triton_hedgehog_map, x, w, dphi)
    for name, a, b in zip(("phi", "dx", "dw"), want, got):
        check_close(name, a, b, **TOLERANCES[torch.float32])


def test_map_backward_rejects_a_gradient_it_cannot_add_into():
    """map_backward(dx=...) adds in place into a contiguous tensor of x's shape and dtype, and says so."""
    from lolcats_lab.kernels.hedgehog_map import map_backward

    x, w, dphi = _case(1, 2, 20, 16, 8, torch.float32, seed=5)
    with pytest.raises(ValueError, match=r"dx must be contiguous with x's shape and dtype \(1, 2, 20, 16\)"):
        map_backward(x, w, dphi, dx=torch.zeros(1, 2, 20, 8, device=DEVICE))
    with pytest.raises(ValueError, match=r"dx must be contiguous"):
        map_backward(x, w, dphi, dx=torch.zeros(1, 2, 16, 20, device=DEVICE).transpose(2, 3))


def test_map_reads_grouped_query_heads_in_place():
    """x with 2 heads under 6 maps (3 query heads per x head, as grouped-query keys): phi per query head equals
    the PyTorch map of x repeated to the query heads, and the launchers' dz, summed by project_back over
    each x head's query heads, gives the repeat's gradients. Adding into dx is refused for grouped heads
    (several programs would add into one row)."""
    from lolcats_lab.kernels.hedgehog_map import map_backward, map_forward, project_back

    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 2, 37, 12, generator=g).to(DEVICE)
    w = torch.randn(6, 12, 5, generator=g).to(DEVICE)
    dphi = torch.randn(2, 6, 37, 10, generator=g).to(DEVICE)
    want = _run(lambda x_, w_: hedgehog_phi(x_.repeat_interleave(3, dim=1), w_), x, w, dphi)
    phi = map_forward(x.contiguous(), w)
    dx, dw = project_back(map_backward(x.contiguous(), w, dphi), x, w)
    for name, a, b in zip(("phi", "dx", "dw"), want, (phi, dx, dw)):
        check_close(name, a, b, **TOLERANCES[torch.float32])
    assert rel_rms(want[0], map_forward(x[:, [1, 0]].contiguous(), w)) > 0.1  # which x head each map reads
    with pytest.raises(ValueError, match=r"adding into dx needs one x head per map head, got 2 x heads for 6"):
        map_backward(x.contiguous(), w, dphi, dx=torch.zeros_like(x))


@pytest.mark.parametrize("B,XH,G", [(1, 3, 1), (2, 3, 1), (1, 2, 3), (2, 2, 3)])
def test_project_back_matches_einsum(B, XH, G):
    """project_back's GEMMs (dz a view at one batch and one head per map, else copied once) against the
    einsum of z = x W_h's backward: dx = sum over each x head's G query heads of dz W^T, dw = sum_{b,t} x^T dz;
    only what is asked for is returned."""
    from lolcats_lab.kernels.hedgehog_map import project_back

    g = torch.Generator().manual_seed(B * 10 + G)
    T, K, f = 19, 12, 5
    x = torch.randn(B, XH, T, K, generator=g).to(DEVICE)
    w = torch.randn(XH * G, K, f, generator=g).to(DEVICE)
    dz = torch.randn(B, XH * G, T, f, generator=g).to(DEVICE)
    x_q = x.repeat_interleave(G, dim=1)  # [B, H, T, K]: each query head's x
    want_dx = torch.einsum("bhtf,hkf->bhtk", dz, w).view(B, XH, G, T, K).sum(2)
    want_dw = torch.einsum("bhtk,bhtf->hkf", x_q, dz)
    dx, dw = project_back(dz, x, w)
    check_close("dx", want_dx, dx, **TOLERANCES[torch.float32])
    check_close("dw", want_dw, dw, **TOLERANCES[torch.float32])
    assert project_back(dz, x, w, need_dx=False)[0] is None and project_back(dz, x, w, need_dw=False)[1] is None


def test_fp32_output_gemm_falls_back_with_a_warning_where_refused(monkeypatch):
    """A torch that refuses bmm's out_dtype (this CPU build has it only for CUDA; a tensor here claims to be
    on CUDA to reach that path): the weight-gradient GEMM warns once, turns the fp32-output path off for the
    process and returns the GEMM cast to fp32, equal to the plain form."""
    import lolcats_lab.kernels.hedgehog_map as hm

    class ClaimsCuda(torch.Tensor):
        @property
        def is_cuda(self):
            return True

    monkeypatch.setattr(hm, "_FP32_OUT_GEMMS", True)
    g = torch.Generator().manual_seed(2)
    a = torch.randn(3, 8, 16, generator=g).to(torch.bfloat16)
    b = torch.randn(3, 16, 4, generator=g).to(torch.bfloat16)
    with pytest.warns(UserWarning, match=r"torch.bmm\(out_dtype=torch.float32\) failed"):
        got = hm._bmm_as(a.as_subclass(ClaimsCuda), b, torch.float32)
    assert hm._FP32_OUT_GEMMS is False and got.dtype == torch.float32
    assert torch.equal(got.as_subclass(torch.Tensor), torch.bmm(a, b).float())


def test_map_forward_pair_equals_two_launches():
    """map_forward_pair (q's and k's maps in one launch, k with fewer heads) gives bitwise each map_forward, and
    maps of different shapes are refused with both shapes named."""
    from lolcats_lab.kernels.hedgehog_map import map_forward, map_forward_pair

    g = torch.Generator().manual_seed(12)
    q = torch.randn(2, 4, 45, 12, generator=g).to(DEVICE)
    k = torch.randn(2, 2, 45, 12, generator=g).to(DEVICE)
    wq, wk = (torch.randn(4, 12, 5, generator=g).to(DEVICE) for _ in range(2))
    fq, fk = map_forward_pair(q, wq, k, wk)
    assert torch.equal(fq, map_forward(q, wq)) and torch.equal(fk, map_forward(k, wk))
    check_close("fk", hedgehog_phi(k.repeat_interleave(2, dim=1), wk), fk, **TOLERANCES[torch.float32])
    with pytest.raises(ValueError, match=r"map_forward_pair needs maps of one shape: x \(2, 4, 45, 12\)"):
        map_forward_pair(q, wq, k[:, :, :40].contiguous(), wk)
