"""Memory: the CPU peak tracker, the estimate against measured peaks, the refusal and its fixes, and gradient
checkpointing through the linearized wrappers and LoRA."""

import warnings

import pytest
import torch

from lolcats_lab.models import linearize
from lolcats_lab.scale import (
    InsufficientMemory,
    PeakMemory,
    RunShape,
    build_random_model,
    enable_gradient_checkpointing,
    estimate_memory,
    llama3_8b_config,
    require_fit,
    suggest_fixes,
    tensor_bytes,
)
from lolcats_lab.scale.plan import main as plan_main
from lolcats_lab.train import LoraSettings, TransferConfig, finetune_lora, transfer_layerwise
from lolcats_lab.train.lora import add_lora

GiB = 2**30
# The estimate sums transients that never coexist, so it should err high, but it must stay useful.
# Measured ratios estimate / measured for the cases below: 1.10-1.27 (fp32 and bf16, CPU, torch 2.13).
LOW, HIGH = 0.9, 1.8


def tiny(dtype=torch.float32, layers=2, V=256):
    """Llama-3-8B attention shapes (32 heads, 8 kv heads, head dim 128) at hidden size 64; random weights."""
    cfg = llama3_8b_config(width_scale=64, num_layers=layers, vocab_size=V)
    model = build_random_model(cfg, dtype=dtype, seed=0)
    torch.manual_seed(0)
    linearize(model, window=8, feature_dim=16)
    return cfg, model


def test_peak_memory_counts_new_storages_once():
    x = torch.zeros(256, 256)  # 256 KiB, exists before: not counted
    with PeakMemory() as mem:
        a = torch.ones(256, 256)  # +256 KiB
        b = a * 2  # +256 KiB -> peak 512 KiB
        del b  # -256 KiB
        v = x.view(-1)  # a view of an old tensor: not new
        x.add_(1)  # in place: not new
        c = torch.ones(128, 256)  # +128 KiB
    assert mem.peak_bytes == 512 * 1024
    assert mem.live_bytes == 384 * 1024
    assert tensor_bytes([x, v, a, a[1:]]) == 512 * 1024  # views share their storage
    del a, c


def _measure_transfer(cfg, model, dtype, B, T, N):
    ids = torch.randint(0, cfg.vocab_size, (N, T), generator=torch.Generator().manual_seed(0))
    weights = tensor_bytes(model.parameters())
    with PeakMemory() as mem:
        transfer_layerwise(model, ids, TransferConfig(steps=1, batch_size=B, progress=False))
    run = RunShape("transfer", batch_size=B, seq_len=T, dtype=dtype, layerwise=True, train_sequences=N, feature_dim=16)
    return weights + mem.peak_bytes, estimate_memory(cfg, run)


def _measure_lora(cfg, model, dtype, B, T, ckpt):
    if ckpt:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            enable_gradient_checkpointing(model)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(0))
    with PeakMemory() as mem:
        finetune_lora(model, ids, LoraSettings(steps=1, batch_size=B, progress=False))
    run = RunShape("lora", batch_size=B, seq_len=T, dtype=dtype, grad_checkpointing=ckpt, feature_dim=16)
    return tensor_bytes(model.parameters()) + mem.peak_bytes, estimate_memory(cfg, run)


def _check(measured, est):
    ratio = est.total / measured
    assert LOW <= ratio <= HIGH, f"estimate {est.total / 2**20:.1f} MiB vs measured {measured / 2**20:.1f} MiB (x{ratio:.2f})\n{est.table()}"


def test_estimate_matches_measured_layerwise_transfer():
    cfg, model = tiny()
    _check(*_measure_transfer(cfg, model, "float32", B=2, T=64, N=4))


@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "checkpointed"])
def test_estimate_matches_measured_lora_step(ckpt):
    cfg, model = tiny(layers=3)
    measured, est = _measure_lora(cfg, model, "float32", B=2, T=64, ckpt=ckpt)
    _check(measured, est)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["transfer", "lora", "lora-ckpt"])
def test_estimate_matches_measured_bf16(stage):
    cfg, model = tiny(dtype=torch.bfloat16, layers=3)
    if stage == "transfer":
        _check(*_measure_transfer(cfg, model, "bfloat16", B=1, T=128, N=2))
    else:
        _check(*_measure_lora(cfg, model, "bfloat16", B=1, T=128, ckpt=stage == "lora-ckpt"))


