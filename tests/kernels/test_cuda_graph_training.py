"""A training step's forward+backward through each Triton op, captured in a CUDA graph and replayed.

Below 8k tokens the ops wait on the host (benchmarks/graphed_vs_eager.py); capturing the step removes that.
Capture needs every launch to be asynchronous and every buffer the kernels read to be a device tensor that
outlives the capture (no host syncs, no per-call host-to-device copies). Here each op's forward+backward is
captured once, new values are copied into the static inputs, the graph is replayed, and the output and
every gradient are compared with an eager call on the same values: within 1e-6 relative RMS (the same
kernels on the same inputs; no atomics, so in practice bitwise).
"""

import pytest
import torch

from lolcats_lab.kernels import (
    triton_hedgehog_hybrid_attn,
    triton_hedgehog_linear_attn,
    triton_hybrid_attn,
    triton_linear_attn,
)
from tests.tolerances import rel_rms

pytestmark = pytest.mark.gpu

B, H, KH, T, D, f = 1, 4, 2, 1000, 128, 64  # T not a multiple of the tile; grouped-query keys where the op takes them
TOL = 1e-6


def _inputs(op: str, g: torch.Generator) -> list[torch.Tensor]:
    def r(*shape, pos=False):
        x = torch.rand(*shape, generator=g) if pos else torch.randn(*shape, generator=g)
        return x.to("cuda", torch.bfloat16)

    if op == "linear":
        return [r(B, H, T, 2 * f, pos=True), r(B, KH, T, 2 * f, pos=True), r(B, KH, T, D)]
    w = [(0.1 * torch.randn(H, D, f, generator=g)).cuda() for _ in range(2)]
    logit = torch.full((H,), -1.0).cuda()
    if op in ("hedgehog_staged", "hedgehog_fused"):
        return [r(B, H, T, D), r(B, KH, T, D), r(B, KH, T, D), *w]
    if op == "hybrid":
        return [r(B, H, T, D), r(B, KH, T, D), r(B, KH, T, D), r(B, H, T, 2 * f, pos=True),
                r(B, H, T, 2 * f, pos=True), logit]  # fmt: skip
    return [r(B, H, T, D), r(B, H, T, D), r(B, KH, T, D), *w, logit]  # hedgehog_hybrid: k per query head


OPS = {
    "linear": triton_linear_attn,
    "hedgehog_staged": lambda *x: triton_hedgehog_linear_attn(*x, fuse_map=False),
    "hedgehog_fused": lambda *x: triton_hedgehog_linear_attn(*x, fuse_map=True),
    "hybrid": lambda *x: triton_hybrid_attn(*x, window=64, kind="tk"),
    "hedgehog_hybrid": lambda *x: triton_hedgehog_hybrid_attn(*x, window=64, kind="tk"),
}


@pytest.mark.parametrize("op", list(OPS))
def test_gpu_captured_forward_backward_equals_eager(op):
    fn = OPS[op]
    g = torch.Generator().manual_seed(0)
    static = [x.requires_grad_() for x in _inputs(op, g)]
    do = torch.randn(B, H, T, D, generator=g).to("cuda", torch.bfloat16)

    def step():
        for x in static:
            x.grad = None
        y = fn(*static)
        y.backward(do)
        return y

    side = torch.cuda.Stream()  # warm-up (compiles, autotunes) off the capture stream, as torch.cuda.graph asks
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = step()
    fresh = _inputs(op, torch.Generator().manual_seed(1))
    with torch.no_grad():
        for x, new in zip(static, fresh):
            x.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    replayed = [y_static.detach().clone()] + [x.grad.detach().clone() for x in static]

    leaves = [new.clone().requires_grad_() for new in fresh]
    y = fn(*leaves)
    y.backward(do)
    eager = [y.detach()] + [x.grad for x in leaves]
    names = ["y"] + [f"grad {i}" for i in range(len(leaves))]
    for name, a, b in zip(names, eager, replayed):
        assert torch.isfinite(b).all(), f"{op}: {name} not finite after replay"
        assert rel_rms(a.float(), b.float()) <= TOL, f"{op}: {name} differs from eager: {rel_rms(a.float(), b.float())}"
    # the replay must have used the new values, not the warm-up's
    y_warm_up_inputs = fn(*[x.detach() for x in _inputs(op, torch.Generator().manual_seed(0))])
    assert rel_rms(replayed[0].float(), y_warm_up_inputs.float()) > 1e-2
