"""Host time of the launch path around the Triton kernels, on a CPU machine: every kernel launch stubbed out.

The GPU's kernels are not run at all (their launches return at once); what is timed is everything else one
forward+backward of the 8B stage-2 attention call does on the host: argument checks, launch plans, output
allocations, autograd, and the small PyTorch ops between kernels. Below 8k tokens the kernels wait on
exactly this (benchmarks/README.md, profile_kernels.py --host on the GPU), so a change to it can be
compared here, as a ratio within one run, without a GPU. It is not the GPU machine's host time: PyTorch ops
here compute on the CPU (on a GPU they only queue a kernel) and Triton's own launcher is not called.

    python benchmarks/host_overhead_stubbed.py                 # T = 64, 200 calls x 5 repeats
    python benchmarks/host_overhead_stubbed.py --out benchmarks/results/host-overhead-cpu.json
    python benchmarks/host_overhead_stubbed.py --kept --op hybrid   # bench_attention.py's hybrid, launch path timed

Each run also counts the PyTorch operators one call dispatches (``aten_ops``: views and allocations too).

``--kept``: instead of stubbing ``launch``, every lookup of kernels/_launch.py's kept compiled kernels hits a
stand-in whose ``run`` returns at once, so the argument signatures, the lookup and the argument packing
of each launch are timed too (on the GPU machine about 20 us of signature per launch, session 9's host
profile). ``--op``: "stage2" (default, above), or bench_attention.py's "hybrid" (tk window 64) / "linear"
(precomputed features) / "hedgehog" (the default Hedgehog op, f = 64) at its shapes (bf16, batch 1, 32
heads, head dim 128, 128 features), every input with a gradient. ``--gpu-plan``: segments as on an H100 /
H200 (8 segments at 4k tokens), so the launches are a GPU call's; ``--segments 8 --T 512``: the same launches
with small CPU allocations (at 4k tokens they take most of the time timed here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # CPU tensors pass the kernels' device checks; nothing is interpreted
sys.path.insert(0, str(Path(__file__).parent))
from _common import StandInKernel  # noqa: E402


def stub_launches(keep_launch: bool = False) -> None:
    """Make every kernel launch a no-op: ``kernel[grid](...)`` for jit, interpreted and autotuned kernels,
    and kernels/_launch.launch (imported by name into the kernel modules) unless ``keep_launch``."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    for cls in (JITFunction, InterpretedFunction, Autotuner):
        cls.__getitem__ = lambda self, grid: (lambda *args, **kwargs: None)
    import lolcats_lab.kernels.hedgehog_hybrid  # noqa: F401  (imports the modules below)
    import lolcats_lab.kernels.hybrid_window_split  # noqa: F401

    for name, module in list(sys.modules.items()) if not keep_launch else ():
        if name.startswith("lolcats_lab.kernels") and hasattr(module, "launch"):
            module.launch = lambda kernel, grid, *args, **kwargs: None


def keep_stand_in_kernels() -> None:
    """Let every launch through kernels/_launch.py run to its last step: each lookup finds a compiled
    kernel whose ``run`` returns at once (argument signature, lookup and packing are timed; no kernel runs)."""
    import torch

    import lolcats_lab.kernels._launch as launch_module

    class AlwaysKept(dict):
        def get(self, key, default=None):
            return StandInKernel(), ()

    launch_module._direct_ok = lambda: True
    launch_module._COMPILED = AlwaysKept()
    launch_module._raw_stream = lambda device: 0
    torch.cuda.current_device = lambda: 0


def plan_as_on_gpu(sms: int = 132) -> None:
    """Cut sequences into segments as on a GPU of ``sms`` multiprocessors (an H100 / H200 has 132), not as the
    CPU interpreter does (a few short segments): the launches and state buffers are then those of a GPU call
    (e.g. 8 segments at 4k tokens and 32 heads, where the interpreter's plan has one)."""
    from types import SimpleNamespace

    import lolcats_lab.kernels.segments as sg

    real = sg.plan_segments
    sg.multiprocessors = lambda device, *a: sms
    _patch_plan(real, lambda T, chunk_size, n_bh, device, segment_chunks=None: real(
        T, chunk_size, n_bh, SimpleNamespace(type="cuda"), segment_chunks
    ))  # fmt: skip


