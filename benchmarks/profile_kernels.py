"""Where the time of one forward+backward goes: GPU time per kernel vs the host's wall time.

For each op (linear on features, fused Hedgehog f=64, hybrid tk; the bench_attention.py shapes: bf16, batch 1,
32 heads, head dim 128, 128 features) and length, one fwd+bwd runs under ``torch.profiler`` after warm-up.
Printed and written as JSON: each kernel's summed device time, the sum over kernels, and the wall time of
the same call measured with CUDA events. When the wall time is well above the kernel sum the op is bound by
launch overhead (Python, autotune lookup, argument checks), not by its kernels.

    python benchmarks/profile_kernels.py --lengths 1024 16384 --out benchmarks/results/profile.json

``--host``: also run each op's fwd+bwd 200 times under cProfile at the first length (the GPU keeps up at
1k, so this is the host's share) and record the functions with the most own time: which part of the
launch path (ours, autograd, Triton's launcher, the autotuner) the wall time goes to.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import device_ms_per_op  # noqa: E402
from bench_attention import environment, make_providers  # noqa: E402

OPS = ("triton_linear", "triton_hedgehog_f64", "triton_hybrid_tk", "sdpa")


def fwd_bwd_call(make, fn, T):
    """A no-argument callable running one forward+backward of ``fn`` on inputs ``make(T)`` (fixed dy)."""
    xs = [x.requires_grad_() if x.is_floating_point() else x for x in make(T)]
    do = torch.randn_like(fn(*xs))

    def run():
        for x in xs:
            x.grad = None
        fn(*xs).backward(do)

    return run


def profile_one(make, fn, T):
    run = fwd_bwd_call(make, fn, T)
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 20
    start.record()
    for _ in range(reps):
        run()
    end.record()
    torch.cuda.synchronize()
    wall_ms = start.elapsed_time(end) / reps
    return wall_ms, device_ms_per_op(run, cuda=True)


def host_profile(make, fn, T, reps=200, top=20):
    """cProfile over ``reps`` fwd+bwd calls: host microseconds per call, total and per function (own time),
    the ``top`` functions."""
    import cProfile
    import pstats
    import time

    run = fwd_bwd_call(make, fn, T)
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        run()
    host_us = (time.perf_counter() - t0) / reps * 1e6  # the launches return before the GPU finishes
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(reps):
        run()
    prof.disable()
    torch.cuda.synchronize()
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, ncalls, own s, cumulative s, callers)
    rows = sorted(((own, n, f"{Path(k[0]).name}:{k[1]}:{k[2]}") for k, (_, n, own, _, _) in stats.items()), reverse=True)
    return dict(host_us_per_call=round(host_us, 1),
                top_own_us_per_call={name: round(own / reps * 1e6, 2) for own, _, name in rows[:top]})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="*", default=[1024, 16384])
    ap.add_argument("--ops", nargs="*", default=list(OPS))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--host", action="store_true", help="cProfile of the host side at the first length")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_kernels.py needs a CUDA GPU; nothing to do here.")
        return 0
    P = make_providers()
    rows = []
    for name in args.ops:
        make, fn, _ = P[name]
        for T in args.lengths:
            wall, kernels = profile_one(make, fn, T)
            total = sum(kernels.values())
            rows.append(dict(op=name, T=T, wall_ms=wall, kernel_sum_ms=total, kernels_ms=kernels))
            print(f"{name:<22} T={T:>6} wall {wall:8.3f} ms  kernels {total:8.3f} ms")
            for k, ms in list(kernels.items())[:8]:
                print(f"    {ms:8.3f} ms  {k[:100]}")
    host = {}
    if args.host:
        for name in args.ops:
            make, fn, _ = P[name]
            host[name] = h = host_profile(make, fn, args.lengths[0])
            print(f"{name:<22} T={args.lengths[0]:>6} host {h['host_us_per_call']:8.1f} us per fwd+bwd")
            for k, us in list(h["top_own_us_per_call"].items())[:12]:
                print(f"    {us:8.2f} us  {k}")
    if args.out:
        args.out.write_text(json.dumps(dict(env=environment(), rows=rows, host=host), indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
