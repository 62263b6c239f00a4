"""Wall time of each row of the README's ablation table, measured one row at a time.

Each row is ``lolcats-lab linearize`` (quick preset, one setting changed) run in its own process, one
after another, never two at once, with ``OMP_NUM_THREADS`` threads (default 2). For every row it records
the wall seconds, the child process's CPU seconds (user + system, from ``getrusage(RUSAGE_CHILDREN)``),
``os.getloadavg()`` just before and just after, and the 1-minute load sampled every few seconds while the
row ran (so a shared machine says how shared it was). The row's own ``metrics.json`` numbers (perplexities,
mean per-layer MSE, the pipeline's ``wall_seconds``) are copied beside them, so the file also shows that
a rerun reproduces the recorded ablation. The JSON is rewritten after every row: an interrupted run keeps
what it finished.

    .venv/bin/python benchmarks/ablation_walltime.py --out benchmarks/results/ablation-walltime-cpu-smollm2-DATE.json
    .venv/bin/python benchmarks/ablation_walltime.py --rows hybrid-tk/hedgehog linear/hedgehog --threads 1
    .venv/bin/python benchmarks/ablation_walltime.py --merge --rows hybrid-sw/hedgehog   # rerun one row, keep the rest

The SmolLM2 safetensors cache is warmed in a separate process first (the first load dequantises the GGUF
file, ~30 s), so no row pays for it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

# the README ablation table, top to bottom: (attention, feature map)
ROWS = [
    ("hybrid-tk", "hedgehog"),
    ("hybrid-sw", "hedgehog"),
    ("linear", "hedgehog"),
    ("hybrid-tk", "elu"),
    ("hybrid-tk", "performer"),
    ("hybrid-tk", "taylor"),
]


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class _LoadSampler(threading.Thread):
    """Samples the 1-minute load average every ``every`` seconds until stopped."""

    def __init__(self, every: float = 5.0):
        super().__init__(daemon=True)
        self.every, self.samples, self._stop_event = every, [], threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop_event.wait(self.every)

    def stop(self) -> list[float]:
        self._stop_event.set()
        self.join()
        return self.samples


def _env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    env.pop("LOLCATS_CI", None)  # full quick-preset sizes, never the CI shrink
    return env


def run_row(attention: str, feature_map: str, out_dir: Path, threads: int, extra: list[str]) -> dict:
    lolcats = Path(sys.executable).with_name("lolcats-lab")
    cmd = [str(lolcats), "linearize", "--out", str(out_dir), "--attention", attention, "--feature-map", feature_map,
           "--preset", "quick", "--no-progress", *extra]
    log_path = out_dir.with_suffix(".log")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    load_before, cpu_before = os.getloadavg(), _child_cpu()
    sampler = _LoadSampler()
    sampler.start()
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(threads))
    wall = time.perf_counter() - t0
    samples = sampler.stop()
    cpu, load_after = _child_cpu() - cpu_before, os.getloadavg()
    row = {
        "attention": attention, "feature_map": feature_map, "command": " ".join(cmd[1:]), "returncode": rc,
        "omp_num_threads": threads, "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
        "cpu_utilisation": round(cpu / wall, 3) if wall > 0 else None,
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "load1_during": {"mean": round(sum(samples) / len(samples), 2), "max": round(max(samples), 2),
                          "samples": len(samples)} if samples else None,
        "log": str(log_path),
    }
    metrics_path = out_dir / "metrics.json"
    if rc == 0 and metrics_path.exists():
        m = json.loads(metrics_path.read_text())
        mb, ma = m["layer_mse_before"], m["layer_mse_after"]
        row["metrics"] = {
            "teacher_ppl": m["teacher_ppl"], "ppl_before_transfer": m["ppl_before_transfer"],
            "ppl_after_transfer": m["ppl_after_transfer"], "ppl_after_lora": m["ppl_after_lora"],
            "mean_layer_mse_before": sum(mb) / len(mb), "mean_layer_mse_after": sum(ma) / len(ma),
            "pipeline_wall_seconds": m["wall_seconds"], "transfer_tokens": m["transfer_tokens"],
            "lora_tokens": m["lora_tokens"],
        }
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    today = dt.date.today().isoformat()
    p.add_argument("--out", default=f"benchmarks/results/ablation-walltime-cpu-smollm2-{today}.json")
    p.add_argument("--rows", nargs="*", default=None, help="attention/feature_map names (default: all README rows)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for each row")
    p.add_argument("--work", default="/tmp/ablation-walltime", help="where each row's run directory goes")
    p.add_argument("--merge", action="store_true",
                   help="keep the other rows of an existing --out file (rerun some rows, e.g. ones a busy machine slowed)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more lolcats-lab linearize arguments")
    args = p.parse_args(argv)
    names = [f"{a}/{f}" for a, f in ROWS]
    rows = ROWS if not args.rows else [tuple(r.split("/", 1)) for r in args.rows]
    for a, f in rows:
        if f"{a}/{f}" not in names:
            print(f"note: {a}/{f} is not a README ablation row", file=sys.stderr)
    extra = [x for x in args.extra if x != "--"]

    warm_t0 = time.perf_counter()  # dequantise + cache SmolLM2 once, outside every row
    subprocess.check_call([sys.executable, "-c", "from lolcats_lab import load_model; load_model('smollm2-135m')"],
                          env=_env(args.threads))
    result = {
        "what": "wall time of each README ablation row, run one at a time in its own process (quick preset)",
        "script": "benchmarks/ablation_walltime.py", "date": today,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "omp_num_threads": args.threads, "model_cache_warmup_seconds": round(time.perf_counter() - warm_t0, 2),
        "note": "shared machine: loadavg_before/after and load1_during say how busy it was while each row ran; "
                "a 1-minute load above the row's own threads means other processes competed for the 2 cores",
        "rows": {},
    }
    try:
        import torch
        import transformers
        result["torch"], result["transformers"] = torch.__version__, transformers.__version__
    except ImportError:
        pass
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge and out.exists():
        previous = json.loads(out.read_text())
        result["rows"] = previous.get("rows", {})
        result["superseded"] = previous.get("superseded", {})  # earlier measurements of rerun rows, kept
        result["reruns"] = previous.get("reruns", []) + [{"rows": [f"{a}/{f}" for a, f in rows], "date": today}]
    for attention, feature_map in rows:
        name = f"{attention}/{feature_map}"
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        row = run_row(attention, feature_map, Path(args.work) / f"{attention}-{feature_map}", args.threads, extra)
        if name in result["rows"]:
            result.setdefault("superseded", {}).setdefault(name, []).append(result["rows"][name])
        result["rows"][name] = row
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"  wall {row['wall_seconds']:.0f} s, cpu {row['cpu_seconds']:.0f} s, load {row['loadavg_before'][0]:.2f}"
              f" -> {row['loadavg_after'][0]:.2f}, rc {row['returncode']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
