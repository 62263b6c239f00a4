"""linearize / set_attention_mode on tiny random Llama, Mistral, Qwen2 and BERT models.

Softmax mode must reproduce the unmodified model (fp32, logits within 1e-5; measured: bit-identical, the
wrapper calls the original module). Linear mode is checked against an independent reconstruction of one
layer from the Hugging Face modules (projections, RoPE, GQA repeat) and the naive reference math.
"""

import pytest
import torch
from models_testlib import ARCHS, batch, outputs, perturb_feature_maps, save_tiny
from transformers import GPT2Config, GPT2LMHeadModel

from lolcats_lab.attention import naive_hybrid_attn, naive_linear_attn, softmax_attn
from lolcats_lab.models import (
    LinearizedAttention,
    attention_modules,
    captured_maps,
    collect_transfer_mse,
    linearize,
    load_model,
    set_attention_mode,
    trainable_parameters,
)
from tests.tolerances import TOLERANCES, check_close

FP32 = TOLERANCES[torch.float32]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {a: save_tiny(a, root / a) for a in ARCHS}


def _load(tiny_dirs, arch):
    model, _ = load_model(tiny_dirs[arch])
    return model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attention", ["hybrid-tk", "linear"])
def test_softmax_mode_reproduces_unmodified_model(tiny_dirs, arch, attention):
    ref = _load(tiny_dirs, arch)
    model = linearize(_load(tiny_dirs, arch), attention=attention, window=4, feature_dim=8)
    ids, mask = batch(left_pad=0, right_pad=3) if arch == "bert" else batch(left_pad=3)
    set_attention_mode(model, "softmax")
    want, got = outputs(ref, ids, mask), outputs(model, ids, mask)
    assert (got - want).abs().max().item() <= 1e-5
    # negative control: the linearized attention (untrained maps) is far from softmax
    set_attention_mode(model, "linear")
    assert (outputs(model, ids, mask) - want).abs().max().item() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_transfer_mode_passes_softmax_on_and_records_mse(tiny_dirs, arch):
    ref = _load(tiny_dirs, arch)
    model = linearize(_load(tiny_dirs, arch), attention="hybrid-sw", window=4, feature_dim=8, mode="transfer")
    ids, mask = batch(left_pad=0, right_pad=2) if arch == "bert" else batch(left_pad=2)
    got = outputs(model, ids, mask)
    assert (got - outputs(ref, ids, mask)).abs().max().item() <= 1e-5
    mse = collect_transfer_mse(model)
    heads = model.config.num_attention_heads
    assert mse.shape == (model.config.num_hidden_layers, heads)
    assert torch.isfinite(mse).all() and (mse > 0).all()


