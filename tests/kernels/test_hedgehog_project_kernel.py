"""The projection-backward kernel (kernels/hedgehog_project.py) against the einsum of z = x W_h's backward and
against the cuBLAS form (hedgehog_map.project_back), then inside the staged Hedgehog op.

CPU: Triton's interpreter; fp32 (exact dots: fp32 tolerances) and fp16 (half-precision dot operands, fp32
sums: fp16 tolerances). Poisoned allocations (tests/kernels/conftest.py) make unwritten outputs NaN."""

import pytest
import torch

import lolcats_lab.kernels.hedgehog_project as hp
from lolcats_lab.kernels import triton_hedgehog_linear_attn
from tests.tolerances import TOLERANCES, check_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytestmark = pytest.mark.usefixtures("poison_empty")


def _map_case(B, XH, G, T, K, f, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, XH, T, K, generator=g).to(DEVICE, dtype)
    w = torch.randn(XH * G, K, f, generator=g).to(DEVICE)  # fp32 weights, as the modules keep them
    dz = torch.randn(B, XH * G, T, f, generator=g).to(DEVICE, dtype)
    return dz, x, w


def _einsum_grads(dz, x, w):
    """dx = sum over each x head's G query heads of dz W^T, dW = sum over b, t of x^T dz, in float64."""
    B, H, T, f = dz.shape
    XH = x.shape[1]
    dz, x, w = dz.double(), x.double(), w.double()
    dx = torch.einsum("bhtf,hkf->bhtk", dz, w).view(B, XH, H // XH, T, -1).sum(2)
    dw = torch.einsum("bhtk,bhtf->hkf", x.repeat_interleave(H // XH, dim=1), dz)
    return dx, dw


@pytest.mark.parametrize("T", [1, 63, 64, 65, 129])
@pytest.mark.parametrize("B,XH,G,K,f", [(1, 2, 1, 16, 8), (1, 2, 1, 12, 5), (2, 2, 3, 40, 5), (1, 1, 4, 64, 33)],
                         ids=["B1-G1-K16-f8", "B1-G1-K12-f5", "B2-G3-K40-f5", "B1-G4-K64-f33"])  # fmt: skip
def test_project_back_kernel_matches_einsum(T, B, XH, G, K, f):
    """fp32: dx (summed over each x head's query heads) and dW within fp32 tolerance of the float64 einsum, for
    lengths around the 64-token tile, grouped heads (head dims >= 33: hedgehog_project._GROUPED_MIN_BK) and K, f
    not powers of two (padded in the kernel)."""
    dz, x, w = _map_case(B, XH, G, T, K, f, torch.float32, seed=T + 7 * G)
    want_dx, want_dw = _einsum_grads(dz, x, w)
    [(dx, dw)] = hp.project_back_maps([(dz, x, w, True, True)])
    assert dx.dtype == x.dtype and dw.dtype == w.dtype
    check_close("dx", want_dx, dx, **TOLERANCES[torch.float32])
    check_close("dw", want_dw, dw, **TOLERANCES[torch.float32])


def test_project_back_kernel_two_maps_and_what_is_asked():
    """Two maps in one call (a query map with one head per x head, a key map with 2 query heads per x head), fp16:
    within fp16 tolerance of the einsum and of the cuBLAS form; only what is asked for is returned, and a
    weight gradient asked of one map only still comes from the shared partial buffer."""
    from lolcats_lab.kernels.hedgehog_map import project_back

    q_map = _map_case(2, 4, 1, 70, 40, 8, torch.float16, seed=1)
    k_map = _map_case(2, 2, 2, 70, 40, 8, torch.float16, seed=2)
    tol = TOLERANCES[torch.float16]
    got = hp.project_back_maps([(*q_map, True, True), (*k_map, True, True)])
    for name, case, (dx, dw) in zip(("q", "k"), (q_map, k_map), got):
        want_dx, want_dw = _einsum_grads(*case)
        check_close(f"d{name}", want_dx, dx, **tol)
        check_close(f"dw{name}", want_dw, dw, **tol)
        cublas_dx, cublas_dw = project_back(*case)
        check_close(f"d{name} vs cuBLAS form", cublas_dx, dx, **tol)
        check_close(f"dw{name} vs cuBLAS form", cublas_dw, dw, **tol)
    (dx_q, dw_q), (dx_k, dw_k) = hp.project_back_maps([(*q_map, True, False), (*k_map, False, True)])
    assert dw_q is None and dx_k is None
    check_close("dq, no dw asked", _einsum_grads(*q_map)[0], dx_q, **tol)
    check_close("dwk, no dx asked", _einsum_grads(*k_map)[1], dw_k, **tol)
    assert hp.project_back_maps([(*q_map, False, False)]) == [(None, None)]


def test_project_back_kernel_negative_control():
    """The comparison can fail: dz of the wrong map (a permuted head order) gives errors far above tolerance."""
    dz, x, w = _map_case(1, 3, 1, 40, 16, 8, torch.float32, seed=3)
    want_dx, want_dw = _einsum_grads(dz, x, w)
    [(dx, dw)] = hp.project_back_maps([(dz[:, [1, 2, 0]].contiguous(), x, w, True, True)])
    with pytest.raises(AssertionError, match="rel_rms"):
        check_close("dx", want_dx, dx, **TOLERANCES[torch.float32])
    with pytest.raises(AssertionError, match="rel_rms"):
        check_close("dw", want_dw, dw, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_staged_op_with_the_kernel_equals_the_cublas_form(monkeypatch, dtype):
    """The staged Hedgehog op (4 query heads on 2 key heads) with PROJECT_BACK_KERNEL on and off: the same
    output, and gradients within the dtype's tolerance of each other (fp32: the same sums in another order)."""
    g = torch.Generator().manual_seed(4)
    B, H, KH, T, K, f, D = 1, 4, 2, 75, 40, 8, 12
    q, do = torch.randn(B, H, T, K, generator=g), torch.randn(B, H, T, D, generator=g)
    k, v = torch.randn(B, KH, T, K, generator=g), torch.randn(B, KH, T, D, generator=g)
    wq, wk = torch.randn(H, K, f, generator=g), torch.randn(H, K, f, generator=g)
    inputs = [x.to(DEVICE, dtype) for x in (q, k, v)] + [wq.to(DEVICE), wk.to(DEVICE)]

    def run(kernel_on):
        monkeypatch.setattr(hp, "PROJECT_BACK_KERNEL", kernel_on)
        leaves = [x.detach().clone().requires_grad_() for x in inputs]
        y = triton_hedgehog_linear_attn(*leaves, chunk_size=16, segment_chunks=2, fuse_map=False)
        y.backward(do.to(DEVICE, dtype))
        return y.detach(), [x.grad for x in leaves]

    y_off, g_off = run(False)
    y_on, g_on = run(True)
    assert torch.equal(y_off, y_on)
    tol = TOLERANCES[dtype]
    for name, a, b in zip(("dq", "dk", "dv", "dwq", "dwk"), g_off, g_on):
        assert b.dtype == a.dtype
        check_close(name, a, b, **tol)
    assert not torch.equal(g_off[3], g_on[3])  # the kernel ran (other summation order)


def test_grouped_heads_with_narrow_head_dims_take_the_gemms(monkeypatch):
    """Grouped x heads at head dims below 33 (where the compiled kernel dropped a query head's share of dx on an
    H100): project_back_maps refuses them, naming the limit and the way out, and project_back_any gives
    exactly the cuBLAS form's result; the kernel is on by default (LOLCATS_PROJECT_BACK_KERNEL unset)."""
    import os

    from lolcats_lab.kernels.hedgehog_map import project_back

    if "LOLCATS_PROJECT_BACK_KERNEL" not in os.environ:
        assert hp.PROJECT_BACK_KERNEL  # as shipped
    monkeypatch.setattr(hp, "PROJECT_BACK_KERNEL", True)
    case = _map_case(1, 2, 2, 30, 32, 8, torch.float32, seed=6)
    with pytest.raises(ValueError, match=r"grouped x heads \(2 for 4 maps\) need a head dim of at least 33 .* got 32"):
        hp.project_back_maps([(*case, True, True)])
    assert not hp.kernel_takes(*case) and hp.kernel_takes(*_map_case(1, 2, 2, 30, 33, 8, torch.float32, seed=6))
    [(dx, dw)] = hp.project_back_any([(*case, True, True)])
    want_dx, want_dw = project_back(*case)
    assert torch.equal(dx, want_dx) and torch.equal(dw, want_dw)
    with pytest.raises(ValueError, match="project_back_maps takes one or two maps, got 3"):
        hp.project_back_maps([(*case, True, True)] * 3)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "gemms"])
def test_unpaired_frees_each_dz_before_the_next_map(monkeypatch, kernel):
    """paired=False (the fused op's backward): map by map, each entry of the caller's list set to None once its
    map is done, so a dz nobody else holds is freed before the next map's dx is allocated (one dz less at
    the peak); the results equal the paired launch's (kernel) or the GEMMs' exactly. paired=True keeps both."""
    import weakref

    from lolcats_lab.kernels import hedgehog_map

    monkeypatch.setattr(hp, "PROJECT_BACK_KERNEL", kernel)
    cases = [_map_case(1, 2, 1, 70, 40, 8, torch.float32, seed=s) for s in (3, 4)]
    want = hp.project_back_any([(*c, True, True) for c in cases])
    alive_at_call = []  # for each projection call: whether the first map's dz is still alive

    def watch(fn):
        def wrapped(*args, **kwargs):
            alive_at_call.append(first_dz() is not None)
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(hp, "project_back_maps", watch(hp.project_back_maps))
    monkeypatch.setattr(hp, "project_back", watch(hedgehog_map.project_back))
    maps = [(c[0].clone(), *c[1:], True, True) for c in cases]
    first_dz = weakref.ref(maps[0][0])
    got = hp.project_back_any(maps, paired=False)
    assert maps == [None, None] and alive_at_call == [True, False]  # freed before the second map ran
    for (dx, dw), (want_dx, want_dw) in zip(got, want):
        assert torch.equal(dx, want_dx) and torch.equal(dw, want_dw)
    alive_at_call.clear()
    maps = [(c[0].clone(), *c[1:], True, True) for c in cases]
    first_dz = weakref.ref(maps[0][0])
    hp.project_back_any(maps, paired=True)
    assert maps[0] is not None and alive_at_call == ([True] if kernel else [True, True])


def test_mixed_maps_take_the_kernel_where_it_can(monkeypatch):
    """A map the kernel refuses (grouped x heads at head dim 32) beside one it takes: each map its own path,
    the refused one exactly the GEMMs' result, the other within fp32 tolerance of the einsum."""
    from lolcats_lab.kernels.hedgehog_map import project_back

    monkeypatch.setattr(hp, "PROJECT_BACK_KERNEL", True)
    narrow = _map_case(1, 2, 2, 30, 32, 8, torch.float32, seed=8)
    wide = _map_case(1, 2, 1, 30, 40, 8, torch.float32, seed=9)
    (dx_n, dw_n), (dx_w, dw_w) = hp.project_back_any([(*narrow, True, True), (*wide, True, True)])
    want_dx, want_dw = project_back(*narrow)
    assert torch.equal(dx_n, want_dx) and torch.equal(dw_n, want_dw)
    ref_dx, ref_dw = _einsum_grads(*wide)
    check_close("dx", ref_dx, dx_w, **TOLERANCES[torch.float32])
    check_close("dw", ref_dw, dw_w, **TOLERANCES[torch.float32])
