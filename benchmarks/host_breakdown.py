"""Where an op's host time goes on the GPU machine: one eager forward+backward with parts of its launch path
taken away, each timed as graphed_vs_eager.host_ms times it (calls issued back to back, timed before the
synchronise), all in one process.

Variants, per op (bench_attention.py's providers and shapes: bf16, batch 1, 32 heads, head dim 128):
    full         as a user runs it
    stand_in     every kept compiled kernel's ``run`` returns at once (kernels/_launch.py): all but Triton's
                 C launcher and the driver's launch
    no_launch    every ``launch`` / ``launch_jit`` returns at once: no argument signature, lookup or launch,
                 only our Python, PyTorch's ops and allocations and autograd
So full - stand_in is the launcher's share, stand_in - no_launch the signature and lookup. Unit costs are
timed too (``micro``): a CUDA allocation, a small elementwise op, a sum, and the forward+backward of an
autograd.Function that does nothing.

``--loop S``: run one op's forward+backward for S seconds inside ``_spin`` and nothing else (for a sampling
profiler: ``py-spy record --native -f raw -- python3 benchmarks/host_breakdown.py --loop 6 --op hybrid``;
keep the stacks through ``_spin``).

    python benchmarks/host_breakdown.py --T 4096 --out gpu-out/host-breakdown.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import StandInKernel  # noqa: E402
from graphed_vs_eager import host_ms  # noqa: E402

OPS = {"sdpa": "sdpa", "linear": "triton_linear", "hedgehog": "triton_hedgehog_f64", "hybrid": "triton_hybrid_tk"}
CALLS = 20  # calls per sample


def host_us(run, samples: int = 7, calls: int = CALLS) -> float:
    """Median host microseconds per call (graphed_vs_eager.host_ms: calls back to back, timed before
    synchronising)."""
    return round(host_ms(run, samples, calls) * 1e3, 1)


def _kernel_modules():
    return [m for name, m in sys.modules.items() if name.startswith("lolcats_lab.kernels") and m is not None]


def variants(run) -> dict:
    """host_us of ``run`` as is, with stand-in kept kernels, and with every launch a no-op; launches per call."""
    import lolcats_lab.kernels._launch as L

    out = dict(full_us=host_us(run))
    kept = dict(L._COMPILED)
    L._COMPILED.clear()
    L._COMPILED.update({k: (StandInKernel(), tail) for k, (_, tail) in kept.items()})
    StandInKernel.runs = 0
    run()
    out["kept_launches_per_call"] = StandInKernel.runs
    out["stand_in_us"] = host_us(run)
    L._COMPILED.clear()
    L._COMPILED.update(kept)
    saved = []
    for m in _kernel_modules():
        for name in ("launch", "launch_jit"):
            if hasattr(m, name):
                saved.append((m, name, getattr(m, name)))
                setattr(m, name, lambda *a, **k: None)
    try:
        out["no_launch_us"] = host_us(run)
    finally:
        for m, name, fn in saved:
            setattr(m, name, fn)
    return out


def micro(T: int) -> dict:
    """Unit host costs in microseconds on this machine (CUDA tensors, bf16)."""
    x = torch.randn(1, 32, T, 128, device="cuda", dtype=torch.bfloat16)
    logit = torch.zeros(32, device="cuda")
    rows = torch.randn(1, 32, T, device="cuda")

    class Nothing(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            return a.view_as(a)

        @staticmethod
        def backward(ctx, g):
            return g

    a = torch.randn(4, device="cuda", requires_grad=True)
    g = torch.ones(4, device="cuda")

    def autograd_nothing():
        a.grad = None
        Nothing.apply(a).backward(g)

    cases = {
        "new_empty_BHTD": lambda: x.new_empty(1, 32, T, 128),
        "torch_empty_BHTD": lambda: torch.empty(1, 32, T, 128, device="cuda", dtype=torch.bfloat16),
        "sigmoid_H": lambda: torch.sigmoid(logit),
        "sum_rows": lambda: rows.sum(dim=2),
        "data_ptr_x25": lambda: [x.data_ptr() for _ in range(25)],
        "autograd_function_fwd_bwd": autograd_nothing,
    }
    return {name: host_us(fn, calls=200) for name, fn in cases.items()}


def _spin(run, seconds: float) -> int:
    n, t_end = 0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        for _ in range(CALLS):
            run()
        torch.cuda.synchronize()
        n += CALLS
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    ap.add_argument("--loop", type=float, help="seconds of one op's forward+backward (with --op), for a profiler")
    ap.add_argument("--op", choices=list(OPS), default="hybrid")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("host_breakdown.py needs a CUDA GPU; nothing to do here.")
        return 0
    from bench_attention import environment, make_providers
    from profile_kernels import fwd_bwd_call

    providers = make_providers()
    if args.loop:
        make, fn, _ = providers[OPS[args.op]]
        run = fwd_bwd_call(make, fn, args.T)
        for _ in range(5):
            run()
        print(f"{args.op}: {_spin(run, args.loop)} calls in {args.loop} s")
        return 0
    out = dict(env=environment(), what=__doc__.split("\n\n")[0], T=args.T, calls=CALLS, ops={})
    for op in args.ops:
        make, fn, _ = providers[OPS[op]]
        run = fwd_bwd_call(make, fn, args.T)
        for _ in range(5):
            run()
        torch.cuda.synchronize()
        out["ops"][op] = variants(run) if op != "sdpa" else dict(full_us=host_us(run))
        print(op, out["ops"][op], flush=True)
    out["micro_us"] = micro(args.T)
    print("micro", out["micro_us"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
