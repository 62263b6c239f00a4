"""Widgets respond to control values set from Python (what a user's click does), show errors instead of
swallowing them, and show what the unmodified model computes. Tiny random Llama (tests/browser/tiny.py),
no hub, no kernel: the figure shown is read from ``.figure`` and the Output areas' ``outputs``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lolcats_lab.metrics import attention_entropy
from lolcats_lab.models import attention_modules, set_attention_mode
from lolcats_lab.viz import AttentionExplorer, TrainingMonitor, model_attention_maps
from tests.browser.tiny import tiny_linearized_llama, tiny_tokenizer

TEXT = "the cat sat on the mat and then slept in the sun"  # 12 tokens
PLOTLY_MIME = "application/vnd.plotly.v1+json"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    """Shared by the tests: the explorer must leave it as it found it (checked below)."""
    return tiny_linearized_llama()


def teacher_maps(model, tokenizer, text):
    """Independent reference: the unmodified HF eager attention's maps (output_attentions) in softmax mode."""
    set_attention_mode(model, "softmax")
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, use_cache=False)
    set_attention_mode(model, "linear")
    return [a[0].double().numpy() for a in out.attentions]  # L x [H, T, T]


def z(trace) -> np.ndarray:
    return np.asarray(trace.z, dtype=np.float64)


def lower(a: np.ndarray) -> np.ndarray:
    return a[np.tril_indices(a.shape[-1])]


def test_explorer_shows_the_models_softmax_map_and_follows_the_sliders(model, tokenizer):
    ref = teacher_maps(model, tokenizer, TEXT)
    ex = AttentionExplorer(model, tokenizer, TEXT)
    np.testing.assert_allclose(lower(z(ex.figure.data[0])), lower(ref[0][0]), rtol=1e-5, atol=1e-7)  # fp32 model
    assert np.isnan(z(ex.figure.data[0])[np.triu_indices(12, 1)]).all()
    assert list(ex.figure.layout.xaxis.ticktext) == TEXT.split()
    first_linear = z(ex.figure.data[1])

    ex.layer_slider.value = 1  # what moving the slider does
    assert ex.last_error is None and ex.maps.layer == 1
    np.testing.assert_allclose(lower(z(ex.figure.data[0])), lower(ref[1][0]), rtol=1e-5, atol=1e-7)
    ex.head_slider.value = 3
    np.testing.assert_allclose(lower(z(ex.figure.data[0])), lower(ref[1][3]), rtol=1e-5, atol=1e-7)
    assert ex.figure.layout.title.text == "layer 1, head 3"
    assert not np.allclose(lower(z(ex.figure.data[1])), lower(first_linear))  # negative control: it changed


def test_explorer_linear_map_rows_and_stats(model, tokenizer):
    ex = AttentionExplorer(model, tokenizer, TEXT, layer=1, head=2)
    lin = np.nan_to_num(z(ex.figure.data[1]))
    np.testing.assert_allclose(lin.sum(-1), 1.0, atol=1e-5)  # attention rows sum to 1
    assert ex.stats["entropy_linear"] == pytest.approx(
        float(-(np.where(lin > 0, lin * np.log(np.where(lin > 0, lin, 1)), 0)).sum(-1).mean()), rel=1e-5)
    soft = np.nan_to_num(z(ex.figure.data[0]))
    assert ex.stats["max_weight_softmax"] == pytest.approx(float(soft.max(-1).mean()), rel=1e-6)
    assert ex.stats["output_mse"] == pytest.approx(float(z(ex.grid_figure.data[0])[1, 2]), rel=1e-12)
    assert ex.stats["output_mse"] > 0
    assert "mean row entropy" in ex.status.value