def _layer0_inputs(model, ids, mask):
    """Capture layer 0 attention's call (hidden_states + kwargs) with a forward pre-hook."""
    seen = {}
    wrapper = attention_modules(model)[0]

    def hook(mod, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    h = wrapper.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        outputs(model, ids, mask)
    finally:
        h.remove()
    kwargs = dict(seen["kwargs"])
    x = seen["args"][0] if seen["args"] else kwargs.pop("hidden_states")
    return wrapper, x, kwargs


def _reference_qkv(wrapper, x, kwargs, model, *, rope=True):
    """q, k, v [B, H, T, D] from the HF projections, HF RoPE and an explicit GQA repeat."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    base = wrapper.base_attn
    B, T, _ = x.shape
    H, Hkv, D = wrapper.num_heads, wrapper.num_kv_heads, wrapper.head_dim
    names = ("query", "key", "value") if model.config.model_type == "bert" else ("q_proj", "k_proj", "v_proj")
    q, k, v = (getattr(base, n)(x) for n in names)
    q = q.view(B, T, H, D).transpose(1, 2)
    k = k.view(B, T, Hkv, D).transpose(1, 2)
    v = v.view(B, T, Hkv, D).transpose(1, 2)
    if model.config.model_type != "bert" and rope:
        cos, sin = kwargs["position_embeddings"]
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
    rep = H // Hkv
    k = torch.stack([k[:, h // rep] for h in range(H)], dim=1)  # head h uses kv head h // rep
    v = torch.stack([v[:, h // rep] for h in range(H)], dim=1)
    return q, k, v


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attention", ["hybrid-tk", "hybrid-sw", "linear"])
def test_linear_layer_matches_reconstruction(tiny_dirs, arch, attention):
    torch.manual_seed(0)
    model = linearize(_load(tiny_dirs, arch), attention=attention, window=4, feature_dim=8)
    perturb_feature_maps(model)
    ids, _ = batch(B=2, T=14)
    wrapper, x, kwargs = _layer0_inputs(model, ids, None)
    with torch.no_grad():
        got, _ = wrapper(x, **kwargs)
        q, k, v = _reference_qkv(wrapper, x, kwargs, model)
        fq, fk = wrapper.q_map(q), wrapper.k_map(k)
        causal = arch != "bert"
        if attention == "linear":
            y = naive_linear_attn(fq, fk, v, causal=causal)
        else:
            y = naive_hybrid_attn(q, k, v, fq, fk, wrapper.window_logit, window=4, kind=attention[-2:], causal=causal)
        y = y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        want = y if arch == "bert" else wrapper.base_attn.o_proj(y)
        check_close(f"{arch}-{attention}", want, got, **FP32)
        if arch != "bert":  # negative control: RoPE must be applied before the feature map
            q0, k0, v0 = _reference_qkv(wrapper, x, kwargs, model, rope=False)
            y0 = naive_linear_attn(wrapper.q_map(q0), wrapper.k_map(k0), v0)
            y0 = wrapper.base_attn.o_proj(y0.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
            assert (y0 - got).abs().max().item() > 1e-4


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_transfer_mse_matches_reference(tiny_dirs, arch):
    model = linearize(_load(tiny_dirs, arch), attention="hybrid-tk", window=4, feature_dim=8, mode="transfer")
    perturb_feature_maps(model)
    ids, _ = batch(B=2, T=11)
    wrapper, x, kwargs = _layer0_inputs(model, ids, None)
    with torch.no_grad():
        q, k, v = _reference_qkv(wrapper, x, kwargs, model)
        causal = arch != "bert"
        y_soft = softmax_attn(q, k, v, causal=causal)
        y_lin = naive_hybrid_attn(q, k, v, wrapper.q_map(q), wrapper.k_map(k), wrapper.window_logit, window=4, kind="tk", causal=causal)
        want = (y_lin - y_soft).pow(2).mean(dim=(0, 2, 3))  # [H]
    got = collect_transfer_mse(model)[0]
    check_close("mse", want, got, ratio=1e-4)  # MSE of differences: ~1e-6 relative rounding in each term


def test_transfer_mse_ignores_padding(tiny_dirs):
    """A left-padded copy of a sequence gives the MSE of the unpadded sequence, whatever the padding holds."""
    model = linearize(_load(tiny_dirs, "llama"), attention="hybrid-tk", window=4, feature_dim=8, mode="transfer")
    perturb_feature_maps(model)
    ids, _ = batch(B=1, T=10, left_pad=0)
    outputs(model, ids)
    alone = collect_transfer_mse(model)
    for junk in (0, 7):
        padded = torch.cat([torch.full((1, 3), junk), ids], dim=1)
        mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        outputs(model, padded, mask, position_ids=pos)
        check_close(f"padded-{junk}", alone, collect_transfer_mse(model), ratio=1e-4)
    # negative control: counting the padded queries changes the value
    outputs(model, padded, torch.ones_like(mask), position_ids=pos)
    assert not torch.allclose(alone, collect_transfer_mse(model), rtol=1e-3)


def test_only_new_parameters_train(tiny_dirs):
    model = linearize(_load(tiny_dirs, "llama"), attention="hybrid-tk", window=4, feature_dim=8, mode="transfer")
    names = set(trainable_parameters(model))
    assert names and all(n.split(".")[-1] in ("window_logit", "weight") and ".base_attn." not in n for n in names)
    assert all(("q_map" in n or "k_map" in n or "window_logit" in n) for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    ids, mask = batch()
    model(input_ids=ids, attention_mask=mask, use_cache=False)
    collect_transfer_mse(model).sum().backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == names  # every map and window logit moved, nothing else did


def test_pure_linear_has_no_trainable_window(tiny_dirs):
    model = linearize(_load(tiny_dirs, "llama"), attention="linear", feature_dim=8)
    assert not any("window_logit" in n for n in trainable_parameters(model))
    model2 = linearize(_load(tiny_dirs, "llama"), attention="linear", feature_dim=8, sink_tokens=2)
    assert any("window_logit" in n for n in trainable_parameters(model2))


def test_wrapping_keeps_original_modules(tiny_dirs):
    model = _load(tiny_dirs, "qwen2")
    originals = [m.self_attn for m in model.model.layers]
    linearize(model, feature_dim=8)
    wrappers = attention_modules(model)
    assert len(wrappers) == 2 and all(isinstance(w, LinearizedAttention) for w in wrappers)
    assert [w.base_attn for w in wrappers] == originals
    assert all(torch.allclose(torch.sigmoid(w.window_logit), torch.tensor(0.1)) for w in wrappers)
    assert type(originals[0]).forward is type(_load(tiny_dirs, "qwen2").model.layers[0].self_attn).forward


def test_capture_one_layer_head(tiny_dirs):
    model = linearize(_load(tiny_dirs, "llama"), attention="hybrid-tk", window=4, feature_dim=8)
    set_attention_mode(model, "transfer", capture=(1, 2))
    ids, mask = batch(T=10, left_pad=2)
    outputs(model, ids, mask)
    maps = captured_maps(model)
    assert maps["layer"] == 1 and maps["head"] == 2
    assert attention_modules(model)[0].captured_maps is None
    for name in ("softmax", "linear"):
        a = maps[name]
        assert a.shape == (2, 10, 10)
        real = mask.bool()
        sums = a.sum(-1)[real]
        check_close(f"{name} rows sum to 1", torch.ones_like(sums), sums, **FP32)
        assert (a[1][2:, :2] == 0).all()  # padding keys get no weight from real queries
        assert (a.triu(1) == 0).all()  # causal


def test_bad_inputs(tiny_dirs):
    model = _load(tiny_dirs, "llama")
    with pytest.raises(ValueError, match=r"^attention must be one of"):
        linearize(model, attention="sliding")
    with pytest.raises(ValueError, match=r"^window must be an int >= 1"):
        linearize(model, attention="hybrid-sw", window=0)
    with pytest.raises(ValueError, match=r"^feature_map must be one of"):
        linearize(model, feature_map="cosformer")
    with pytest.raises(ValueError, match=r"^sink_tokens must be an int >= 0"):
        linearize(model, sink_tokens=-1)
    with pytest.raises(ValueError, match=r"^impl must be one of"):
        linearize(model, impl="recurrent")
    with pytest.raises(ValueError, match=r"^model is not linearized"):
        set_attention_mode(model, "linear")
    linearize(model, feature_dim=8)
    with pytest.raises(ValueError, match=r"^model is already linearized"):
        linearize(model)
    with pytest.raises(ValueError, match=r"^mode must be one of"):
        set_attention_mode(model, "hybrid")
    with pytest.raises(ValueError, match=r"^capture=\(layer, head\) needs mode='transfer'"):
        set_attention_mode(model, "linear", capture=(0, 0))
    with pytest.raises(ValueError, match=r"^capture head must be in \[0, 4\)"):
        set_attention_mode(model, "transfer", capture=(0, 4))
    set_attention_mode(model, "linear")
    with pytest.raises(ValueError, match=r"^no transfer MSE for layers \[0, 1\]"):
        collect_transfer_mse(model)


def test_unsupported_architecture_lists_supported():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match=r"^model_type 'gpt2' is not supported; supported: \['bert', 'llama', 'mistral', 'qwen2'\]"):
        linearize(gpt2)


def test_bert_decoder_refused():
    from transformers import BertConfig, BertLMHeadModel

    m = BertLMHeadModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, is_decoder=True))
    with pytest.raises(ValueError, match=r"^only BERT encoders"):
        linearize(m)


def test_llama3_shaped_config_converts():
    """Llama-3-8B proportions (32 q heads / 8 kv heads, head_dim 128, rope_theta 5e5), tiny depth/width."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=4096 // 8, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=1, head_dim=128, rope_theta=500000.0)
    model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = "eager"
    ids = torch.randint(0, 64, (1, 9))
    want = outputs(model, ids)
    linearize(model, window=4, feature_dim=16, mode="softmax")
    assert (outputs(model, ids) - want).abs().max().item() <= 1e-5
    set_attention_mode(model, "linear")
    assert torch.isfinite(outputs(model, ids)).all()
    assert attention_modules(model)[0].q_map.weight.shape == (4, 128, 16)


@pytest.mark.parametrize("mode", ["linear", "transfer"])
def test_bf16_model_close_to_fp32(tiny_dirs, mode):
    """bf16 base weights; feature maps stay fp32 and the attention math runs in fp32."""
    m32 = linearize(_load(tiny_dirs, "llama"), window=4, feature_dim=8, mode=mode)
    perturb_feature_maps(m32)
    m16, _ = load_model(tiny_dirs["llama"], dtype=torch.bfloat16)
    linearize(m16, window=4, feature_dim=8, mode=mode)
    m16.load_state_dict(m32.state_dict())
    assert attention_modules(m16)[0].q_map.weight.dtype == torch.float32
    ids, mask = batch(left_pad=2)
    want, got = outputs(m32, ids, mask), outputs(m16, ids, mask)
    # bf16 weights and activations (8-bit mantissa) through 2 layers: measured rel RMS 1.0e-2 (logits),
    # 5e-3 (MSE); 3x headroom, since the error grows with depth rather than staying per-op
    check_close(f"bf16-{mode}", want, got, ratio=3e-2, atol=0.0)
    if mode == "transfer":
        check_close("mse", collect_transfer_mse(m32), collect_transfer_mse(m16), ratio=5e-2, atol=0.0)
