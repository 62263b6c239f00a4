"""benchmarks/host_overhead_stubbed.py: it times the launch path with every kernel launch stubbed. Run in a
subprocess, since it patches Triton's launch classes for the whole process."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(out: Path, *args: str, env: dict | None = None) -> tuple[str, dict]:
    """Run host_overhead_stubbed.py with ``args`` writing ``out`` (``env``: variables added to this process's):
    (its stdout, the record it wrote)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "host_overhead_stubbed.py"), *args, "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, json.loads(out.read_text())


def test_host_overhead_script_times_the_launch_path_without_running_kernels(tmp_path):
    out = tmp_path / "host.json"
    stdout, rec = run_script(out, "--T", "40", "--calls", "3", "--repeats", "2")
    assert rec["T"] == 40 and len(rec["us_per_call"]) == 2
    # kernels stubbed: a call is Python and small CPU ops (~1-4 ms here); one interpreted hybrid call at this
    # shape takes seconds, so a launch that was not stubbed would show up as a far larger time
    assert all(0 < us < 200_000 for us in rec["us_per_call"]), rec["us_per_call"]
    assert "launches stubbed" in stdout


def test_kept_mode_times_the_launch_path_on_bench_ops(tmp_path):
    """--kept: the launches go through kernels/_launch.py to a stand-in compiled kernel (an interpreted
    kernel instead would take seconds per call at this shape)."""
    for op in ("hybrid", "linear"):
        out = tmp_path / f"{op}.json"
        stdout, rec = run_script(out, "--kept", "--op", op, "--T", "40", "--calls", "3", "--repeats", "2")
        assert (rec["op"], rec["kept"], rec["T"]) == (op, True, 40)
        # one segment at 40 tokens: linear forward, dq, dk/dv; hybrid forward, two window and two state kernels
        assert rec["kept_launches_per_call"] == {"linear": 3, "hybrid": 5}[op], rec
        assert all(0 < us < 200_000 for us in rec["us_per_call"]), rec["us_per_call"]
        assert f"of {op}, kept launch path timed" in stdout


def test_gpu_plan_counts_a_gpu_calls_launches(tmp_path):
    """--gpu-plan: segments as on a 132-SM GPU. At 4k tokens and 32 heads that is 8 segments, which the kernels
    fold themselves (segments.FOLD_MAX_SEGMENTS): two segment-state launches and no scan join the one-segment
    plan's kernels (hybrid 5 -> 7, linear 3 -> 5); with a scan per direction it would be 9 and 7."""
    for op, launches in (("hybrid", 7), ("linear", 5)):
        out = tmp_path / f"{op}.json"
        _, rec = run_script(out, "--kept", "--gpu-plan", "--op", op, "--T", "4096", "--calls", "2", "--repeats", "1")
        assert rec["gpu_plan"] and rec["kept_launches_per_call"] == launches, rec


def test_counts_the_pytorch_ops_of_a_call(tmp_path):
    """The aten-op count of the Hedgehog op at batch 1 (one x head per map), both forms of its projections'
    backward: cuBLAS (LOLCATS_PROJECT_BACK_KERNEL=0: four plain bmm, dx and dw per map, with no broadcast matmul,
    expand / as_strided / _unsafe_view, around them) and the kernel (=1: no GEMM, one sum of both maps' weight
    partials and one unbind, over 20 operators fewer, one launch more: the maps' forward is one launch). The
    count covers every op, views included, and is larger than the linear op's on precomputed features."""
    recs = {}
    for op, flag in (("hedgehog", "0"), ("hedgehog", "1"), ("linear", "0")):
        out = tmp_path / f"{op}-{flag}.json"
        stdout, recs[op, flag] = run_script(out, "--kept", "--op", op, "--T", "40", "--calls", "1", "--repeats", "1",
                                            env={"LOLCATS_PROJECT_BACK_KERNEL": flag})  # fmt: skip
        assert f"{recs[op, flag]['aten_ops_per_call']} PyTorch ops per call" in stdout
    cublas, kernel = recs["hedgehog", "0"], recs["hedgehog", "1"]
    assert cublas["aten_ops"]["aten.bmm.default"] == 4 and "aten.expand.default" not in cublas["aten_ops"], cublas
    assert "aten.bmm.default" not in kernel["aten_ops"] and kernel["aten_ops"]["aten.sum.dim_IntList"] == 1, kernel
    assert kernel["aten_ops_per_call"] <= cublas["aten_ops_per_call"] - 20, (kernel, cublas)
    # one segment at 40 tokens: the maps' forward, linear forward, dq, dk/dv, and the projections' backward
    assert (cublas["kept_launches_per_call"], kernel["kept_launches_per_call"]) == (4, 5)
    for rec in (cublas, kernel):
        assert sum(rec["aten_ops"].values()) == rec["aten_ops_per_call"] > recs["linear", "0"]["aten_ops_per_call"] > 0
