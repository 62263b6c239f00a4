"""The fused Hedgehog op's forward+backward at each warps x stages launch config, beside fla's chunk kernel.

The three linear-attention kernels (forward, dq, dk/dv) autotune over kernels/linear_attn.py's _CONFIGS
(8 warps x 3 stages, 8 x 2, 4 x 2). Nsight Compute at 16k (``gpu_session.sh ncu-hedgehog``) shows the fused
kernels with 8 warps and 131-164 KB of shared memory, one program per SM, where the linear op on
precomputed features runs its forward and dq kernels with 4 warps and 49 KB, two per SM. This pins each
config in turn (every one of the three kernels gets only that candidate) and times bench_attention.py's
``triton_hedgehog_fused_f64`` (the fused form, fuse_map=True; batch 1, 32 heads, head dim 128, f = 64, bf16,
map gradients included), then ``fla_chunk`` once per length in the same process, so ratios are within one
run.

    python benchmarks/sweep_hedgehog_configs.py --lengths 8192 16384 --out results/<device>-hedgehog-configs.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_attention import environment, make_providers, time_provider  # noqa: E402

CONFIGS = [(8, 3), (8, 2), (4, 2), (8, 1), (4, 1), (4, 3)]


def pin_configs(warps: int, stages: int) -> None:
    """Give each linear-attention kernel's autotuner the one candidate (warps, stages) and drop every
    remembered choice, so the next call compiles and runs exactly that config."""
    import triton

    import lolcats_lab.kernels.linear_attn as la
    from lolcats_lab.kernels._launch import forget_choices

    for kernel in (la.linear_attn_fwd_kernel, la.linear_attn_bwd_dq_kernel, la.linear_attn_bwd_dkv_kernel):
        kernel.configs = [triton.Config({}, num_warps=warps, num_stages=stages)]
        kernel.cache.clear()
    forget_choices()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("sweep_hedgehog_configs.py needs a CUDA GPU; nothing to do here.")
        return 0
    providers = make_providers()
    rows = []
    for T in args.lengths:
        if "fla_chunk" in providers:
            make, fn, _ = providers["fla_chunk"]
            ms, _ = time_provider(make, fn, T, "fwd+bwd")
            rows.append(dict(T=T, provider="fla_chunk", ms=ms))
            print(f"T {T:>6}  fla_chunk             {ms:7.3f} ms", flush=True)
        make, fn, _ = providers["triton_hedgehog_fused_f64"]
        for warps, stages in CONFIGS:
            pin_configs(warps, stages)
            try:
                ms, peak = time_provider(make, fn, T, "fwd+bwd")
            except Exception as err:  # e.g. out of shared memory at this config
                rows.append(dict(T=T, provider="triton_hedgehog_fused_f64", num_warps=warps, num_stages=stages,
                                 error=f"{type(err).__name__}: {str(err)[:200]}"))  # fmt: skip
                print(f"T {T:>6}  hedgehog {warps} warps x {stages} stages: {type(err).__name__}", flush=True)
                continue
            rows.append(dict(T=T, provider="triton_hedgehog_fused_f64", num_warps=warps, num_stages=stages, ms=ms,
                             peak_MiB=peak))  # fmt: skip
            print(f"T {T:>6}  hedgehog {warps} warps x {stages} stages  {ms:7.3f} ms", flush=True)
    if args.out:
        args.out.write_text(json.dumps(dict(env=environment(), mode="fwd+bwd", rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
