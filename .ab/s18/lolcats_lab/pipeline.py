"""The main job, end to end: load -> linearize -> attention transfer -> LoRA -> evaluate -> save + report.

:func:`run_linearize` is what ``lolcats-lab linearize`` runs; notebooks can call it too, or walk the same
steps one library call at a time. Everything it measures goes into ``metrics.json`` (keys documented in
the README) and a self-contained ``report.html`` in the output directory.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

PRESETS = {
    # finishes in well under 10 minutes on a 2-core CPU with the embedded SmolLM2-135M
    "quick": dict(window=32, seq_len=128, batch_size=2, transfer_steps=150, transfer_lr=2e-2, lora_steps=20, lora_lr=1e-3,
                  train_sequences=400, val_sequences=12),
    # the paper's recipe (Zhang et al. 2024, Llama 3 8B): seq 1024, ~20M transfer tokens; meant for a GPU
    "paper": dict(window=64, seq_len=1024, batch_size=8, transfer_steps=2000, transfer_lr=1e-2, lora_steps=2000, lora_lr=1e-4,
                  train_sequences=None, val_sequences=64),
}
CI_SHRINK = dict(transfer_steps=4, lora_steps=2, train_sequences=24, val_sequences=4, window=16, seq_len=64,
                 sample_tokens=6)


@dataclass
class LinearizeSettings:
    """Everything ``lolcats-lab linearize`` takes; ``preset`` fills the unset training sizes."""

    out: str
    model: str = "smollm2-135m"
    attention: str = "hybrid-tk"
    feature_map: str = "hedgehog"
    feature_dim: int = 64
    window: int | None = None  # None: the preset's (quick 32, paper 64)
    sink_tokens: int = 0
    data: str = "default"
    preset: str = "quick"
    seq_len: int | None = None
    batch_size: int | None = None
    transfer_steps: int | None = None
    transfer_lr: float | None = None
    lora_steps: int | None = None
    lora_lr: float | None = None
    lora_rank: int = 8
    train_sequences: int | None = None
    val_sequences: int | None = None
    mse_scale: float = 1000.0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    resume: bool = False
    layerwise: bool = False  # stage 1 one block at a time from cached teacher inputs (big models, small GPUs)
    grad_checkpointing: bool = False  # stage 2 recomputes each layer in backward (less memory, ~1.3x time)
    memory_check: bool = True  # print the memory estimate and refuse runs that will not fit
    checkpoint_every: int = 0
    progress: bool = True
    samples: list[str] = field(default_factory=lambda: ["The meaning of life is", "def fibonacci(n):", "To be, or not to be"])
    sample_tokens: int | None = None  # None: 24 (6 under LOLCATS_CI=1)

    def resolved(self) -> "LinearizeSettings":
        """Fill unset sizes from the preset (and shrink them when LOLCATS_CI=1)."""
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        filled = {k: v for k, v in {**PRESETS[self.preset], "sample_tokens": 24}.items() if getattr(self, k) is None}
        if os.environ.get("LOLCATS_CI") == "1":
            filled.update({k: v for k, v in CI_SHRINK.items() if getattr(self, k) is None})  # CI sizes win over the preset
        out = replace(self, **filled)
        # tk windows reach back into the previous block, so linear keys only appear after 2 blocks
        needed = {"hybrid-tk": 2 * out.window, "hybrid-sw": out.window}.get(out.attention, 0)
        if out.seq_len <= needed:
            raise ValueError(
                f"--seq-len {out.seq_len} is too short for {out.attention} with --window {out.window}: every key would "
                f"be a window key and nothing linear would be trained; use --seq-len > {needed} "
                "(the paper: seq 1024, window 64) or a smaller --window"
            )
        return out


def _prepare_out_dir(out: str) -> Path:
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as err:
        raise ValueError(f"--out {out!r} is not a writable directory ({err.strerror}); choose another path") from err
    return path


def _atomic_write_json(path: Path, data: dict) -> None:
    from .io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2))


def check_memory_before_loading(s: LinearizeSettings, say) -> None:
    """Print the memory estimate of both stages from the model's config and refuse (InsufficientMemory,
    naming the flags that make it fit) when one will not fit the device's free memory. The embedded
    defaults are small and skipped; a config that cannot be read is left to load_model to report."""
    from .models import EMBEDDED_MODELS
    from .scale.memory import RunShape, require_fit

    if s.model in EMBEDDED_MODELS:
        return
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(s.model, trust_remote_code=False)
    except (OSError, ValueError):
        return

    for stage in ("transfer", "lora"):
        per_stage = dict(layerwise=s.layerwise) if stage == "transfer" else dict(grad_checkpointing=s.grad_checkpointing)
        run = RunShape(stage=stage, batch_size=s.batch_size, seq_len=s.seq_len, dtype=s.dtype,
                       train_sequences=s.train_sequences, feature_dim=s.feature_dim, lora_rank=s.lora_rank, **per_stage)
        est = require_fit(config, run, device=s.device, model=str(s.model))
        say(est.table().replace("\n", "\n           "))


def _completions(model, tok, prompts: list[str], max_new_tokens: int) -> list[str]:
    from .evaluate import generate_samples

    return [g.completion for g in generate_samples(model, tok, prompts, max_new_tokens=max_new_tokens)]


def run_linearize(settings: LinearizeSettings, callback=None, log=print) -> dict:
    """Run the whole conversion and write checkpoint, metrics.json and report.html to ``settings.out``."""
    from .data import prepare_data
    from .evaluate import perplexity
    from .analysis import head_statistics
    from .models import linearize, load_model, save_linearized, set_attention_mode
    from .train import LoopResult, LoraSettings, TransferConfig, finetune_lora, layer_mse, transfer

    s = settings.resolved()
    out = _prepare_out_dir(s.out)
    t0 = time.time()
    say = lambda msg: log(f"[{time.time() - t0:6.0f}s] {msg}")  # noqa: E731
    torch.manual_seed(s.seed)
    say(f"[1/6] loading {s.model}")
    if s.memory_check:
        check_memory_before_loading(s, say)
    model, tok = load_model(s.model, dtype=s.dtype, device=s.device)
    if tok is None:
        raise ValueError(f"{s.model} has no tokenizer files; the main job needs a tokenizer next to the model")
    say(f"[2/6] preparing data ({s.data}, seq_len {s.seq_len})")
    # the train/validation split stays fixed (seed 0) whatever the training seed, so runs compare
    data = prepare_data(s.data, tok, s.seq_len, train_sequences=s.train_sequences, val_sequences=s.val_sequences,
                        progress=s.progress)
    train_ids, val_ids = data.train.to(s.device), data.val.to(s.device)

    say("[3/6] evaluating the teacher (softmax attention)")
    teacher_ppl = perplexity(model, val_ids, batch_size=s.batch_size)
    teacher_samples = _completions(model, tok, s.samples, s.sample_tokens)
    linearize(model, attention=s.attention, feature_map=s.feature_map, window=s.window, feature_dim=s.feature_dim,
              sink_tokens=s.sink_tokens)
    probe = val_ids[: min(4, len(val_ids))]
    stats_before = head_statistics(model, probe[:1])
    mse_before = layer_mse(model, probe)  # [L, H]
    ppl_before = perplexity(model, val_ids, batch_size=s.batch_size)

    say(f"[4/6] attention transfer: {s.transfer_steps} steps" + (" (skipped: the LoRA-only ablation)" if not s.transfer_steps else ""))
    if s.transfer_steps:
        tcfg = TransferConfig(steps=s.transfer_steps, lr=s.transfer_lr, batch_size=s.batch_size, mse_scale=s.mse_scale,
                              seed=s.seed, checkpoint_every=s.checkpoint_every, progress=s.progress)
    if not s.transfer_steps:  # feature maps stay at their initialisation; LoRA alone recovers what it can
        t_result = LoopResult(steps_done=0)
    elif s.layerwise:
        from .train import transfer_layerwise

        per_layer = transfer_layerwise(model, train_ids, tcfg, checkpoint_dir=out / "transfer_state", callback=callback)
        t_result = LoopResult(steps_done=s.transfer_steps, history=[h for r in per_layer for h in r.history])
    else:
        t_result = transfer(model, train_ids, tcfg, checkpoint_dir=out / "transfer_state", resume=s.resume, callback=callback)
    mse_after = layer_mse(model, probe)  # [L, H]
    ppl_after = perplexity(model, val_ids, batch_size=s.batch_size)
    L, H = mse_after.shape
    worst, best = divmod(int(mse_after.argmax()), H), divmod(int(mse_after.argmin()), H)
    stats_after = head_statistics(model, probe[:1], keep_maps=(worst[0], best[0]))

    say(f"[5/6] LoRA: {s.lora_steps} steps")
    lcfg = LoraSettings(steps=s.lora_steps, lr=s.lora_lr, rank=s.lora_rank, alpha=2.0 * s.lora_rank,
                        batch_size=s.batch_size, seed=s.seed, checkpoint_every=s.checkpoint_every, progress=s.progress)
    if s.grad_checkpointing:
        from .scale.memory import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)
    l_result = finetune_lora(model, train_ids, lcfg, checkpoint_dir=out / "lora_state", resume=s.resume, callback=callback)
    set_attention_mode(model, "linear")
    ppl_lora = perplexity(model, val_ids, batch_size=s.batch_size)
    student_samples = _completions(model, tok, s.samples, s.sample_tokens)

    say("[6/6] saving checkpoint, metrics.json and report.html")
    save_linearized(model, out / "checkpoint")
    metrics = {
        "teacher_ppl": teacher_ppl,
        "ppl_before_transfer": ppl_before,
        "ppl_after_transfer": ppl_after,
        "ppl_after_lora": ppl_lora,
        "layer_mse_before": mse_before.mean(-1).tolist(),
        "layer_mse_after": mse_after.mean(-1).tolist(),
        "transfer_tokens": t_result.steps_done * s.batch_size * s.seq_len,
        "lora_tokens": l_result.steps_done * s.batch_size * s.seq_len,
        "wall_seconds": time.time() - t0,
        "settings": {k: v for k, v in asdict(s).items() if k != "samples"},
        "data": data.info,
        "transfer_loss": [h["loss"] for h in t_result.history],
        "transfer_layer_mse": [h["layer_mse"] for h in t_result.history if "layer_mse" in h],
        "lora_loss": [h["loss"] for h in l_result.history],
        "head_mse_before": mse_before.tolist(),
        "head_mse_after": mse_after.tolist(),
        "head_entropy_teacher": stats_before["entropy_softmax"].tolist(),
        "head_entropy_before": stats_before["entropy_linear"].tolist(),
        "head_entropy_after": stats_after["entropy_linear"].tolist(),
        "samples": [{"prompt": p, "teacher": a, "linearized": b} for p, a, b in zip(s.samples, teacher_samples, student_samples)],
    }
    _atomic_write_json(out / "metrics.json", metrics)
    from .viz.run_report import write_run_report

    maps = {label: (layer, head, stats_after["maps"][layer][0][head], stats_after["maps"][layer][1][head])
            for label, (layer, head) in (("worst", worst), ("best", best))}
    write_run_report(out / "report.html", metrics, maps, tokens=[tok.decode([i]) for i in probe[0].tolist()])
    return metrics
