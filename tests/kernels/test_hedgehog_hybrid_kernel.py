"""The one-op Hedgehog maps + hybrid attention (kernels/hedgehog_hybrid.py) against its references.

Reference: the PyTorch Hedgehog map (``hedgehog_phi``) composed with the quadratic ``naive_hybrid_attn``,
all in fp32; gradients w.r.t. q, k, v, both projections and window_logit through autograd of that
composition. CPU runs use Triton's interpreter (fp32); bf16 at the 8B recipe's shape runs on a GPU only.
"""

import pytest
import torch

from lolcats_lab.attention.hybrid import naive_hybrid_attn
from lolcats_lab.feature_maps import hedgehog_phi
from lolcats_lab.kernels import triton_hedgehog_hybrid_attn, triton_hedgehog_map, triton_hybrid_attn
from tests.tolerances import TOLERANCES, check_close, rel_rms

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("dq", "dk", "dv", "dwq", "dwk", "dlogit")

pytestmark = pytest.mark.usefixtures("poison_empty")  # unwritten outputs show up as NaN


def make_inputs(B, H, VH, T, K, f, D, dtype, seed=0, q_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, K, generator=g) * q_scale
    k = torch.randn(B, H, T, K, generator=g)
    v = torch.randn(B, VH, T, D, generator=g)
    wq, wk = (torch.randn(H, K, f, generator=g) / K**0.5 for _ in range(2))  # fp32, as the modules keep them
    logit = torch.randn(H, generator=g)
    do = torch.randn(B, H, T, D, generator=g)
    return [x.to(DEVICE, dtype) for x in (q, k, v)] + [x.to(DEVICE) for x in (wq, wk, logit)], do.to(DEVICE, dtype)


def reference(q, k, v, wq, wk, logit, **cfg):
    """hedgehog_phi + naive_hybrid_attn; v's grouped heads repeated for the naive form."""
    v_rep = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return naive_hybrid_attn(q, k, v_rep, hedgehog_phi(q, wq), hedgehog_phi(k, wk), logit, **cfg)


def run(fn, inputs, do, needs=(True,) * 6):
    leaves = [x.detach().clone().requires_grad_(n) for x, n in zip(inputs, needs)]
    y = fn(*leaves)
    y.backward(do)
    return y.detach(), [x.grad for x in leaves]


