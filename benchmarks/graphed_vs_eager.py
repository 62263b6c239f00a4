"""How much of an op's forward+backward is the host: eager time, CUDA-graph replay time and host time, one call.

For each provider of ``bench_attention.py`` (same inputs: bf16, batch 1, 32 heads, head dim 128) and length:
    eager_ms   the forward+backward as bench_attention.py times it (do_bench median, L2 flushed per call)
    graph_ms   the same forward+backward captured once in a CUDA graph and replayed (do_bench median, L2
               flushed): the device's time with no host in the way (launch gaps inside the graph remain)
    host_ms    the host's own time per eager call: wall time of N calls issued back to back, stopped
               before synchronising (the launch queue holds them; the GPU's pace does not enter)
When eager_ms is well above graph_ms the op waits on its host, and a user can get graph_ms by capturing the
step (``torch.cuda.graph`` / ``torch.cuda.make_graphed_callables``). Ratios against SDPA are taken within
this one call, SDPA captured the same way. Each provider is checked against its reference first
(bench_attention.check) and skipped when it fails.

    python benchmarks/graphed_vs_eager.py --lengths 1024 4096 8192 --out gpu-out/graphed.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import err_str, med  # noqa: E402
import bench_attention  # noqa: E402
from bench_attention import check, environment, make_providers  # noqa: E402
from profile_kernels import fwd_bwd_call  # noqa: E402

DEFAULT_PROVIDERS = ["sdpa", "fla_chunk", "triton_linear", "triton_hedgehog_f64", "triton_hedgehog_fused_f64",
                     "triton_hedgehog_two_op_f64", "triton_hybrid_tk"]  # fmt: skip
HOST_CALLS = 10  # eager calls per host-time sample (about 15 launches each: well inside the launch queue)


def capture(run):
    """A CUDA graph of ``run`` after three side-stream warm-up calls (as torch.cuda.graph's docs ask)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    torch.cuda.synchronize()
    return graph


def host_ms(run, samples: int = 5, calls: int = HOST_CALLS) -> float:
    """Median host time per call: ``calls`` calls issued back to back, timed before the synchronise."""
    times = []
    for _ in range(samples):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            run()
        times.append((time.perf_counter() - t0) / calls * 1e3)
        torch.cuda.synchronize()
    return med(times)


def measure(make, fn, T) -> dict:
    from triton.testing import do_bench

    run = fwd_bwd_call(make, fn, T)  # as bench_attention.time_provider: every input with a gradient
    run()
    torch.cuda.synchronize()
    row = dict(eager_ms=do_bench(run, warmup=25, rep=100, return_mode="median"), host_ms=host_ms(run))
    try:
        graph = capture(run)
        row["graph_ms"] = do_bench(graph.replay, warmup=25, rep=100, return_mode="median")
        del graph
    except Exception as err:  # noqa: BLE001 - an op that cannot be captured: record why, keep its eager time
        row["graph_error"] = err_str(err)[:400]
    return row


def speedups_vs_sdpa(rows: list[dict]) -> dict:
    """{"provider@T": {sdpa_over_eager, sdpa_over_graph}} for every measured row beside an SDPA row of the
    same length (> 1: faster than SDPA); sdpa_over_graph is None unless both were captured."""
    by = {(r["provider"], r["T"]): r for r in rows if "eager_ms" in r}
    ratios = {}
    for (name, T), r in by.items():
        s = by.get(("sdpa", T))
        if s is None or name == "sdpa":
            continue
        graphed = "graph_ms" in r and "graph_ms" in s
        ratios[f"{name}@{T}"] = dict(
            sdpa_over_eager=round(s["eager_ms"] / r["eager_ms"], 3),
            sdpa_over_graph=round(s["graph_ms"] / r["graph_ms"], 3) if graphed else None,
        )
    return ratios


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192])
    ap.add_argument("--providers", nargs="+", default=DEFAULT_PROVIDERS)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--check-t", type=int, help="tokens of the correctness check (bench_attention.CHECK_T, default "
                    "512: one segment on a GPU; 2048 checks a plan of 4 segments, which the kernels fold)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("graphed_vs_eager.py needs a CUDA GPU; nothing to do here.")
        return 0
    if args.check_t:
        bench_attention.CHECK_T = args.check_t
    providers = make_providers()
    unknown = [p for p in args.providers if p not in providers]
    if unknown:
        print(f"skipping providers not available here: {unknown}", file=sys.stderr)
    out = dict(env=environment(), what=__doc__.split("\n\n")[0], host_calls=HOST_CALLS,
               check_T=bench_attention.CHECK_T, checks={}, rows=[])  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in [p for p in args.providers if p in providers]:
        make, fn, ref = providers[name]
        try:
            ok, errs = check(name, make, fn, ref)
        except Exception as err:  # noqa: BLE001
            ok, errs = False, {"error": err_str(err)}
        out["checks"][name] = dict(ok=ok, rel_rms=errs)
        if not ok:
            print(f"check {name} FAILED {errs}")
            continue
        for T in args.lengths:
            try:
                row = dict(provider=name, T=T, **measure(make, fn, T))
            except Exception as err:  # noqa: BLE001
                row = dict(provider=name, T=T, error=err_str(err)[:400])
            torch.cuda.empty_cache()
            out["rows"].append(row)
            print(json.dumps(row))
        args.out.write_text(json.dumps(out, indent=1))
    ratios = speedups_vs_sdpa(out["rows"])
    out["speedup_vs_sdpa"] = ratios  # > 1: faster than SDPA
    args.out.write_text(json.dumps(out, indent=1))
    for k, v in ratios.items():
        print(k, v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
