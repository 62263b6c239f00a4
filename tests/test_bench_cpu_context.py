"""benchmarks/bench_cpu_context.py end to end on a tiny random Llama: the JSON has every field (no timing
assertions; the real run uses SmolLM2 at 1k-4k tokens)."""

import importlib.util
import json
from pathlib import Path

import pytest

from tests.models.models_testlib import save_tiny

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cpu_context.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_cpu_context", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # ~8 s CPU, ~18 s wall on the loaded 2-core machine
def test_bench_cpu_context_writes_all_fields(tmp_path, capsys):
    bench = _bench_module()
    out = tmp_path / "res.json"
    model_dir = save_tiny("llama", tmp_path / "tiny")
    lengths = [40, 150]  # 150 > 2 windows of 64: linear keys exist
    result = bench.main(["--model", model_dir, "--lengths", *map(str, lengths), "--reps", "2", "--decode-steps", "2",
                         "--threads", "1", "--out", str(out), "--eager-max-length", "100"])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    for key in ("date", "model", "model_shape", "conversion", "device", "versions", "dtype", "batch", "reps",
                "decode_steps", "variants", "lengths"):
        assert key in saved, key
    assert saved["conversion"]["attention"] == "hybrid-tk" and saved["conversion"]["window"] == 64
    assert saved["conversion"]["impl"] == "chunk" and saved["conversion"]["feature_count"] == 128
    assert saved["device"]["torch_threads"] == 1 and saved["device"]["cpu"]
    assert saved["versions"]["torch"]
    assert [r["T"] for r in saved["lengths"]] == lengths
    for r in saved["lengths"]:
        expected = {"softmax-eager", "softmax-sdpa", "linear"} if r["T"] <= 100 else {"softmax-sdpa", "linear"}
        assert set(r["prefill"]) == expected and set(r["decode_per_token"]) == expected
        assert len(r["loadavg_before"]) == 3 and len(r["loadavg_after"]) == 3
        for part in ("prefill", "decode_per_token"):
            for v in expected:
                assert len(r[part][v]["times_s"]) == 2 and r[part][v]["median_s"] > 0
        assert set(r["prefill_ratio"]) == {f"{v}/linear" for v in expected - {"linear"}}
        assert set(r["decode_ratio"]) == set(r["prefill_ratio"])
    printed = capsys.readouterr().out
    assert "| T |" in printed and "sdpa / linear" in printed


def test_bench_cpu_context_rejects_bad_options():
    bench = _bench_module()
    with pytest.raises(SystemExit):
        bench.parse_args(["--reps", "0"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--variants", "softmax-sdpa"])
