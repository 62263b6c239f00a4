"""save_linearized / load_linearized: only the added tensors, a JSON config, atomic writes, refusal of a
base model that does not match."""

import json

import pytest
import torch
from models_testlib import batch, outputs, perturb_feature_maps, save_tiny

from lolcats_lab.models import linearize, load_linearized, load_model, read_linearized_config, save_linearized
from lolcats_lab.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {a: save_tiny(a, root / a) for a in ("llama", "qwen2", "bert")}


@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("attention", ["hybrid-tk", "linear"])
def test_round_trip_gives_identical_logits(dirs, tmp_path, arch, attention):
    model, _ = load_model(dirs[arch])
    linearize(model, attention=attention, window=4, feature_dim=8, sink_tokens=1)
    perturb_feature_maps(model)
    ids, mask = batch(left_pad=0, right_pad=2) if arch == "bert" else batch(left_pad=2)
    want = outputs(model, ids, mask)
    save_linearized(model, tmp_path / "ckpt")

    loaded = load_linearized(tmp_path / "ckpt", base=load_model(dirs[arch])[0])
    assert torch.equal(outputs(loaded, ids, mask), want)
    by_name = load_linearized(tmp_path / "ckpt")  # base model found from the config (a local dir here)
    assert torch.equal(outputs(by_name, ids, mask), want)
    # negative control: a freshly linearized model (initial maps) differs
    fresh = linearize(load_model(dirs[arch])[0], attention=attention, window=4, feature_dim=8, sink_tokens=1)
    assert not torch.equal(outputs(fresh, ids, mask), want)


def test_checkpoint_contents(dirs, tmp_path):
    from safetensors.torch import load_file

    model, _ = load_model(dirs["llama"])
    linearize(model, attention="hybrid-sw", window=4, feature_dim=8)
    out = save_linearized(model, tmp_path / "c")
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    keys = set(load_file(str(out / WEIGHTS_NAME)))
    assert keys == {
        f"model.layers.{i}.self_attn.{n}" for i in range(2) for n in ("q_map.weight", "k_map.weight", "window_logit")
    }
    cfg = json.loads((out / CONFIG_NAME).read_text())
    assert cfg == read_linearized_config(out)
    expected = {
        "base_model": dirs["llama"], "model_type": "llama", "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
        "head_dim": 8, "attention": "hybrid-sw", "feature_map": "hedgehog", "feature_dim": 16, "window": 4,
        "sink_tokens": 0, "format_version": 1,
    }
    assert {k: cfg[k] for k in expected} == expected
    assert "lolcats_lab_version" in cfg
    # atomic write: no temporary directories left next to it; overwriting replaces it whole
    save_linearized(model, tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_mismatched_base_is_refused(dirs, tmp_path):
    model, _ = load_model(dirs["llama"])
    linearize(model, feature_dim=8, window=4)
    save_linearized(model, tmp_path / "c")
    qwen, _ = load_model(dirs["qwen2"])  # qwen2 tiny: 4 kv heads instead of 2
    with pytest.raises(ValueError, match=r"does not match this base model .*model_type: checkpoint 'llama' vs base 'qwen2'; num_kv_heads: checkpoint 2 vs base 4"):
        load_linearized(tmp_path / "c", base=qwen)
    bert, _ = load_model(dirs["bert"])
    with pytest.raises(ValueError, match=r"model_type: checkpoint 'llama' vs base 'bert'"):
        load_linearized(tmp_path / "c", base=bert)
    with pytest.raises(ValueError, match=r"^base must be the original model"):
        load_linearized(tmp_path / "c", base=model)


def test_bad_inputs(dirs, tmp_path):
    model, _ = load_model(dirs["llama"])
    with pytest.raises(ValueError, match=r"^model is not linearized"):
        save_linearized(model, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match=r"lolcats_config.json not found"):
        load_linearized(tmp_path, base=model)


def test_round_trip_with_lora(dirs, tmp_path):
    """LoRA adapters (as lolcats_lab.train.lora injects them) are saved and re-created on load."""
    from peft import LoraConfig, inject_adapter_in_model

    model, _ = load_model(dirs["llama"])
    linearize(model, attention="hybrid-tk", window=4, feature_dim=8)
    lora = {"rank": 2, "alpha": 4.0, "targets": ["q_proj", "v_proj", "o_proj"]}
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4.0, target_modules=lora["targets"]), model)
    model.lolcats_lora = lora
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n or p.requires_grad)
    perturb_feature_maps(model)  # moves the maps and the LoRA matrices (B starts at zero)
    for p in model.parameters():
        p.requires_grad_(False)  # saved whether or not they still train
    ids, mask = batch(left_pad=2)
    want = outputs(model, ids, mask)
    save_linearized(model, tmp_path / "c")
    assert read_linearized_config(tmp_path / "c")["lora"] == lora
    loaded = load_linearized(tmp_path / "c", base=load_model(dirs["llama"])[0])
    assert torch.equal(outputs(loaded, ids, mask), want)
    trainable = [n for n, p in loaded.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
