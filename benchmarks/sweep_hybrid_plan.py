"""Sweep the hybrid kernels' launch settings at one shape: warps x pipeline stages x tile x segment plan
(``--map``: the Hedgehog map kernels' tile, warps, stages and programs per SM instead).

The autotuner of ``kernels/hybrid_attn.py`` chooses between two configs by timing the first call; the
segment plan (``kernels/segments.py``) follows a model of waves. This script times each hybrid kernel
separately (GPU time per kernel from ``torch.profiler``, summed over ``--reps`` forward+backward calls)
for every combination, so a plan can be chosen per kernel from measurements rather than the model. The
default shape is the 8B stage-2 one (issue 8): batch 4, 32 heads, 1,024 tokens, head dim 128, Hedgehog
64 -> 128 features, tk window 64, bf16, k/v heads already repeated (as the converted model passes them).

    python benchmarks/sweep_hybrid_plan.py --out benchmarks/results/<device>-sweep-hybrid.json
    python benchmarks/sweep_hybrid_plan.py --map --out benchmarks/results/<device>-sweep-map.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import device_ms_per_op, err_str  # noqa: E402


def hybrid_inputs(B, H, T, D, F, device, seed=0):
    """q, k, v [B, H, T, D] bf16 (unit scale, as after RoPE), fq, fk positive like Hedgehog outputs
    (each half sums to 1), window logits at logit(0.1); all with gradients."""
    g = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, device=device, generator=g).bfloat16() for _ in range(3))
    fq, fk = (torch.softmax(torch.randn(B, H, T, 2, F // 2, device=device, generator=g), -1).flatten(-2).bfloat16()
              for _ in range(2))  # fmt: skip
    logit = torch.full((H,), -2.197, device=device)
    return [x.requires_grad_() for x in (q, k, v, fq, fk, logit)]


def forced_launch(num_warps, num_stages):
    """A stand-in for kernels/_launch.launch that skips the autotuner and launches with these options."""

    def launch(kernel, grid, *args, **kwargs):
        kernel.fn[grid](*args, **kwargs, num_warps=num_warps, num_stages=num_stages)

    return launch


def sweep_map(B, H, T, reps, write_dz=False):
    """Forward and backward of the Triton Hedgehog map at [B, H, T, 128] with f = 64 over tile x warps x stages x
    programs per SM; GPU ms per call of each kernel. The backward adds dx into the attention's (a frozen map,
    as in stage 2), or with ``write_dz`` writes dz for the projection's GEMMs (the staged linear op)."""
    import triton

    import lolcats_lab.kernels.hedgehog_map as hm

    x = torch.randn(B, H, T, 128, device="cuda").bfloat16().requires_grad_()
    w = torch.randn(H, 128, 64, device="cuda") / 128**0.5
    dphi = torch.randn(B, H, T, 128, device="cuda").bfloat16()
    dx = torch.randn(B, H, T, 128, device="cuda").bfloat16()  # the attention's part of x's gradient
    saved = (hm._BT_FWD, hm._BT_BWD, hm._NUM_WARPS, hm._STAGES_FWD, hm._STAGES_BWD, hm._WARPS_ADD_DX, hm._STAGES_ADD_DX,
             hm._PROGRAMS_PER_SM, hm._PROGRAMS_PER_SM_ADD_DX)
    rows = []
    try:
        for bt, warps, stages, per_sm in itertools.product((64, 128), (4, 8), (1, 2, 3), (1, 2, 4, 64)):
            hm._BT_FWD = hm._BT_BWD = bt
            hm._NUM_WARPS, hm._WARPS_ADD_DX = warps, warps
            hm._PROGRAMS_PER_SM = hm._PROGRAMS_PER_SM_ADD_DX = per_sm
            hm._STAGES_FWD = hm._STAGES_BWD = hm._STAGES_ADD_DX = stages
            row = dict(tile=bt, num_warps=warps, num_stages=stages, programs_per_sm=per_sm)
            try:
                fwd = triton.testing.do_bench(lambda: hm.map_forward(x, w), return_mode="median")
                if write_dz:
                    bwd = triton.testing.do_bench(lambda: hm.map_backward(x, w, dphi), return_mode="median")
                else:
                    bwd = triton.testing.do_bench(lambda: hm.map_backward(x, w, dphi, dx=dx, need_dz=False),
                                                  return_mode="median")  # fmt: skip
                row.update(fwd_ms=round(fwd, 4), bwd_dz_ms=round(bwd, 4))
            except Exception as err:
                row["error"] = err_str(err)
            rows.append(row)
            print(f"map tile {bt} warps {warps} stages {stages} per_sm {per_sm:>2}: "
                  + (f"fwd {row['fwd_ms']:.4f} ms  bwd {row['bwd_dz_ms']:.4f} ms" if "fwd_ms" in row
                     else row["error"][:200]), flush=True)  # fmt: skip
    finally:
        (hm._BT_FWD, hm._BT_BWD, hm._NUM_WARPS, hm._STAGES_FWD, hm._STAGES_BWD, hm._WARPS_ADD_DX, hm._STAGES_ADD_DX,
         hm._PROGRAMS_PER_SM, hm._PROGRAMS_PER_SM_ADD_DX) = saved
    ok = [r for r in rows if "fwd_ms" in r]
    if ok:
        print("best fwd:", min(ok, key=lambda r: r["fwd_ms"]))
        print("best bwd:", min(ok, key=lambda r: r["bwd_dz_ms"]))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warps", type=int, nargs="*", default=[8, 4])
    ap.add_argument("--stages", type=int, nargs="*", default=[1, 2, 3])
    ap.add_argument("--chunks", type=int, nargs="*", default=[32, 64], help="tile sizes (chunk_size)")
    ap.add_argument("--segment-chunks", type=int, nargs="*", default=[0, 16, 8],
                    help="query tiles per segment; 0 = the automatic plan")  # fmt: skip
    ap.add_argument("--map", action="store_true", help="sweep the Hedgehog map kernels instead")
    ap.add_argument("--map-write-dz", action="store_true",
                    help="with --map: the backward writes dz (the staged linear op) instead of adding into dx")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("sweep_hybrid_plan.py needs a CUDA GPU; nothing to do here.")
        return 0
    from bench_attention import environment

    if args.map:
        rows = sweep_map(args.batch, args.heads, args.length, args.reps, write_dz=args.map_write_dz)
        if args.out:
            shape = dict(batch=args.batch, heads=args.heads, length=args.length, head_dim=128, f=64, dtype="bf16",
                         backward="write dz" if args.map_write_dz else "add dx")  # fmt: skip
            args.out.write_text(json.dumps(dict(env=environment(), shape=shape, rows=rows), indent=1))
            print(f"wrote {args.out}")
        return 0
    import lolcats_lab.kernels.hybrid_attn as ha

    B, H, T = args.batch, args.heads, args.length
    xs = hybrid_inputs(B, H, T, 128, 128, "cuda")
    dy = torch.randn(B, H, T, 128, device="cuda").bfloat16()
    real_launch = ha.launch
    rows = []
    try:
        for chunk, warps, stages, cps in itertools.product(args.chunks, args.warps, args.stages, args.segment_chunks):
            ha.launch = forced_launch(warps, stages)

            def step():
                for x in xs:
                    x.grad = None
                y = ha.hybrid_attn(*xs, window=64, kind="tk", chunk_size=chunk, segment_chunks=cps or None)
                y.backward(dy)

            row = dict(chunk=chunk, num_warps=warps, num_stages=stages, segment_chunks=cps or "auto")
            try:
                for _ in range(3):
                    step()
                torch.cuda.synchronize()
                per_kernel = device_ms_per_op(lambda: [step() for _ in range(args.reps)], cuda=True)
                per_kernel = {k: round(ms / args.reps, 4) for k, ms in per_kernel.items()}
                row["kernels_ms"] = per_kernel
                row["hybrid_ms"] = round(sum(ms for k, ms in per_kernel.items() if k.startswith("hybrid_")), 4)
                row["all_ms"] = round(sum(per_kernel.values()), 4)
            except Exception as err:  # a config that does not compile or run (shared memory, registers)
                row["error"] = err_str(err)
            rows.append(row)
            short = {k.replace("hybrid_attn_", "").replace("_kernel", ""): v
                     for k, v in row.get("kernels_ms", {}).items() if "segment" in k or "hybrid" in k}  # fmt: skip
            print(f"chunk {chunk} warps {warps} stages {stages} seg {cps or 'auto':>4}: "
                  + (f"hybrid {row['hybrid_ms']:.3f} ms, all {row['all_ms']:.3f} ms {short}" if "hybrid_ms" in row
                     else row["error"][:200]), flush=True)  # fmt: skip
    finally:
        ha.launch = real_launch
    ok = [r for r in rows if "all_ms" in r]
    if ok:
        best = min(ok, key=lambda r: r["all_ms"])
        print("best (all kernels):", {k: v for k, v in best.items() if k != "kernels_ms"})
    if args.out:
        shape = dict(batch=B, heads=H, length=T, head_dim=128, features=128, window=64, kind="tk", dtype="bf16")
        args.out.write_text(json.dumps(dict(env=environment(), shape=shape, reps=args.reps, rows=rows), indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