def test_explorer_entropy_grid_equals_the_teachers_entropy(model, tokenizer):
    ref = teacher_maps(model, tokenizer, TEXT)  # L x [H, T, T]
    expected = np.stack([attention_entropy(torch.from_numpy(a)).mean(-1).numpy() for a in ref])  # [L, H]
    ex = AttentionExplorer(model, tokenizer, TEXT)
    heat = [t for t in ex.entropy_figure.data if t.type == "heatmap"]
    np.testing.assert_allclose(z(heat[0]), expected, rtol=1e-5, atol=1e-6)  # fp32 model
    assert not np.allclose(z(heat[1]), expected, rtol=1e-3)  # negative control: the linearized heads differ
    first = ex.entropy_figure
    ex.head_slider.value = 1
    assert ex.entropy_figure is first  # same text: not recomputed
    ex.text_box.value = "a dog ran to the park"
    assert ex.entropy_figure is not first and PLOTLY_MIME in ex.entropy_plot.outputs[0]["data"]
    assert AttentionExplorer(model, tokenizer, TEXT, entropy_grid=False).entropy_figure is None


def test_explorer_feature_map_picker_text_box_and_log_scale(model, tokenizer):
    ex = AttentionExplorer(model, tokenizer, TEXT)
    mod = attention_modules(model)[0]
    trained_q = mod.q_map
    soft, lin = z(ex.figure.data[0]), z(ex.figure.data[1])
    ex.feature_map_picker.value = "elu"
    assert ex.figure.data[1].name == "linear (elu)"
    np.testing.assert_array_equal(z(ex.figure.data[0]), soft)  # the teacher does not depend on the map
    assert not np.allclose(lower(z(ex.figure.data[1])), lower(lin))
    assert mod.q_map is trained_q and mod.mode == "linear"  # the model is left as it was

    ex.log_scale_box.value = True
    assert ex.figure.layout.meta["log_scale"]
    np.testing.assert_allclose(lower(z(ex.figure.data[0])), lower(np.log10(np.maximum(soft, 1e-6))), rtol=1e-12)

    ex.text_box.value = "a dog ran to the park"
    assert ex.last_error is None
    assert list(ex.figure.layout.xaxis.ticktext) == "a dog ran to the park".split()
    out = ex.plot.outputs[0]
    assert PLOTLY_MIME in out["data"] and json.dumps(out)  # a JSON-safe plotly bundle in the Output area


def test_bad_input_raises_in_python_and_shows_in_the_widget(model, tokenizer):
    ex = AttentionExplorer(model, tokenizer, TEXT)
    before = ex.figure
    ex.text_box.value = "   "  # a callback: must not raise, must show the error
    assert isinstance(ex.last_error, ValueError) and "text is empty" in str(ex.last_error)
    assert "text is empty" in ex.status.value and "ValueError" in ex.status.value
    assert "Traceback" in ex.log.outputs[0]["text"]
    assert ex.figure is before  # the last good figure stays

    with pytest.raises(ValueError, match=r"^text is empty"):
        ex.update(text="")
    with pytest.raises(ValueError, match=r"^layer must be an int in \[0, 2\) for this model \(2 layers, 4 heads\), got 2"):
        ex.update(text=TEXT, layer=2)
    assert "layer must be an int" in ex.status.value
    with pytest.raises(ValueError, match=r"^head must be an int in \[0, 4\)"):
        ex.update(text=TEXT, head=-1)
    with pytest.raises(ValueError, match=r"^text is 70 tokens long but the model takes at most max_position_embeddings=64"):
        ex.update(text=" ".join(["cat"] * 70))
    ex.update(text=TEXT, layer=0, head=0)  # recovers
    assert ex.last_error is None and ex.log.outputs == ()


def test_explorer_constructor_and_function_errors(model, tokenizer):
    with pytest.raises(ValueError, match=r"^text is empty"):
        AttentionExplorer(model, tokenizer, "")
    with pytest.raises(ValueError, match=r"^fixed_maps has unknown feature maps \['nope'\]"):
        AttentionExplorer(model, tokenizer, TEXT, fixed_maps=("nope",))
    with pytest.raises(ValueError, match=r"^feature_map must be 'model' or one of"):
        model_attention_maps(model, tokenizer, TEXT, 0, 0, feature_map="nope")
    from transformers import LlamaConfig, LlamaForCausalLM

    plain = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=64, vocab_size=100))
    with pytest.raises(ValueError, match=r"^model is not linearized"):
        AttentionExplorer(plain, tokenizer, TEXT)