# (B, H, VH, T, K, f, D, kind, window, sinks, chunk, q_scale)
CASES = [
    (1, 2, 2, 1, 16, 8, 16, "tk", 16, 0, 16, 1.0),
    (2, 2, 1, 65, 16, 8, 12, "tk", 16, 0, 16, 1.0),  # v with one head for two query heads
    (1, 2, 2, 129, 12, 6, 9, "sw", 20, 2, 32, 1.0),  # K, f not powers of two; sinks
    (1, 2, 2, 100, 16, 8, 16, "tk", 32, 0, 16, 6.0),  # large logits in the window and the maps
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-H{c[1]}-VH{c[2]}-T{c[3]}-{c[7]}{c[8]}-sink{c[9]}")
def test_matches_reference(case):
    """Output and every gradient within fp32's tolerance of the PyTorch composition."""
    B, H, VH, T, K, f, D, kind, window, sinks, chunk, q_scale = case
    xs, do = make_inputs(B, H, VH, T, K, f, D, torch.float32, seed=T + K, q_scale=q_scale)
    cfg = dict(window=window, kind=kind, sink_tokens=sinks)
    y_ref, g_ref = run(lambda *x: reference(*x, **cfg), xs, do)
    y, g = run(lambda *x: triton_hedgehog_hybrid_attn(*x, chunk_size=chunk, **cfg), xs, do)
    tol = TOLERANCES[torch.float32]
    check_close("y", y_ref, y, **tol)
    for name, a, b in zip(NAMES[:5], g_ref, g):
        check_close(name, a, b, **tol)
    # a sum over B*T rows of both signs: 10x looser, as in test_hybrid_attn_kernel.check_all
    check_close("dlogit", g_ref[5], g[5], ratio=10 * tol["ratio"], atol=1e-5)


def test_equals_the_two_op_form():
    """Same numbers as the Triton map and hybrid kernels composed through autograd (the form this op
    replaces in converted models), and far from it when the maps are swapped (negative control)."""
    xs, do = make_inputs(1, 2, 2, 70, 16, 8, 16, torch.float32, seed=5)
    cfg = dict(window=16, kind="tk")

    def two_ops(q, k, v, wq, wk, logit):
        return triton_hybrid_attn(q, k, v, triton_hedgehog_map(q, wq), triton_hedgehog_map(k, wk), logit, **cfg)

    y_two, g_two = run(two_ops, xs, do)
    y, g = run(lambda *x: triton_hedgehog_hybrid_attn(*x, **cfg), xs, do)
    for name, a, b in zip(("y",) + NAMES, (y_two, *g_two), (y, *g)):
        check_close(name, a, b, ratio=1e-6, atol=1e-6)
    q, k, v, wq, wk, logit = xs
    swapped = triton_hedgehog_hybrid_attn(q, k, v, wk, wq, logit, **cfg)
    assert rel_rms(y_two, swapped.detach()) > 1e-2


@pytest.mark.parametrize("stage", ["transfer", "lora"])
def test_training_stages_get_only_their_gradients(stage):
    """Stage 1 (attention transfer): q, k, v from frozen projections, gradients for the maps and
    window_logit only. Stage 2 (LoRA): frozen maps and window_logit, gradients for q, k, v only. Each
    wanted gradient matches the reference; the others stay None."""
    needs = (False, False, False, True, True, True) if stage == "transfer" else (True, True, True, False, False, False)
    xs, do = make_inputs(1, 2, 1, 65, 16, 8, 16, torch.float32, seed=11)
    cfg = dict(window=16, kind="tk")
    _, g_ref = run(lambda *x: reference(*x, **cfg), xs, do)
    _, g = run(lambda *x: triton_hedgehog_hybrid_attn(*x, **cfg), xs, do, needs=needs)
    for name, want, a, b in zip(NAMES, needs, g_ref, g):
        if want:
            check_close(name, a, b, ratio=10 * TOLERANCES[torch.float32]["ratio"], atol=1e-5)
        else:
            assert b is None, f"{name} got a gradient in stage {stage}"


def test_rejects_bad_input():
    (q, k, v, wq, wk, logit), _ = make_inputs(1, 4, 2, 8, 16, 8, 16, torch.float32)
    with pytest.raises(ValueError, match=r"k has 2 heads but q has 4: the k map is per query head"):
        triton_hedgehog_hybrid_attn(q, k[:, :2], v, wq, wk, logit, window=4)
    with pytest.raises(ValueError, match=r"wk must have shape \[H, K, f\] with H=4, K=16 \(from k\)"):
        triton_hedgehog_hybrid_attn(q, k, v, wq, wk[:2], logit, window=4)
    with pytest.raises(ValueError, match=r"wq and wk must have the same shape"):
        triton_hedgehog_hybrid_attn(q, k, v, wq, wk[..., :4], logit, window=4)
    with pytest.raises(ValueError, match=r"head_dim <= 128 and feature_dim <= 128, got 16 and 200"):
        w_big = torch.randn(4, 16, 200, device=DEVICE)
        triton_hedgehog_hybrid_attn(q, k, v, w_big, w_big, logit, window=4)
    with pytest.raises(ValueError, match=r"window_logit must be a tensor of shape \[H\] = \(4,\)"):
        triton_hedgehog_hybrid_attn(q, k, v, wq, wk, logit[:3], window=4)
    with pytest.raises(ValueError, match=r"window must be an int >= 1"):
        triton_hedgehog_hybrid_attn(q, k, v, wq, wk, logit, window=0)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU (run on the GPU machine with -m gpu)")
def test_gpu_bf16_recipe_shape():
    """bf16 at the 8B recipe's shape (K = 128, f = 64, tk window 64, v with a quarter of the heads):
    output within 5e-3 and gradients within 1e-2 relative RMS of the fp32 reference (issue 10's bounds)."""
    xs, do = make_inputs(2, 8, 2, 1024, 128, 64, 128, torch.bfloat16, seed=2)
    cfg = dict(window=64, kind="tk")
    y_ref, g_ref = run(lambda *x: reference(*x, **cfg), [x.float() for x in xs], do.float())
    y, g = run(lambda *x: triton_hedgehog_hybrid_attn(*x, **cfg), xs, do)
    assert rel_rms(y_ref, y.float()) < 5e-3
    for name, a, b in zip(NAMES, g_ref, g):
        assert rel_rms(a, b.float()) < 1e-2, name
