"""Training loop, attention transfer and LoRA on a tiny random Llama (fast, CPU, fixed seeds)."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lolcats_lab.evaluate import perplexity
from lolcats_lab.models.convert import linearize
from lolcats_lab.train import (
    LoopConfig,
    LoraSettings,
    TrainingDiverged,
    TransferConfig,
    finetune_lora,
    layer_mse,
    run_training,
    transfer,
)
from lolcats_lab.train.loop import CHECKPOINT_NAME, batch_indices, lr_factor


def tiny_llama(seed=0, attention="hybrid-tk"):
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=101, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).eval()
    linearize(model, attention=attention, window=8, feature_dim=16)
    return model


def data(n=16, t=32, seed=1):
    return torch.randint(0, 101, (n, t), generator=torch.Generator().manual_seed(seed))


def test_transfer_reduces_every_layers_mse():
    model, ids = tiny_llama(), data()
    before = layer_mse(model, ids).mean(-1)
    result = transfer(model, ids, TransferConfig(steps=30, batch_size=4, progress=False))
    after = layer_mse(model, ids).mean(-1)
    assert result.steps_done == 30 and len(result.history) == 30
    assert (after < 0.5 * before).all(), f"per-layer MSE before {before.tolist()} after {after.tolist()}"
    assert len(result.history[0]["layer_mse"]) == 2


def test_transfer_only_changes_feature_maps_and_window_logits():
    model, ids = tiny_llama(), data()
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    transfer(model, ids, TransferConfig(steps=2, batch_size=2, progress=False))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, snapshot[n])}
    assert changed, "nothing trained"
    assert all(any(s in n for s in (".q_map.", ".k_map.", ".window_logit")) for n in changed), sorted(changed)
    assert any(".window_logit" in n for n in changed)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    ids = data()
    cfg = TransferConfig(steps=6, batch_size=3, progress=False, seed=5)
    full = tiny_llama()
    transfer(full, ids, cfg)
    part = tiny_llama()
    first = transfer(part, ids, cfg, checkpoint_dir=tmp_path, stop_after=3)
    assert first.interrupted and first.steps_done == 3 and (tmp_path / CHECKPOINT_NAME).exists()
    resumed = tiny_llama()  # a fresh process would rebuild the model from scratch
    second = transfer(resumed, ids, cfg, checkpoint_dir=tmp_path, resume=True)
    assert second.steps_done == 6 and len(second.history) == 6
    for (n, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), f"{n} differs after resume"


def test_negative_control_different_seed_gives_different_weights():
    ids = data()
    a, b = tiny_llama(), tiny_llama()
    transfer(a, ids, TransferConfig(steps=3, batch_size=3, progress=False, seed=1))
    transfer(b, ids, TransferConfig(steps=3, batch_size=3, progress=False, seed=2))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_corrupted_checkpoint_is_reported(tmp_path):
    model, ids = tiny_llama(), data()
    transfer(model, ids, TransferConfig(steps=1, batch_size=2, progress=False), checkpoint_dir=tmp_path)
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="is unreadable .*delete it to start over"):
        transfer(tiny_llama(), ids, TransferConfig(steps=2, batch_size=2, progress=False), checkpoint_dir=tmp_path, resume=True)


def test_nan_loss_stops_with_step_and_layer():
    p = torch.nn.Parameter(torch.ones(3))

    def loss_fn(batch):
        bad = float("nan") if p.detach().sum() < 2.9 else 1.0
        return p.sum() * bad, {"layer_mse": [0.1, bad]}

    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 1 \(first non-finite layer: 1\)"):
        run_training({"p": p}, loss_fn, data(4, 2), LoopConfig(steps=5, batch_size=2, lr=0.1, progress=False))


def test_interrupt_writes_a_checkpoint(tmp_path):
    p = torch.nn.Parameter(torch.ones(2))
    calls = []

    def loss_fn(batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return (p**2).sum(), {}

    with pytest.raises(KeyboardInterrupt):
        run_training({"p": p}, loss_fn, data(4, 2), LoopConfig(steps=5, batch_size=2, progress=False), checkpoint_dir=tmp_path)
    assert (tmp_path / CHECKPOINT_NAME).exists()


def test_grad_accumulation_matches_a_big_batch():
    """2 micro-batches of 2 == one batch of 4 for a mean loss (same rows, same update)."""
    target = torch.randn(8, 3)

    def run(bs, accum):
        p = torch.nn.Parameter(torch.zeros(3))
        ids = torch.arange(8)[:, None].repeat(1, 2)
        cfg = LoopConfig(steps=1, batch_size=bs, grad_accum=accum, lr=0.1, progress=False, max_grad_norm=None)
        run_training({"p": p}, lambda b: (((p - target[b[:, 0]]) ** 2).mean(), {}), ids, cfg)
        return p.detach()

    # rows 0..3 of the stream: micro-batches (0,1) and (2,3) vs batch (0..3) of the same permutation
    torch.testing.assert_close(run(2, 2), run(4, 1))


def test_batch_stream_and_schedule():
    rows = torch.cat([batch_indices(m, 3, 7, seed=0) for m in range(7)])  # 21 rows = 3 epochs of 7
    for e in range(3):
        assert sorted(rows[7 * e : 7 * e + 7].tolist()) == list(range(7))
    cfg = LoopConfig(steps=10, warmup_steps=2, lr=1.0, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == 0.5 and lr_factor(1, cfg) == 1.0
    assert lr_factor(10, cfg) == pytest.approx(0.1) and lr_factor(6, cfg) == pytest.approx(0.55)


@pytest.mark.parametrize("kw, match", [(dict(steps=0), "steps must be an int >= 1"), (dict(lr=-1), "lr must be a positive"),
                                       (dict(schedule="step"), "schedule must be")])
def test_bad_loop_config(kw, match):
    with pytest.raises(ValueError, match=match):
        LoopConfig(**kw)


def test_transfer_on_unlinearized_model_is_rejected():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, vocab_size=50))
    with pytest.raises(ValueError, match="not linearized"):
        transfer(model, data(), TransferConfig(steps=1, progress=False))


def test_lora_trains_only_adapters_and_lowers_the_loss():
    model, ids = tiny_llama(), data(8, 24)
    ppl_before = perplexity(model, ids)
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = finetune_lora(model, ids, LoraSettings(steps=15, lr=1e-2, batch_size=4, progress=False))
    changed = {n for n, p in model.named_parameters() if n in snapshot and not torch.equal(p, snapshot[n])}
    assert not changed, f"non-LoRA weights changed: {sorted(changed)[:3]}"
    lora = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert len(lora) == 2 * 4 * 2  # A and B for q/k/v/o in 2 layers
    ppl_after = perplexity(model, ids)
    assert ppl_after < ppl_before, (ppl_before, ppl_after)
    assert math.isfinite(result.history[-1]["loss"])


def test_layerwise_transfer_equals_joint_transfer_on_one_batch():
    """Every layer sees teacher inputs either way, so with one batch and no global clipping, training
    layer by layer from cached inputs gives the same maps as joint training."""
    from lolcats_lab.train.layerwise import transfer_layerwise

    ids = data(4, 24)
    cfg = TransferConfig(steps=3, batch_size=4, progress=False, max_grad_norm=None)
    joint, layerwise = tiny_llama(), tiny_llama()
    transfer(joint, ids, cfg)
    results = transfer_layerwise(layerwise, ids, cfg)
    assert [r.steps_done for r in results] == [3, 3]
    for (n, p), (_, q) in zip(joint.named_parameters(), layerwise.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m: f"{n}: {m}")
    assert any(not torch.equal(p, q) for p, q in zip(joint.parameters(), tiny_llama().parameters()))


def test_layerwise_transfer_lowers_mse_and_trains_only_requested_layers():
    from lolcats_lab.train.layerwise import transfer_layerwise

    model, ids = tiny_llama(), data()
    before = layer_mse(model, ids).mean(-1)
    untouched = {n: p.detach().clone() for n, p in model.named_parameters() if ".layers.0." in n}
    transfer_layerwise(model, ids, TransferConfig(steps=20, batch_size=4, progress=False), layers=[1])
    after = layer_mse(model, ids).mean(-1)
    assert after[1] < 0.5 * before[1]
    assert all(torch.equal(p, untouched[n]) for n, p in model.named_parameters() if n in untouched)
    with pytest.raises(ValueError, match=r"layers must be in \[0, 2\)"):
        transfer_layerwise(model, ids, TransferConfig(steps=1, progress=False), layers=[5])