# --op -> bench_attention.py provider
def plan_segments_as(n_seg: int) -> None:
    """Cut every sequence into ``n_seg`` segments (as many as fit: at least one chunk each): a GPU call's launch
    structure at a small T, where the CPU allocations this script also times stay small (at T = 4096 they
    are tens of MB each here, and their time swamps the launch path's; on a GPU they come from a cache)."""
    import math

    import lolcats_lab.kernels.segments as sg

    real = sg.plan_segments

    def plan(T, chunk_size, n_bh, device, segment_chunks=None):
        n_chunks = max(1, math.ceil(T / chunk_size))
        return real(T, chunk_size, n_bh, device, segment_chunks or math.ceil(n_chunks / min(n_seg, n_chunks)))

    _patch_plan(real, plan)


def _patch_plan(real, plan) -> None:
    import lolcats_lab.kernels.hedgehog_linear  # noqa: F401  (imports linear_attn)
    import lolcats_lab.kernels.hybrid_attn  # noqa: F401
    import lolcats_lab.kernels.segments as sg

    sg.plan_segments = plan
    for name, module in list(sys.modules.items()):
        if name.startswith("lolcats_lab.kernels") and getattr(module, "plan_segments", None) is real:
            module.plan_segments = plan


BENCH_OPS = {"hybrid": "triton_hybrid_tk", "linear": "triton_linear", "hedgehog": "triton_hedgehog_f64"}


def bench_call(op: str, T: int):
    """One forward+backward of bench_attention.py's "hybrid" or "linear" provider on the CPU, every input with
    a gradient (profile_kernels.fwd_bwd_call)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_attention import make_providers
    from profile_kernels import fwd_bwd_call

    make, fn, _ = make_providers("cpu")[BENCH_OPS[op]]
    return fwd_bwd_call(make, fn, T)


def stage2_call(T: int):
    """One forward+backward of a converted Llama-3-8B layer's attention at batch 1 on the CPU: profile_kernels.py's
    "stage2_layer" (the GQA repeat and the one-op maps + hybrid; gradients for q, k, v)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from profile_kernels import N_GRAD, fwd_bwd_call, stage2_providers

    make, fn, _ = stage2_providers("cpu", B=1)["stage2_layer"]
    return fwd_bwd_call(make, fn, T, N_GRAD["stage2_layer"])


def count_aten_ops(call) -> dict[str, int]:
    """PyTorch operators one call dispatches (views, allocations, GEMMs, casts: each one host dispatch on the
    GPU machine too, whether or not it queues a kernel), by name, most frequent first."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func)] += 1
            return func(*args, **(kwargs or {}))

    with Count() as counter:
        call()
    return dict(counter.ops.most_common())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=64, help="tokens (small: CPU allocations stay cheap)")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--op", choices=["stage2", *BENCH_OPS], default="stage2")
    ap.add_argument("--gpu-plan", action="store_true", help="segment plans as on a 132-SM GPU (plan_as_on_gpu)")
    ap.add_argument("--segments", type=int, help="cut every sequence into this many segments (plan_segments_as)")
    ap.add_argument("--kept", action="store_true", help="time _launch's kept path too (stand-in compiled kernels)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    stub_launches(keep_launch=args.kept)
    if args.kept:
        keep_stand_in_kernels()
    if args.gpu_plan:
        plan_as_on_gpu()
    if args.segments:
        plan_segments_as(args.segments)
    call = stage2_call(args.T) if args.op == "stage2" else bench_call(args.op, args.T)
    for _ in range(20):
        call()
    runs_before = StandInKernel.runs
    call()
    launches = StandInKernel.runs - runs_before  # per call, through the kept path (0 without --kept)
    aten_ops = count_aten_ops(call)
    us = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.calls):
            call()
        us.append((time.perf_counter() - t0) / args.calls * 1e6)
    us.sort()
    what = "kept launch path timed, kernels stand-ins" if args.kept else "launches stubbed"
    print(f"host us per forward+backward of {args.op}, {what} (T={args.T}): min {us[0]:.0f}, "
          f"median {us[len(us) // 2]:.0f}" + (f"; {launches} launches per call" if args.kept else "")
          + f"; {sum(aten_ops.values())} PyTorch ops per call")  # fmt: skip
    if args.out:
        rec = dict(op=args.op, kept=args.kept, gpu_plan=args.gpu_plan, segments=args.segments, T=args.T,
                   calls=args.calls, us_per_call=[round(u, 1) for u in us],
                   kept_launches_per_call=launches, aten_ops_per_call=sum(aten_ops.values()), aten_ops=aten_ops,
                   cpu=platform.processor() or platform.machine(), torch=torch.__version__)  # fmt: skip
        args.out.write_text(json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
