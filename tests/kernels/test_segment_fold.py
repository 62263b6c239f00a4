"""Segment states folded by the kernels (segments.fold_segments) against the scanned states, and both against
the naive references.

A plan of 2..FOLD_MAX_SEGMENTS segments launches no scan kernel: the per-segment sums stay unscanned and every
kernel that starts from them adds up those before its segment (forward), after it (the linear reverse scan)
or from it on (the hybrid's reverse scan) itself (_tl_helpers.load_segment_state). Each op here runs one
segment plan twice, folded and with FOLD_MAX_SEGMENTS = 0 (every plan scanned, as before), on the same fp32
inputs in the interpreter: outputs and gradients agree to fp32 rounding (the sums are taken in another order)
and both match the naive reference; the folded run launches no scan kernel, the scanned one does.
"""

import pytest
import torch

import lolcats_lab.kernels.segments as segments
from lolcats_lab.attention.hybrid import naive_hybrid_attn
from lolcats_lab.attention.linear import naive_linear_attn
from lolcats_lab.kernels import triton_hedgehog_linear_attn, triton_hybrid_attn, triton_linear_attn
from lolcats_lab.kernels._utils import FOLD_NONE, FOLD_SUFFIX
from tests.tolerances import TOLERANCES, check_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP32 = TOLERANCES[torch.float32]
# folded against scanned: the same fp32 sums in another order (measured <= 3e-7 relative RMS here)
SAME_SUMS = dict(ratio=2e-6, atol=1e-6)

pytestmark = pytest.mark.usefixtures("poison_empty")


def test_fold_rule():
    assert not segments.fold_segments(1)  # one segment starts from nothing
    assert segments.fold_segments(2) and segments.fold_segments(segments.FOLD_MAX_SEGMENTS)
    assert not segments.fold_segments(segments.FOLD_MAX_SEGMENTS + 1)
    assert segments.fold_mode(3, FOLD_SUFFIX) == FOLD_SUFFIX and segments.fold_mode(1, FOLD_SUFFIX) == FOLD_NONE


def phi(x, w):
    """Hedgehog map written out (SPEC.md): x [B, H, T, K], w [H, K, f] -> [B, H, T, 2f]."""
    z = torch.einsum("bhtd,hdf->bhtf", x, w)
    return torch.cat([z.softmax(-1), (-z).softmax(-1)], -1).clamp(min=1e-12)


def _inputs(shapes, seed, positive=()):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(*s, generator=g) if i in positive else torch.randn(*s, generator=g)).to(DEVICE)
            for i, s in enumerate(shapes)]  # fmt: skip


def _grads(fn, inputs, do):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    y = fn(*leaves)
    y.backward(do)
    return [y.detach()] + [x.grad for x in leaves]


B, H, T, K, F, D = 1, 2, 150, 12, 10, 9  # 150 tokens: 10 chunks of 16, the last one partial


def _linear():
    xs = _inputs([(B, H, T, F), (B, H, T, F), (B, H, T, D)], seed=1, positive=(0, 1))
    return xs, lambda a, b, c: triton_linear_attn(a, b, c, chunk_size=16, segment_chunks=3), naive_linear_attn


def _hedgehog(fuse_map):
    def op(q, k, v, wq, wk):
        return triton_hedgehog_linear_attn(q, k, v, wq, wk, chunk_size=16, segment_chunks=3, fuse_map=fuse_map)

    xs = _inputs([(B, H, T, K), (B, 1, T, K), (B, H, T, D), (H, K, 5), (H, K, 5)], seed=2)  # grouped-query keys
    return xs, op, lambda q, k, v, wq, wk: naive_linear_attn(phi(q, wq), phi(k.expand(-1, H, -1, -1), wk), v)


def _hybrid(kind, window, sinks):
    """tk with the tile dividing the window and no sinks takes the split backward; the others the
    single-scan kernels."""
    cfg = dict(window=window, kind=kind, sink_tokens=sinks)
    xs = _inputs([(B, H, T, K), (B, H, T, K), (B, H, T, D), (B, H, T, F), (B, H, T, F), (H,)], seed=3, positive=(3, 4))
    return (xs, lambda *x: triton_hybrid_attn(*x, chunk_size=16, segment_chunks=3, **cfg),
            lambda *x: naive_hybrid_attn(*x, **cfg))  # fmt: skip


OPS = {
    "linear": _linear,
    "hedgehog-fused": lambda: _hedgehog(True),
    "hedgehog-staged": lambda: _hedgehog(False),
    "hybrid-tk-split": lambda: _hybrid("tk", 32, 0),
    "hybrid-sw-sinks": lambda: _hybrid("sw", 20, 2),
}


@pytest.mark.parametrize("op", list(OPS))
def test_folded_states_match_scanned_and_naive(monkeypatch, op):
    xs, fn, reference = OPS[op]()
    do = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    scans = []
    real_scan = segments.scan_segments_
    monkeypatch.setattr(segments, "scan_segments_", lambda *a, **kw: scans.append(1) or real_scan(*a, **kw))
    assert segments.fold_segments(4)  # 10 chunks in segments of 3: four segments
    folded = _grads(fn, xs, do)
    assert not scans, "a folded plan launched the scan kernel"
    monkeypatch.setattr(segments, "FOLD_MAX_SEGMENTS", 0)
    scanned = _grads(fn, xs, do)
    assert len(scans) == 2  # forward and reverse states
    ref = _grads(reference, xs, do)
    names = ["y"] + [f"d{i}" for i in range(len(xs))]
    for name, a, b, r in zip(names, folded, scanned, ref):
        check_close(f"{op} {name} folded vs scanned", b, a, **SAME_SUMS)
        # window_logit's gradient sums terms of both signs: 10x looser, as test_hybrid_attn_kernel.check_all
        tol = dict(ratio=10 * FP32["ratio"], atol=1e-5) if r.dim() == 1 else FP32
        check_close(f"{op} {name} folded vs naive", r, a, **tol)
