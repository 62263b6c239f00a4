"""The converted model's one-op Hedgehog paths against its usual path (two ops: the maps, then the attention).

On a GPU ``LinearizedAttention`` sends bf16/fp16 layers with Triton Hedgehog maps through one autograd op
(``_uses_one_op``): hybrid layers through kernels/hedgehog_hybrid.py, pure linear layers (no sinks)
through the staged Hedgehog linear op (kernels/hedgehog_linear.py, keys and values read per key head).
Here, on CPU, that choice is forced and the op runs in Triton's interpreter (fp32); the reference is the
same model on the PyTorch chunked path. Compared: logits in linear mode, the gradients stage 2 trains
through (q/k/v projections), and in transfer mode the MSE and the feature maps' gradients. A GQA model
(4 query heads, 2 key/value heads) exercises the repeat (hybrid) and the per-key-head reads (linear).
"""

import pytest
import torch
from models_testlib import batch, perturb_feature_maps, tiny_model

from lolcats_lab.models import LinearizedAttention, attention_modules, collect_transfer_mse, linearize
from lolcats_lab.models import set_attention_mode
from tests.tolerances import check_close

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="forces the interpreter path: CPU only")

TOL = dict(ratio=1e-4, atol=1e-5)  # fp32 through 2 layers (the interpreter's dots are exact fp32)


def _pair(attention, sink_tokens=0):
    models = []
    for _ in range(2):
        model = tiny_model("llama")
        linearize(model, attention=attention, window=8, feature_dim=8, impl="chunk", sink_tokens=sink_tokens)
        models.append(model)
    perturb_feature_maps(models[0])
    models[1].load_state_dict(models[0].state_dict())
    for layer in attention_modules(models[1]):
        layer.q_map.impl = layer.k_map.impl = "triton"  # the map kernels, in the interpreter
    return models


@pytest.fixture
def one_op_calls(monkeypatch):
    """Force the one-op path for models whose maps run on Triton (the GPU rule minus q.is_cuda) and
    count its calls, so a test can tell which path ran."""
    calls = []
    real = LinearizedAttention._one_op_hedgehog

    def uses_one_op(self, q, key_mask):
        return self._has_one_op_form() and key_mask is None and self.q_map.impl == "triton"

    def counted(self, q, k, v):
        calls.append(self.layer_idx)
        return real(self, q, k, v)

    monkeypatch.setattr(LinearizedAttention, "_uses_one_op", uses_one_op)
    monkeypatch.setattr(LinearizedAttention, "_one_op_hedgehog", counted)
    return calls


@pytest.mark.parametrize("attention", ["hybrid-tk", "hybrid-sw", "linear"])
def test_linear_mode_logits_and_stage2_gradients(one_op_calls, attention):
    ref, fused = _pair(attention)
    ids, _ = batch(B=2, T=40, left_pad=0)
    grads = []
    for model in (ref, fused):
        for n, p in model.named_parameters():  # stage 2: the attention projections train, the maps are frozen
            p.requires_grad_("base_attn" in n)
        set_attention_mode(model, "linear")
        logits = model(input_ids=ids, use_cache=False).logits
        logits.square().mean().backward()
        grads.append((logits.detach(), [p.grad.clone() for n, p in model.named_parameters() if "base_attn" in n]))
    assert one_op_calls == [0, 1], "the one-op path must run once per layer, and only in the second model"
    check_close("logits", grads[0][0], grads[1][0], **TOL)
    for i, (a, b) in enumerate(zip(grads[0][1], grads[1][1])):
        check_close(f"projection grad {i}", a, b, **TOL)


@pytest.mark.parametrize("attention", ["hybrid-tk", "linear"])
def test_transfer_mode_mse_and_map_gradients(one_op_calls, attention):
    ref, fused = _pair(attention)
    ids, _ = batch(B=2, T=40, left_pad=0)
    out = []
    for model in (ref, fused):
        for n, p in model.named_parameters():
            p.requires_grad_("base_attn" not in n and ("map" in n or "window_logit" in n))
        set_attention_mode(model, "transfer")
        model(input_ids=ids, use_cache=False)
        mse = collect_transfer_mse(model)
        mse.sum().backward()
        layer = attention_modules(model)[1]
        out.append((mse.detach(), layer.q_map.weight.grad, layer.k_map.weight.grad))
        if attention != "linear":  # gamma does not enter pure linear attention
            out[-1] += (layer.window_logit.grad,)
    assert one_op_calls == [0, 1]
    for name, a, b in zip(("mse", "d q_map", "d k_map", "d window_logit"), *out):
        assert a is not None and b is not None, f"{name}: no gradient"
        check_close(name, a, b, **TOL)


def test_padding_and_capture_keep_the_usual_path(one_op_calls):
    """A padded batch (rows are reordered first) and a captured head (needs the features) do not take the
    one-op path; the outputs are still those of the reference."""
    ref, fused = _pair("hybrid-tk")
    ids, mask = batch(B=2, T=20, left_pad=3)
    for model in (ref, fused):
        set_attention_mode(model, "linear")
    with torch.no_grad():
        a = ref(input_ids=ids, attention_mask=mask, use_cache=False).logits
        b = fused(input_ids=ids, attention_mask=mask, use_cache=False).logits
    check_close("padded logits", a, b, **TOL)
    set_attention_mode(fused, "transfer")
    layer = attention_modules(fused)[0]
    layer.capture_head = 1
    with torch.no_grad():
        fused(input_ids=ids[:1], use_cache=False)
    assert layer.captured_maps is not None and one_op_calls == [1]


def test_linear_with_sink_tokens_keeps_the_two_op_path(one_op_calls):
    """Pure linear attention with sinks runs the hybrid math (exact sink terms): not the staged linear op."""
    ref, fused = _pair("linear", sink_tokens=2)
    ids, _ = batch(B=2, T=24, left_pad=0)
    for model in (ref, fused):
        set_attention_mode(model, "linear")
    with torch.no_grad():
        a = ref(input_ids=ids, use_cache=False).logits
        b = fused(input_ids=ids, use_cache=False).logits
    assert one_op_calls == [], "window 0 with sink tokens must not take the one-op path"
    check_close("logits with sinks", a, b, **TOL)