def test_checkpointing_saves_memory_at_8b_scale():
    """Full Llama-3-8B, seq 1024: the switches move the estimate the way they must."""
    cfg = llama3_8b_config()
    lora = estimate_memory(cfg, RunShape("lora", batch_size=4))
    ckpt = estimate_memory(cfg, RunShape("lora", batch_size=4, grad_checkpointing=True))
    assert ckpt.part("activations") < 0.25 * lora.part("activations")
    assert ckpt.part("weights") == lora.part("weights")
    assert 14.9 * GiB < lora.part("weights") < 15.1 * GiB  # 8.03B bf16 parameters + maps + adapters
    fp32 = estimate_memory(cfg, RunShape("lora", batch_size=4, dtype="float32"))
    assert fp32.part("weights") > 1.9 * lora.part("weights")
    joint = estimate_memory(cfg, RunShape("transfer", batch_size=1))
    layerwise = estimate_memory(cfg, RunShape("transfer", batch_size=1, layerwise=True, train_sequences=8))
    assert layerwise.part("activations") < joint.part("activations") / 10
    assert layerwise.part("optimizer") * 32 == joint.part("optimizer")  # AdamW state for one layer instead of 32


def test_refusal_names_the_fixing_flag():
    cfg = llama3_8b_config()
    run = RunShape("lora", batch_size=1, seq_len=1024)
    est = estimate_memory(cfg, run)
    budget = est.total - 1 * GiB  # checkpointing frees ~11 GiB here, so it is the first fix
    with pytest.raises(InsufficientMemory, match=r"^stage 'lora' needs about .* it fits with: --grad-checkpointing") as info:
        require_fit(cfg, run, available=budget, headroom=1.0)
    assert info.value.fixes[0][1].total <= budget
    assert require_fit(cfg, run, available=est.total, headroom=1.0) == est  # fits exactly: returned


def test_refusal_combines_flags_when_one_is_not_enough():
    cfg = llama3_8b_config()
    run = RunShape("lora", batch_size=4, dtype="float32")
    budget = 20 * GiB
    fixes = suggest_fixes(cfg, run, budget)
    assert len(fixes) == 1 and fixes[0][0].startswith("--dtype bfloat16 --grad-checkpointing --batch-size")
    assert fixes[0][1].total <= budget


def test_refusal_without_any_fix_says_so():
    cfg = llama3_8b_config()
    run = RunShape("transfer", batch_size=1, layerwise=True, train_sequences=4)
    with pytest.raises(InsufficientMemory, match=r"no setting of --dtype, --batch-size, .* makes it fit"):
        require_fit(cfg, run, available=4 * GiB)  # the bf16 weights alone are 15 GiB


@pytest.mark.parametrize("kwargs, match", [
    (dict(stage="train"), r"^stage must be one of \('transfer', 'lora'\), got 'train'"),
    (dict(stage="lora", layerwise=True), r"^layerwise=True applies to stage 'transfer' only"),
    (dict(stage="transfer", grad_checkpointing=True), r"^grad_checkpointing=True applies to stage 'lora' only"),
    (dict(stage="transfer", layerwise=True), r"^layerwise=True caches every training sequence's activations: pass train_sequences"),
    (dict(stage="lora", dtype="int8"), r"^dtype must be one of \['bfloat16', 'float16', 'float32'\], got 'int8'"),
    (dict(stage="lora", batch_size=0), r"^batch_size must be a positive int, got 0"),
])
def test_run_shape_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RunShape(**kwargs)


def test_require_fit_rejects_bad_headroom():
    with pytest.raises(ValueError, match=r"^headroom must be in \(0, 1\], got 1.5"):
        require_fit(llama3_8b_config(), RunShape("lora"), available=GiB, headroom=1.5)


def test_plan_cli_exit_codes(capsys):
    assert plan_main(["--model", "llama3-8b", "--stage", "lora", "--batch-size", "1", "--grad-checkpointing", "--device", "meta"]) == 2
    assert "device must be a CPU or CUDA device" in capsys.readouterr().err
    assert plan_main(["--model", "qwen2-7b", "--stage", "transfer", "--layerwise", "--train-sequences", "100000", "--device", "cpu"]) == 1
    out = capsys.readouterr()
    assert "memory estimate: qwen2-7b, stage 'transfer'" in out.out and out.err.startswith("refused: stage 'transfer' needs about")


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    """HF checkpointing (use_reentrant=False) recomputes each block, linearized wrappers and LoRA included:
    same loss and LoRA gradients as without. fp32 on CPU recomputes the same ops in the same order, so the
    results agree to 1e-6 (measured: identical)."""
    def loss_and_grads(ckpt):
        cfg, model = tiny(layers=2)
        torch.manual_seed(0)
        params = add_lora(model, LoraSettings(rank=4))
        for n, p in params.items():  # LoRA B starts at 0: make the adapters matter for the check
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
        if ckpt:
            enable_gradient_checkpointing(model)
        model.train()
        ids = torch.randint(0, cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        assert model.model.gradient_checkpointing == ckpt
        return loss.detach(), {n: p.grad.clone() for n, p in params.items()}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loss0, g0 = loss_and_grads(False)
        loss1, g1 = loss_and_grads(True)
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=1e-6)
    assert g0.keys() == g1.keys() and len(g0) == 2 * 4 * 2  # A and B, q/k/v/o, 2 layers
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7, msg=lambda m: f"{n}: {m}")
    assert any(g.abs().max() > 0 for g in g0.values())  # negative control: the gradients are not all zero
