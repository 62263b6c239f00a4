"""The projection-backward kernel (kernels/hedgehog_project.py) by launch config, beside the cuBLAS form, on the GPU.

For both maps of bench_attention.py's Hedgehog op (bf16, batch 1, 32 heads, head dim 128, f = 64, fp32 weights;
dz as the staged backward writes it) at each length: the median device time (triton.testing.do_bench) of
``project_back_maps`` for every tile x warps x stages x programs-per-SM config, and of
``hedgehog_map.project_back`` twice (4 GEMMs), each checked against the fp32 einsum first.

    python benchmarks/sweep_project_back.py --lengths 4096 16384 --out gpu-out/sweep-project-back.json

Grouped-query keys (the k map reads KH < H x heads; the kernel sums dx over each x head's query heads):
``--kv-heads 8 --grouped-warps 4 8`` times the grouped build (``_NUM_WARPS_GROUPED``) at each warp count, 64-token
tiles and 2 programs per SM, instead of the config grid. ``--head-dim 32 --no-dw --allow-narrow`` checks the
build the kernel refuses (grouped x heads at head dims up to 32, wrong dx on an H100 in session 19) with the
weight gradients off, i.e. without the dW dot that shares dz's tile with the dx dots.
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
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run under TRITON_INTERPRET=1 (fp16 there)")
    ap.add_argument("--kv-heads", type=int, default=32, help="x heads of the k map (32 query heads)")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--grouped-warps", type=int, nargs="*", default=[],
                    help="with --kv-heads < 32: time the grouped build at these warp counts instead of the grid")
    ap.add_argument("--no-dw", action="store_true", help="dx only (no weight gradients)")
    ap.add_argument("--allow-narrow", action="store_true", help="lift the kernel's refusal of grouped head dims < 64")
    args = ap.parse_args(argv)
    B, H, K, f, KH = args.batch, 32, args.head_dim, 64, args.kv_heads
    need_dw = not args.no_dw
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float16  # the interpreter's bf16 dots are wrong
    bench = triton.testing.do_bench if args.device == "cuda" else (lambda fn, **kw: float("nan"))
    if args.allow_narrow:
        hp._GROUPED_MIN_BK = 0
    rows = []
    for T in args.lengths:
        g = torch.Generator().manual_seed(T)
        maps = []
        for heads in (H, KH):  # the q map, then the k map (grouped when KH < H)
            x = torch.randn(B, heads, T, K, generator=g).to(args.device, dtype)
            w = (0.1 * torch.randn(H, K, f, generator=g)).to(args.device)
            dz = (0.1 * torch.randn(B, H, T, f, generator=g)).to(args.device, dtype)
            maps.append((dz, x, w, True, need_dw))
        want = []
        for dz, x, w, _, _ in maps:  # fp32 einsums: dx summed over each x head's query heads, dW per query head
            G = H // x.shape[1]
            x_rep = x.float().repeat_interleave(G, 1)  # [B, H, T, K]
            dx = torch.einsum("bhtf,hkf->bhtk", dz.float(), w).view(B, x.shape[1], G, T, K).sum(2)
            want.append((dx, torch.einsum("bhtk,bhtf->hkf", x_rep, dz.float()) if need_dw else None))

        def check(got):
            return max(rel_rms(a, b) for pair_w, pair_g in zip(want, got) for a, b in zip(pair_w, pair_g)
                       if a is not None)  # fmt: skip

        cublas = lambda: [project_back(dz, x, w, need_dw=need_dw) for dz, x, w, _, _ in maps]  # noqa: E731
        row = dict(T=T, cublas_ms=bench(cublas, return_mode="median"), cublas_err=check(cublas()))
        print(json.dumps(row), flush=True)
        rows.append(row)
        configs = [(64, w, 2, 2) for w in args.grouped_warps] if args.grouped_warps else CONFIGS
        for bt, warps, stages, per_sm in configs:
            hp._BT, hp._NUM_WARPS, hp._STAGES, hp._PROGRAMS_PER_SM = bt, warps, stages, per_sm
            hp._NUM_WARPS_GROUPED = warps
            launch_module.forget_choices()
            kernel = lambda: hp.project_back_maps(maps)  # noqa: E731
            try:
                err = check(kernel())
                ms = bench(kernel, return_mode="median")
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
        shape = dict(B=B, H=H, KH=KH, K=K, f=f, need_dw=need_dw, allow_narrow=args.allow_narrow)
        args.out.write_text(json.dumps(dict(env=environment(), shape=shape, rows=rows, best=best), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