# ------------------------------------------------------------------------------------------------ monitor
def test_training_monitor_update_and_callback_form():
    mon = TrainingMonitor(min_interval_s=0.0)
    mon.update(0, [1.0, 2.0], loss=3.0)
    mon({"step": 5, "layer_mse": torch.tensor([[0.5, 0.7], [1.0, 1.2]]), "loss": 2.0, "lr": 1e-3})  # [L, H]
    fig = mon.figure
    layer1 = [t for t in fig.data if t.name == "layer 1"][0]
    np.testing.assert_allclose(np.asarray(layer1.y), [2.0, 1.1])
    np.testing.assert_array_equal(np.asarray(layer1.x), [0, 5])
    np.testing.assert_array_equal(np.asarray([t for t in fig.data if t.name == "loss"][0].y), [3.0, 2.0])
    assert PLOTLY_MIME in mon.plot.outputs[0]["data"]
    assert "step 5" in mon.status.value


def test_training_monitor_layerwise_records():
    mon = TrainingMonitor(min_interval_s=0.0)
    for rec in ({"step": 0, "layer": 0, "mse": 1.0, "loss": 1.0, "lr": 1e-3}, {"step": 1, "layer": 0, "mse": 0.5, "loss": 0.5},
                {"step": 0, "layer": 1, "mse": 2.0, "loss": 2.0}):
        mon(rec)
    fig = mon.figure
    l0, l1 = [t for t in fig.data if t.name == "layer 0"][0], [t for t in fig.data if t.name == "layer 1"][0]
    np.testing.assert_array_equal(np.asarray(l0.y), [1.0, 0.5])
    np.testing.assert_array_equal(np.asarray(l1.x), [0])
    np.testing.assert_array_equal(np.asarray([t for t in fig.data if t.name == "loss"][0].x), [0, 1, 2])
    with pytest.raises(ValueError, match=r"^this monitor holds layerwise records"):
        mon.update(3, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"^a layer-wise record takes layer= and mse="):
        mon.update(3, layer=0)


def test_training_monitor_throttles_redraws_but_figure_is_current():
    mon = TrainingMonitor(min_interval_s=3600.0)
    mon.update(0, [1.0])
    first = mon.plot.outputs
    mon.update(1, [0.5])
    assert mon.plot.outputs is first  # not redrawn yet
    assert len(mon.figure.data[0].y) == 2
    mon.flush()
    assert mon.plot.outputs is not first


def test_training_monitor_bad_input_and_non_finite_values():
    mon = TrainingMonitor(min_interval_s=0.0)
    mon.update(0, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"^layer_mse has 3 layers but earlier steps had 2"):
        mon.update(1, [1.0, 2.0, 3.0])
    assert "earlier steps had 2" in mon.status.value and isinstance(mon.last_error, ValueError)
    with pytest.raises(ValueError, match=r"^the monitor takes a dict with at least 'step'"):
        mon({"loss": 1.0})
    with pytest.raises(ValueError, match=r"^step must be a number"):
        mon.update("one", [1.0, 2.0])
    with pytest.raises(ValueError, match=r"^pass layer_mse"):
        mon.update(1)
    mon.update(2, [float("nan"), 1.0])
    assert "non-finite" in mon.status.value and len(mon.steps) == 2


def test_explorer_on_a_bidirectional_model_and_state_is_restored(tokenizer):
    from lolcats_lab.models import linearize
    from tests.models.models_testlib import tiny_model

    bert = linearize(tiny_model("bert"), attention="hybrid-sw", window=3, feature_dim=8)
    bert.train()
    ex = AttentionExplorer(bert, tokenizer, "the cat sat on the mat")
    soft = z(ex.figure.data[0])
    assert not np.isnan(soft).any()  # no causal mask for an encoder
    np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-5)
    assert bert.training and attention_modules(bert)[0].mode == "linear"  # train mode and attention mode restored
