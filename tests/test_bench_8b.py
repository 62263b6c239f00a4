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
    for mode in ("softmax", "linear"):  # one forward+backward under the profiler (CPU ops here, kernels on a GPU)
        prof = runs[(mode, False)]["profile"]
        assert prof["kernel_ms_total"] > 0 and 0 < len(prof["top_kernels_ms"]) <= 40
    gen = {r["mode"]: r for r in s["d"]["runs"]}
    assert set(gen) == {"linear", "softmax"}
    for r in gen.values():
        assert r["decode_tokens_per_s"] > 0 and r["prefill_s"] > 0 and r["cache_seq_length"] == 128 + 1 + 2
        assert r["cache_tensors_gib_at_end"] > 0
        assert r["prefill_warmup_tokens"] == 16 and r["prefill_warmup_s"] > 0  # the untimed prefill ran first
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


@pytest.mark.parametrize("mode", ["linear", "softmax"])
def test_static_decode_step_continues_the_greedy_rollout(mode):
    """The CUDA-graph harness's step (section d), run eagerly here: static ids / positions updated in place
    reproduce the eager loop's greedy tokens, through the Triton ring cache (interpreter on CPU) for the
    linearized model and through the KV cache moved into a StaticCache for the softmax one."""
    import torch
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from lolcats_lab.models import attention_modules, linearize, set_attention_mode

    bench = load_bench()
    torch.manual_seed(0)  # a small GQA Llama (the 8B-shaped tiny config has 32 heads of 128: slow in the interpreter)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2))
    linearize(model, window=4, feature_dim=8)
    for m in attention_modules(model):
        m.decode_impl = "triton"
    set_attention_mode(model, mode)
    model.eval()
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    steps, runs = 5, []
    for static in (False, True):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            tok = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)  # [2, 1]
            if not static:
                toks = []
                for _ in range(steps):
                    tok = model(input_ids=tok, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
                    toks.append(tok)
                runs.append(torch.cat(toks, 1))
                continue
            if mode == "softmax":
                cache = bench.to_static_cache(model, cache, max_len=10 + steps + 1)
            step, s_ids, s_pos = bench.static_decode_step(model, cache, tok, 10)
            toks = []
            for _ in range(steps):
                step()
                toks.append(s_ids.clone())
            runs.append(torch.cat(toks, 1))
    assert torch.equal(runs[0], runs[1]), (runs[0], runs[1])
    assert s_pos.tolist() == [[10 + steps]] * 2 and bench.cache_seq_len(cache) == 10 + steps
    if mode == "linear":
        assert bench.linear_decode_kind(cache) == "triton ring"
    else:
        assert type(cache).__name__ == "StaticCache"


def test_packed_gqa_sdpa_equals_transformers_sdpa():
    """The softmax graph baseline's attention without repeated KV heads is transformers' sdpa, to fp32
    rounding, for one query token under a key mask (and a masked key does change it: negative control)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bench = load_bench()
    g = torch.Generator().manual_seed(0)
    B, H, KVH, L, D = 2, 8, 2, 37, 16
    q = torch.randn(B, H, 1, D, generator=g)
    k, v = torch.randn(B, KVH, L, D, generator=g), torch.randn(B, KVH, L, D, generator=g)
    mask = torch.ones(B, 1, 1, L, dtype=torch.bool)
    mask[:, :, :, 30:] = False  # unfilled static-cache slots
    mask[1, :, :, 3] = False
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = H // KVH, True
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=D**-0.5)  # [B, 1, H, D]
    out, _ = bench.packed_gqa_sdpa(module, q, k, v, mask, scaling=D**-0.5)
    assert out.shape == ref.shape == (B, 1, H, D)
    torch.testing.assert_close(out, ref)
    unmasked, _ = bench.packed_gqa_sdpa(module, q, k, v, torch.ones_like(mask), scaling=D**-0.5)
    assert (unmasked - ref).abs().max().item() > 1e-3


def test_targets_read_graph_speedups():
    """targets() takes the generation verdict from the CUDA-graph harness when both models were captured
    (against the faster softmax variant), else from the eager one."""
    targets = load_bench().targets
    d = {"speedup_32768": 1.2, "speedup_2048": 1.1, "graph_speedup_32768": 3.4, "graph_speedup_vs_hf_sdpa_32768": 9.0,
         "read_bytes_ratio_32768": 2.8, "runs": [{"mode": "linear", "prompt": 32768, "decode_peak_gib": 17.2,
                                                  "graph": {"peak_gib": 17.5}}]}  # fmt: skip
    gen = targets({"sections": {"d": d}})["generation"]
    assert (gen["met_eager"], gen["met_graph"], gen["met"]) == (False, True, True)
    assert gen["graph_speedups_vs_hf_sdpa"] == {"graph_speedup_vs_hf_sdpa_32768": 9.0}
    assert gen["linear_graph_peak_gib_by_prompt"] == {32768: 17.5}
    gen = targets({"sections": {"d": {"speedup_32768": 1.2}}})["generation"]
    assert (gen["met_graph"], gen["met"]) == (None, False)


def test_whole_model_extrapolation_counts_layer0_once():
    """Layer 0 carries one-time costs (its first teacher forward): it is counted once, the other measured
    layers stand for the remaining L - 1; a plain mean x L would be 32 x (75 + 3 x 27) / 4 = 1248 ms."""
    bench = load_bench()
    assert bench.whole_model_seconds([0.075, 0.027, 0.027, 0.027], 32) == pytest.approx(0.075 + 31 * 0.027, rel=1e-12)
    assert bench.whole_model_seconds([0.030], 32) == pytest.approx(32 * 0.030, rel=1e-12)
