"""The real embedded models: SmolLM2-135M-Instruct (Llama, GQA 9/3, 30 layers) and all-MiniLM-L6-v2 (BERT).

SmolLM2's first load dequantises the GGUF file and caches an fp32 copy (~20-30 s once); later loads take
about a second. Softmax mode must reproduce the unmodified model within 1e-5 (fp32; measured 0: the
wrapper calls the original module).
"""

import pytest
import torch

from lolcats_lab.models import (
    collect_transfer_mse,
    linearize,
    load_model,
    model_cache_dir,
    set_attention_mode,
)
from lolcats_lab.models import loading
from tests.tolerances import TOLERANCES, check_close

pytestmark = pytest.mark.embedded
TEXTS = ["The quick brown fox jumps over the lazy dog because it", "Linear attention is"]


def _padded(tok, side):
    tok.padding_side = side
    return tok(TEXTS, return_tensors="pt", padding=True)


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


@pytest.mark.slow
def test_smollm2_loads_from_cache(smollm2, monkeypatch):
    model, tok = smollm2
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == ("llama", 30, 9, 3)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied embeddings survive the cached copy
    assert (model_cache_dir("smollm2-135m") / "model.safetensors").exists()
    assert not hasattr(cfg, "quantization_config")

    def no_gguf(*a, **k):
        raise AssertionError("the cached copy should be used, not the GGUF file")

    monkeypatch.setattr(loading, "embedded_model_dir", no_gguf)
    again, _ = load_model("smollm2-135m")
    ids = tok("Hello", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(again(**ids).logits, model(**ids).logits)


@pytest.mark.slow
def test_smollm2_softmax_exact_linear_and_transfer(smollm2):
    ref, tok = smollm2
    model, _ = load_model("smollm2-135m")
    linearize(model, attention="hybrid-tk", window=4, feature_dim=16, mode="softmax")
    enc = _padded(tok, "left")
    pos = (enc.attention_mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        want = ref(**enc, position_ids=pos, use_cache=False).logits
        got = model(**enc, position_ids=pos, use_cache=False).logits
        assert (got - want).abs().max().item() <= 1e-5
        set_attention_mode(model, "transfer")
        flowed = model(**enc, position_ids=pos, use_cache=False).logits
        assert (flowed - want).abs().max().item() <= 1e-5
        mse = collect_transfer_mse(model)
        assert mse.shape == (30, 9) and torch.isfinite(mse).all()
        set_attention_mode(model, "linear")
        lin = model(**enc, position_ids=pos, use_cache=False).logits
    assert torch.isfinite(lin).all() and (lin - want).abs().max().item() > 1e-3  # untrained maps differ


@pytest.mark.slow
def test_smollm2_generation_decodes_like_forward(smollm2):
    _, tok = smollm2
    model, _ = load_model("smollm2-135m")
    linearize(model, attention="hybrid-sw", window=4, feature_dim=16)
    enc = tok(TEXTS[:1], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        full = model(input_ids=out.sequences[:, :-1], use_cache=False).logits[:, enc.input_ids.shape[1] - 1 :]
    check_close("decode vs forward", full, torch.stack(out.logits, dim=1), **TOLERANCES[torch.float32])


def test_minilm_softmax_exact_and_linearized():
    ref, tok = load_model("minilm")
    assert (ref.config.model_type, ref.config.num_hidden_layers, ref.config.num_attention_heads) == ("bert", 6, 12)
    model, _ = load_model("minilm")
    linearize(model, attention="hybrid-sw", window=4, feature_dim=16, mode="softmax")
    enc = _padded(tok, "right")
    with torch.no_grad():
        want = ref(**enc).last_hidden_state
        assert (model(**enc).last_hidden_state - want).abs().max().item() <= 1e-5
        set_attention_mode(model, "transfer")
        assert (model(**enc).last_hidden_state - want).abs().max().item() <= 1e-5
        assert collect_transfer_mse(model).shape == (6, 12)
        set_attention_mode(model, "linear")
        lin = model(**enc).last_hidden_state
    assert torch.isfinite(lin).all() and (lin - want).abs().max().item() > 1e-3
