"""benchmarks/bench_8b.py end to end on the 8B-shaped tiny-width config (hidden 64, 4 layers, CPU): every
section runs, writes its JSON, and reports positive rates without errors."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_8b", ROOT / "benchmarks" / "bench_8b.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def errors(obj, path="") -> list[str]:
    """Every "error" entry anywhere in the results."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("error", "setup_error"):
                found.append(f"{path}.{k}: {v}")
            found += errors(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += errors(v, f"{path}[{i}]")
    return found


@pytest.mark.slow
def test_bench_8b_tiny_runs_every_section(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "bench.json"
    bench = load_bench()
    results = bench.main(["--tiny", "--seq", "64", "--gen-prompts", "128", "--gen-steps", "2", "--gen-warmup", "1",
                          "--out", str(out)])
    on_disk = json.loads(out.read_text())
    assert on_disk["sections"].keys() == results["sections"].keys() == {"a", "b", "c", "d"}
    assert not errors(on_disk), errors(on_disk)
    assert all(s["status"] == "ok" for s in on_disk["sections"].values())
    assert "random weights, 8B-shaped" in on_disk["model"]["note"]
    m = on_disk["model"]
    assert (m["num_layers"], m["num_heads"], m["num_kv_heads"], m["head_dim"]) == (4, 32, 8, 128)
    s = on_disk["sections"]
    assert [r["tokens_per_s"] > 0 for r in s["a"]["runs"]] == [True, True]
    b = s["b"]
    assert b["layers_measured"] == 2 and b["layers_total"] == 4 and len(b["candidates"]) == 2
    for cand in b["candidates"]:
        assert cand["tokens_per_s_train"] > 0 and cand["tokens_per_s_with_cache"] > 0
        assert [layer["step_ms"] > 0 and layer["teacher_block_fwd_ms"] > 0 for layer in cand["layers"]] == [True, True]
    assert b["best"]["batch"] in (1, 2)
    runs = {(r["mode"], r["grad_checkpointing"]): r for r in s["c"]["runs"]}
    assert set(runs) == {(m, c) for m in ("softmax", "linear") for c in (False, True)}
    assert all(r["tokens_per_s"] > 0 for r in runs.values())
    assert s["c"]["linear_over_softmax"] > 0
    gen = {r["mode"]: r for r in s["d"]["runs"]}
    assert set(gen) == {"linear", "softmax"}
    for r in gen.values():
        assert r["decode_tokens_per_s"] > 0 and r["prefill_s"] > 0 and r["cache_seq_length"] == 128 + 1 + 2
        assert r["cache_tensors_gib_at_end"] > 0
    assert on_disk["targets"]["generation"]["speedups"].keys() == {"speedup_128"}
    assert not on_disk["skipped"]


def test_remove_lora_restores_the_projections():
    """Section c takes its adapters out again, so section d times the plain linearized model."""
    import torch

    from lolcats_lab.models import linearize
    from lolcats_lab.scale import build_random_model, llama3_8b_config
    from lolcats_lab.train import LoraSettings
    from lolcats_lab.train.lora import add_lora

    model = build_random_model(llama3_8b_config(width_scale=64, num_layers=2, vocab_size=64))
    linearize(model, window=8, feature_dim=8)
    ids = torch.randint(0, 64, (1, 24))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    types = {n: type(m) for n, m in model.named_modules()}
    add_lora(model, LoraSettings(rank=4))
    assert any("lora_" in n for n, _ in model.named_parameters())
    load_bench()._remove_lora(model)
    assert {n: type(m) for n, m in model.named_modules()} == types
    assert not any("lora_" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)
    add_lora(model, LoraSettings(rank=4))  # can be added again


def test_bench_8b_budget_skips_sections(tmp_path):
    out = tmp_path / "bench.json"
    results = load_bench().main(["--tiny", "--sections", "a,d", "--budget-s", "0", "--out", str(out)])
    assert results["skipped"] == ["a", "d"]
    assert json.loads(out.read_text())["sections"]["d"]["status"] == "skipped (budget)"
