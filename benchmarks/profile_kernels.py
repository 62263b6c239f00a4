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

OPS = ("triton_linear", "triton_hedgehog_f64", "triton_hybrid_tk", "sdpa", "stage2_layer", "stage2_sdpa")
# the 8B stage-2 attention call (bench_8b.py section c): batch 4, 32 query heads, 8 key/value heads, head dim 128,
# Hedgehog 64 -> 128 features, tk window 64; "stage2_layer" is what a converted layer runs (GQA repeat, then
# the one-op maps + hybrid), "stage2_sdpa" the softmax layer's SDPA on the same q, k, v
STAGE2 = dict(B=4, H=32, KVH=8, D=128, f=64, window=64)


def stage2_providers(dev: str = "cuda", B: int = STAGE2["B"]):
    """name -> (make_inputs(T), fn) for the stage-2 attention call on ``dev`` at batch ``B``, as make_providers'
    entries (no reference)."""
    import torch.nn.functional as Fn

    from lolcats_lab.kernels import triton_hedgehog_hybrid_attn

    H, KVH, D, f = (STAGE2[k] for k in ("H", "KVH", "D", "f"))
    rep = H // KVH

    def make(T):
        dt = torch.bfloat16
        q = torch.randn(B, T, H, D, device=dev, dtype=dt).transpose(1, 2).contiguous()  # [B, H, T, D]
        k, v = (torch.randn(B, T, KVH, D, device=dev, dtype=dt).transpose(1, 2) for _ in range(2))  # [B, KVH, T, D]
        w = [0.1 * torch.randn(H, D, f, device=dev) for _ in range(2)]
        return [q, k, v, *w, torch.full((H,), -2.0, device=dev)]

    def layer(q, k, v, wq, wk, logit):
        k, v = (x.repeat_interleave(rep, dim=1) for x in (k, v))  # [B, H, T, D]
        return triton_hedgehog_hybrid_attn(q, k, v, wq, wk, logit, window=STAGE2["window"], kind="tk")

    def sdpa(q, k, v, *_):
        return Fn.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    return {"stage2_layer": (make, layer, None), "stage2_sdpa": (make, sdpa, None)}


N_GRAD = {"stage2_layer": 3, "stage2_sdpa": 3}  # stage 2 trains LoRA: q, k, v get gradients, the maps do not


def fwd_bwd_call(make, fn, T, n_grad=None):
    """A no-argument callable running one forward+backward of ``fn`` on inputs ``make(T)`` (fixed dy), with a
    gradient for the first ``n_grad`` floating inputs (None: all)."""
    xs = make(T)
    n_grad = len(xs) if n_grad is None else n_grad
    xs = [x.requires_grad_() if x.is_floating_point() and i < n_grad else x for i, x in enumerate(xs)]
    do = torch.randn_like(fn(*xs))

    def run():
        for x in xs:
            x.grad = None
        fn(*xs).backward(do)

    return run


def profile_one(make, fn, T, n_grad=None):
    run = fwd_bwd_call(make, fn, T, n_grad)
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


def host_profile(make, fn, T, n_grad=None, reps=200, top=20):
    """cProfile over ``reps`` fwd+bwd calls: host microseconds per call, total and per function (own time),
    the ``top`` functions."""
    import cProfile
    import pstats
    import time

    run = fwd_bwd_call(make, fn, T, n_grad)
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
    rows = sorted(((own, n, cum, f"{Path(k[0]).name}:{k[1]}:{k[2]}") for k, (_, n, own, cum, _) in stats.items()),
                  reverse=True)  # fmt: skip
    ours = sorted(((cum, n, f"{Path(k[0]).parent.name}/{Path(k[0]).name}:{k[1]}:{k[2]}")
                   for k, (_, n, _, cum, _) in stats.items() if "lolcats_lab" in k[0] or "/kernels/" in k[0]),
                  reverse=True)  # fmt: skip
    return dict(
        host_us_per_call=round(host_us, 1),
        top_own_us_per_call={name: round(own / reps * 1e6, 2) for own, _, _, name in rows[:top]},
        # calls per fwd+bwd and cumulative us per fwd+bwd (inside cProfile, so inflated), e.g. Triton's
        # JITFunction.run: how many launches and what each costs
        top_own_calls={name: dict(calls=n / reps, cum_us=round(cum / reps * 1e6, 2)) for _, n, cum, name in rows[:top]},
        ours_cum_us_per_call={name: dict(calls=n / reps, cum_us=round(cum / reps * 1e6, 2)) for cum, n, name in ours[:top]},
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="*", default=[1024, 16384])
    ap.add_argument("--ops", nargs="*", default=list(OPS))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--host", action="store_true", help="cProfile of the host side at the first length")
    ap.add_argument("--single-scan", action="store_true",
                    help="the hybrid backward's single-scan kernels, not the split window/state form")
    ap.add_argument("--narrow-scans", action="store_true",
                    help="the split backward's state scans on 32-token tiles, not the forward's wide ones")
    ap.add_argument("--no-direct-launch", action="store_true",
                    help="every launch through Triton's JITFunction.run, not the kept compiled kernels")
    args = ap.parse_args(argv)
    if args.no_direct_launch:
        import lolcats_lab.kernels._launch as launch_module

        launch_module.DIRECT_LAUNCH = False
    if args.narrow_scans:
        import lolcats_lab.kernels.hybrid_window_split as split_module

        split_module.WIDE_STATE_TILES = False
    if args.single_scan:
        import lolcats_lab.kernels.hybrid_attn as hybrid_module

        hybrid_module.SPLIT_WINDOW_BACKWARD = False
    if not torch.cuda.is_available():
        print("profile_kernels.py needs a CUDA GPU; nothing to do here.")
        return 0
    P = {**make_providers(), **stage2_providers()}
    rows = []
    for name in args.ops:
        make, fn, _ = P[name]
        for T in args.lengths:
            wall, kernels = profile_one(make, fn, T, N_GRAD.get(name))
            total = sum(kernels.values())
            rows.append(dict(op=name, T=T, wall_ms=wall, kernel_sum_ms=total, kernels_ms=kernels))
            print(f"{name:<22} T={T:>6} wall {wall:8.3f} ms  kernels {total:8.3f} ms")
            for k, ms in list(kernels.items())[:8]:
                print(f"    {ms:8.3f} ms  {k[:100]}")
    host = {}
    if args.host:
        for name in args.ops:
            make, fn, _ = P[name]
            host[name] = h = host_profile(make, fn, args.lengths[0], N_GRAD.get(name))
            print(f"{name:<22} T={args.lengths[0]:>6} host {h['host_us_per_call']:8.1f} us per fwd+bwd")
            for k, us in list(h["top_own_us_per_call"].items())[:12]:
                print(f"    {us:8.2f} us own  {h['top_own_calls'][k]['calls']:5.1f} calls  {k}")
            for k, c in list(h["ours_cum_us_per_call"].items())[:12]:
                print(f"    {c['cum_us']:8.2f} us cum  {c['calls']:5.1f} calls  {k}")
    if args.out:
        args.out.write_text(json.dumps(dict(env=environment(), split_window_backward=not args.single_scan,
                                            wide_state_tiles=not args.narrow_scans,
                                            direct_launch=not args.no_direct_launch, rows=rows,
                                            host=host), indent=1))  # fmt: skip
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
