"""8B-class presets: published shapes, tiny-width 8B-shaped configs (random weights), the paper recipe, and
loading a checkpoint saved as several safetensors shards (the format of real 8B checkpoints)."""

import json

import pytest
import torch

from lolcats_lab.models import attention_modules, linearize, load_model, set_attention_mode
from lolcats_lab.scale import (
    MODEL_SHAPES,
    PAPER_RECIPE,
    Recipe,
    build_random_model,
    count_parameters,
    llama3_8b_config,
    mistral_7b_config,
    model_config,
    qwen2_7b_config,
)
from lolcats_lab.scale.memory import base_parameter_count

# parameter counts of the published checkpoints (model cards / safetensors index totals)
PUBLISHED = {"llama3-8b": 8_030_261_248, "mistral-7b": 7_241_732_096, "qwen2-7b": 7_615_616_512}


@pytest.mark.parametrize("name", sorted(MODEL_SHAPES))
def test_full_size_parameter_count_matches_published(name):
    """Built on the meta device (no memory); the analytic count used by the memory estimate agrees exactly."""
    cfg = model_config(name)
    assert count_parameters(cfg) == PUBLISHED[name]
    assert base_parameter_count(cfg) == PUBLISHED[name]


@pytest.mark.parametrize("name", sorted(MODEL_SHAPES))
def test_analytic_count_matches_tiny_width_model(name):
    cfg = model_config(name, width_scale=64, num_layers=2, vocab_size=96)
    assert base_parameter_count(cfg) == count_parameters(cfg)


@pytest.mark.parametrize("make, layers, heads, kv", [(llama3_8b_config, 32, 32, 8), (mistral_7b_config, 32, 32, 8),
                                                     (qwen2_7b_config, 28, 28, 4)], ids=["llama3", "mistral", "qwen2"])
def test_scaled_config_keeps_attention_shapes(make, layers, heads, kv):
    full, tiny = make(), make(width_scale=64)
    assert tiny.hidden_size * 64 == full.hidden_size and tiny.intermediate_size * 64 == full.intermediate_size
    for key in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size"):
        assert getattr(tiny, key) == getattr(full, key), key
    assert (tiny.num_hidden_layers, tiny.num_attention_heads, tiny.num_key_value_heads, tiny.head_dim) == (layers, heads, kv, 128)


def test_random_8b_shaped_model_linearizes_with_the_paper_recipe():
    """Full Llama-3-8B attention shapes (32 q heads, 8 kv heads, head dim 128) at hidden size 64, 2 layers,
    random weights; softmax mode reproduces the unconverted model exactly, linear mode is finite."""
    cfg = llama3_8b_config(width_scale=64, num_layers=2, vocab_size=128)
    model = build_random_model(cfg, seed=0)
    ids = torch.randint(0, 128, (2, 2 * PAPER_RECIPE.window + 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=ids).logits
    linearize(model, **PAPER_RECIPE.linearize_kwargs(), mode="softmax")
    attn = attention_modules(model)[0]
    assert attn.q_map.weight.shape == (32, 128, 64) and attn.q_map.feature_dim == 128
    assert attn.attention == "hybrid-tk" and attn.window == 64
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, want)  # softmax mode calls the original module
        set_attention_mode(model, "linear")
        got = model(input_ids=ids).logits
    assert torch.isfinite(got).all() and not torch.allclose(got, want)  # negative control: it did change


def test_build_random_model_is_seeded():
    cfg = qwen2_7b_config(width_scale=128, num_layers=1, vocab_size=64)
    a, b, c = (build_random_model(cfg, seed=s) for s in (0, 0, 1))
    wa, wb, wc = (m.model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2 has q/k/v biases


def test_recipe_is_the_papers():
    r = PAPER_RECIPE
    assert (r.attention, r.window, r.feature_map, r.feature_dim, r.transfer_loss) == ("hybrid-tk", 64, "hedgehog", 64, "mse")
    assert (r.lora_rank, r.lora_targets, r.seq_len) == (8, ("q_proj", "k_proj", "v_proj", "o_proj"), 1024)
    assert r.transfer_steps == 2442  # ceil(20M tokens / (8 x 1024))
    t, l = r.transfer_config(steps=3, progress=False), r.lora_settings(steps=2, progress=False)
    assert (t.steps, t.lr, t.batch_size, t.mse_scale) == (3, 1e-2, 8, 1000.0)
    assert (l.steps, l.rank, l.alpha, l.targets) == (2, 8, 16.0, ["q_proj", "k_proj", "v_proj", "o_proj"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(transfer_loss="ce"), r"^transfer_loss must be 'mse'"),
    (dict(window=0), r"^window must be a positive int, got 0"),
    (dict(seq_len=128), r"^seq_len=128 is too short for hybrid-tk with window=64"),
])
def test_recipe_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Recipe(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape="llama2-7b"), r"^unknown model shape 'llama2-7b'; choose one of \['llama3-8b', 'mistral-7b', 'qwen2-7b'\]"),
    (dict(shape="llama3-8b", width_scale=3), r"^width_scale=3 must divide hidden_size=4096"),
    (dict(shape="llama3-8b", width_scale=0), r"^width_scale must be a positive int, got 0"),
    (dict(shape="llama3-8b", num_layers=0), r"^num_layers must be a positive int, got 0"),
])
def test_model_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        model_config(**kwargs)


def test_sharded_safetensors_checkpoint_loads_in_bf16(tmp_path):
    """A real 8B checkpoint is a directory of safetensors shards plus an index; save a small 8B-shaped model
    that way and load it through load_model(dir): bf16 weights equal the saved ones cast to bf16."""
    cfg = llama3_8b_config(width_scale=64, num_layers=2, vocab_size=256)
    model = build_random_model(cfg, seed=0)
    model.save_pretrained(tmp_path, max_shard_size="1MB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(shards) >= 3 and set(index["weight_map"].values()) == set(shards)

    loaded, tok = load_model(tmp_path, dtype="bfloat16")
    assert tok is None  # no tokenizer files were saved
    assert loaded.lolcats_base_name == str(tmp_path.resolve())
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    want = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    got = loaded.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    linearize(loaded, **PAPER_RECIPE.linearize_kwargs())  # the 8B path: bf16 weights, fp32 maps
    assert attention_modules(loaded)[0].q_map.weight.dtype == torch.float32
    with torch.no_grad():
        out = loaded(input_ids=torch.randint(0, 256, (1, 140))).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
