"""Decoding with the linearized cache equals the full forward pass (SPEC.md "Decoding must equal training").

Tiny random Llama with GQA (4 q heads, 2 kv heads), window 4 and sequences longer than 3 windows, so tk
blocks turn over several times. Tolerance: fp32 table (ratio 1e-5; measured ~1e-7 on these shapes).
"""

import pytest
import torch
from models_testlib import batch, outputs, perturb_feature_maps, save_tiny
from transformers import DynamicCache

from lolcats_lab.models import linearize, load_model, set_attention_mode
from tests.tolerances import TOLERANCES, check_close

FP32 = TOLERANCES[torch.float32]
CASES = [
    pytest.param(dict(attention="hybrid-tk"), id="tk"),
    pytest.param(dict(attention="hybrid-sw"), id="sw"),
    pytest.param(dict(attention="linear"), id="linear"),
    pytest.param(dict(attention="hybrid-tk", sink_tokens=2), id="tk-sink2"),
    pytest.param(dict(attention="linear", sink_tokens=1), id="linear-sink1"),
]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("gen") / "llama")


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_other_decoders_decode_like_forward(tmp_path, arch):
    """Mistral (sliding-window softmax mask, one kv head) and Qwen2 (q/k/v biases): same equivalence."""
    model = _model(save_tiny(arch, tmp_path / arch), attention="hybrid-tk")
    ids, mask = batch(B=2, T=15, left_pad=3)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    full = outputs(model, ids, mask, position_ids=pos)
    step, _ = _decode(model, ids, [5] + [1] * 10, mask=mask)
    check_close(arch, full[:, 3:], step[:, 3:], **FP32)  # row 1's padding positions are not compared
    check_close(arch + "-row0", full[0], step[0], **FP32)


def _model(llama_dir, **kw):
    model, _ = load_model(llama_dir)
    linearize(model, window=4, feature_dim=8, **kw)
    perturb_feature_maps(model)
    return model


def _decode(model, ids, splits, mask=None):
    """Feed ids in pieces (prefill of splits[0] tokens, then the given piece sizes) through one cache."""
    cache = DynamicCache(config=model.config)
    logits, start = [], 0
    pos = None if mask is None else (mask.cumsum(-1) - 1).clamp_min(0)  # as generate() does for left padding
    with torch.no_grad():
        for n in splits:
            m = None if mask is None else mask[:, : start + n]
            p = None if pos is None else pos[:, start : start + n]
            out = model(input_ids=ids[:, start : start + n], attention_mask=m, position_ids=p, past_key_values=cache, use_cache=True)
            logits.append(out.logits)
            start += n
    return torch.cat(logits, dim=1), cache


@pytest.mark.parametrize("kw", CASES)
def test_token_by_token_equals_full_forward(llama_dir, kw):
    model = _model(llama_dir, **kw)
    ids, _ = batch(B=2, T=15, left_pad=0)
    full = outputs(model, ids)
    for splits in ([5] + [1] * 10, [1] * 15, [6, 4, 1, 1, 3]):
        step, cache = _decode(model, ids, splits)
        check_close(f"{kw}-{splits}", full, step, **FP32)
        assert cache.get_seq_length() == 15


def test_tk_and_sw_rules_differ(llama_dir):
    """Negative control for the test above: with the same maps, the two window rules give other logits,
    so decoding a tk model with the sw rule (as the original code does) would be caught."""
    tk = _model(llama_dir, attention="hybrid-tk")
    sw = _model(llama_dir, attention="hybrid-sw")
    sw.load_state_dict(tk.state_dict())
    ids, _ = batch(B=1, T=15, left_pad=0)
    assert (outputs(tk, ids) - outputs(sw, ids)).abs().max().item() > 1e-4


@pytest.mark.parametrize("kw", CASES[:4])
def test_left_padded_row_equals_unpadded(llama_dir, kw):
    """Forward and decoding: a left-padded row gives the outputs of its unpadded sequence, given position ids
    that start at its first real token (generate() passes those; the feature maps see absolute RoPE
    positions, so unlike softmax, linear attention is not invariant to a shift of all positions)."""
    model = _model(llama_dir, **kw)
    ids, mask = batch(B=2, T=15, left_pad=5)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    alone = outputs(model, ids[1:, 5:])  # [1, 10, V]
    padded = outputs(model, ids, mask, position_ids=pos)
    check_close("forward", alone[0], padded[1, 5:], **FP32)
    step, _ = _decode(model, ids, [7] + [1] * 8, mask=mask)
    check_close("decode", alone[0], step[1, 5:], **FP32)
    check_close("row 0 unaffected", outputs(model, ids[:1]), step[:1], **FP32)


