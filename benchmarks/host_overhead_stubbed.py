"""Host time of the launch path around the Triton kernels, on a CPU machine: every kernel launch stubbed out.

The GPU's kernels are not run at all (their launches return at once); what is timed is everything else one
forward+backward of the 8B stage-2 attention call does on the host: argument checks, launch plans, output
allocations, autograd, and the small PyTorch ops between kernels. Below 8k tokens the kernels wait on
exactly this (benchmarks/README.md, profile_kernels.py --host on the GPU), so a change to it can be
compared here, as a ratio within one run, without a GPU. It is not the GPU machine's host time: PyTorch ops
here compute on the CPU (on a GPU they only queue a kernel) and Triton's own launcher is not called.

    python benchmarks/host_overhead_stubbed.py                 # T = 64, 200 calls x 5 repeats
    python benchmarks/host_overhead_stubbed.py --out benchmarks/results/host-overhead-cpu.json
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


def stub_launches() -> None:
    """Make every kernel launch a no-op: ``kernel[grid](...)`` for jit, interpreted and autotuned kernels,
    and kernels/_launch.launch (imported by name into the kernel modules)."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    for cls in (JITFunction, InterpretedFunction, Autotuner):
        cls.__getitem__ = lambda self, grid: (lambda *args, **kwargs: None)
    import lolcats_lab.kernels.hedgehog_hybrid  # noqa: F401  (imports the modules below)
    import lolcats_lab.kernels.hybrid_window_split  # noqa: F401

    for name, module in list(sys.modules.items()):
        if name.startswith("lolcats_lab.kernels") and hasattr(module, "launch"):
            module.launch = lambda kernel, grid, *args, **kwargs: None


def stage2_call(T: int):
    """One forward+backward of a converted Llama-3-8B layer's attention at batch 1 on the CPU: profile_kernels.py's
    "stage2_layer" (the GQA repeat and the one-op maps + hybrid; gradients for q, k, v)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from profile_kernels import N_GRAD, fwd_bwd_call, stage2_providers

    make, fn, _ = stage2_providers("cpu", B=1)["stage2_layer"]
    return fwd_bwd_call(make, fn, T, N_GRAD["stage2_layer"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=64, help="tokens (small: CPU allocations stay cheap)")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    stub_launches()
    call = stage2_call(args.T)
    for _ in range(20):
        call()
    us = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.calls):
            call()
        us.append((time.perf_counter() - t0) / args.calls * 1e6)
    us.sort()
    print(f"host us per forward+backward, launches stubbed (T={args.T}): min {us[0]:.0f}, median {us[len(us) // 2]:.0f}")
    if args.out:
        args.out.write_text(json.dumps(dict(T=args.T, calls=args.calls, us_per_call=[round(u, 1) for u in us],
                                            cpu=platform.processor() or platform.machine(), torch=torch.__version__),
                                       indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
