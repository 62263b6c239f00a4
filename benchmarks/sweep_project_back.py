"""The projection-backward kernel (kernels/hedgehog_project.py) by launch config, beside the cuBLAS form, on the GPU.

For both maps of bench_attention.py's Hedgehog op (bf16, batch 1, 32 heads, head dim 128, f = 64, fp32 weights;
dz as the staged backward writes it) at each length: the median device time (triton.testing.do_bench) of
``project_back_maps`` for every tile x warps x stages x programs-per-SM config, and of
``hedgehog_map.project_back`` twice (4 GEMMs), each checked against the fp32 einsum first.

    python benchmarks/sweep_project_back.py --lengths 4096 16384 --out gpu-out/sweep-project-back.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_attention import environment, rel_rms  # noqa: E402

CONFIGS = list(itertools.product((32, 64, 128), (4, 8), (2,), (1, 2, 4)))  # BT, warps, stages, per SM


def main(argv=None) -> int:
    import triton

    import lolcats_lab.kernels._launch as launch_module
    import lolcats_lab.kernels.hedgehog_project as hp
    from lolcats_lab.kernels.hedgehog_map import project_back

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    B, H, K, f = 1, 32, 128, 64
    rows = []
    for T in args.lengths:
        g = torch.Generator().manual_seed(T)
        maps = []
        for _ in range(2):
            x = torch.randn(B, H, T, K, generator=g).to("cuda", torch.bfloat16)
            w = (0.1 * torch.randn(H, K, f, generator=g)).cuda()
            dz = (0.1 * torch.randn(B, H, T, f, generator=g)).to("cuda", torch.bfloat16)
            maps.append((dz, x, w, True, True))
        want = [(torch.einsum("bhtf,hkf->bhtk", dz.float(), w), torch.einsum("bhtk,bhtf->hkf", x.float(), dz.float()))
                for dz, x, w, _, _ in maps]  # fmt: skip

        def check(got):
            return max(rel_rms(a, b) for pair_w, pair_g in zip(want, got) for a, b in zip(pair_w, pair_g))

        cublas = lambda: [project_back(dz, x, w) for dz, x, w, _, _ in maps]  # noqa: E731
        row = dict(T=T, cublas_ms=triton.testing.do_bench(cublas, return_mode="median"), cublas_err=check(cublas()))
        print(json.dumps(row), flush=True)
        rows.append(row)
        for bt, warps, stages, per_sm in CONFIGS:
            hp._BT, hp._NUM_WARPS, hp._STAGES, hp._PROGRAMS_PER_SM = bt, warps, stages, per_sm
            launch_module.forget_choices()
            kernel = lambda: hp.project_back_maps(maps)  # noqa: E731
            try:
                err = check(kernel())
                ms = triton.testing.do_bench(kernel, return_mode="median")
            except Exception as exc:  # e.g. out of shared memory for a config
                row = dict(T=T, BT=bt, warps=warps, stages=stages, per_sm=per_sm, error=str(exc)[:200])
            else:
                row = dict(T=T, BT=bt, warps=warps, stages=stages, per_sm=per_sm, ms=ms, err=err)
            print(json.dumps(row), flush=True)
            rows.append(row)
    best = {}
    for r in rows:
        if "ms" in r and (r["T"] not in best or r["ms"] < best[r["T"]]["ms"]):
            best[r["T"]] = r
    print("best:", json.dumps(best))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(env=environment(), shape=dict(B=B, H=H, K=K, f=f), rows=rows,
                                            best=best), indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