@pytest.mark.parametrize("kw", CASES[:3])
def test_generate_matches_greedy_full_forward(llama_dir, kw):
    model = _model(llama_dir, **kw)
    ids, mask = batch(B=2, T=6, left_pad=2)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 16)
    # row 0 (no padding): greedy rollout with full forward passes and no cache
    seq = ids[:1]
    for _ in range(10):
        nxt = outputs(model, seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out[:1], seq)
    # row 1 (left padded) generates what it generates alone
    alone = model.generate(input_ids=ids[1:, 2:], max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(out[1:, 2:], alone)


def test_cache_memory_is_constant(llama_dir):
    model = _model(llama_dir, attention="hybrid-tk")
    ids, _ = batch(B=1, T=5, left_pad=0)
    sizes = []
    for n in (12, 24):
        cache = DynamicCache(config=model.config)
        model.generate(input_ids=ids, past_key_values=cache, max_new_tokens=n, do_sample=False, pad_token_id=0)
        assert cache.get_seq_length() == 5 + n - 1  # the last token is returned, not fed back
        sizes.append(sum(layer.state_numel() for layer in cache.layers))
    assert sizes[0] == sizes[1] > 0
    # negative control: softmax mode's key/value cache grows with the generated length
    set_attention_mode(model, "softmax")
    grown = []
    for n in (12, 24):
        cache = DynamicCache(config=model.config)
        model.generate(input_ids=ids, past_key_values=cache, max_new_tokens=n, do_sample=False, pad_token_id=0)
        grown.append(cache.layers[0].keys.numel())
    assert grown[1] > grown[0]


def test_softmax_mode_generation_matches_original(llama_dir):
    ref, _ = load_model(llama_dir)
    model = _model(llama_dir, attention="hybrid-tk")
    set_attention_mode(model, "softmax")
    ids, mask = batch(B=2, T=6, left_pad=2)
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(input_ids=ids, **kw), ref.generate(input_ids=ids, **kw))


def test_cache_errors(llama_dir):
    model = _model(llama_dir, attention="hybrid-sw")
    ids, mask = batch(B=2, T=8, left_pad=0)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids[:, :6], past_key_values=cache, use_cache=True)
        bad = torch.ones(2, 8, dtype=torch.long)
        bad[0, 7] = 0
        with pytest.raises(ValueError, match=r"^padding among new tokens after the prompt is not supported"):
            model(input_ids=ids[:, 6:], attention_mask=bad, past_key_values=cache, use_cache=True)
    set_attention_mode(model, "softmax")
    soft_cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids[:, :6], past_key_values=soft_cache, use_cache=True)
        set_attention_mode(model, "linear")
        with pytest.raises(ValueError, match=r"^cache layer 0 already holds 6 softmax keys/values"):
            model(input_ids=ids[:, 6:], past_key_values=soft_cache, use_cache=True)
    with pytest.raises(NotImplementedError, match=r"beam search"):
        model.generate(input_ids=ids[:1], max_new_tokens=3, num_beams=2, do_sample=False, pad_token_id=0)


def test_cache_argument_under_both_transformers_names():
    """transformers >= 5.24 hands the attention module ``cache=``, earlier 5.x ``past_key_values=`` (and
    5.24 still accepts that as a deprecated keyword, which lands among the extra kwargs): the layer finds
    the cache under either name and takes it out of the extras; no cache gives None."""
    from transformers import DynamicCache

    from lolcats_lab.models.linearized_attention import _cache_argument

    cache = DynamicCache()  # empty: falsy under len(), must still be found
    assert _cache_argument({"cache": cache}, {}) is cache
    assert _cache_argument({"past_key_values": cache}, {}) is cache
    extra = {"past_key_values": cache, "output_attentions": False}
    assert _cache_argument({"cache": None}, extra) is cache and extra == {"output_attentions": False}
    assert _cache_argument({"cache": None}, {}) is None
