"""Stage 2, LoRA: low-rank adapters on the attention projections, trained with the next-token loss while
the linearized attention is on. peft injects the adapters in place (``inject_adapter_in_model``), so the
model keeps its class, ``generate`` and the linearized wrappers; the adapters sit inside each wrapper's
``base_attn`` projections, which the linearized path calls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.convert import attention_modules, set_attention_mode
from .loop import LoopConfig, LoopResult, run_training

# projection names per architecture (peft matches them as module-name suffixes)
DEFAULT_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "bert": ["query", "key", "value", "attention.output.dense"],
}


@dataclass
class LoraSettings(LoopConfig):
    """LoRA settings (the paper: rank 8, alpha 16, q/k/v/o) plus the loop settings."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] | None = None  # None: DEFAULT_TARGETS for the model type
    train_feature_maps: bool = False
    lr: float = 1e-3
    desc: str = "LoRA"


def add_lora(model: nn.Module, settings: LoraSettings) -> dict[str, nn.Parameter]:
    """Inject LoRA adapters into the attention projections; return the parameters to train."""
    from peft import LoraConfig, inject_adapter_in_model

    model_type = model.config.model_type
    targets = settings.targets or DEFAULT_TARGETS.get(model_type)
    if not targets:
        raise ValueError(f"no default LoRA targets for model type {model_type!r}; pass targets=[...] "
                         f"(known: {sorted(DEFAULT_TARGETS)})")
    if any("lora_" in n for n, _ in model.named_parameters()):
        raise ValueError("model already has LoRA adapters")
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets)
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        is_lora = "lora_" in name
        is_map = any(s in name for s in (".q_map.", ".k_map.", ".window_logit"))
        p.requires_grad_(is_lora or (settings.train_feature_maps and is_map and _map_trainable(model, name)))
    model.lolcats_lora = {"rank": settings.rank, "alpha": settings.alpha, "targets": list(targets)}
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _map_trainable(model: nn.Module, name: str) -> bool:
    return not name.endswith("window_logit") or attention_modules(model)[0].uses_window


def lm_loss(model: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    out = model(input_ids=input_ids, labels=input_ids, use_cache=False)
    return out.loss, {}


def finetune_lora(
    model: nn.Module,
    train_ids: torch.Tensor,
    settings: LoraSettings | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    callback=None,
    stop_after: int | None = None,
) -> LoopResult:
    """Add LoRA (if not yet added) and train it with the next-token loss in linear mode."""
    settings = settings or LoraSettings()
    params = add_lora(model, settings) if not any("lora_" in n for n, _ in model.named_parameters()) else \
        {n: p for n, p in model.named_parameters() if p.requires_grad}
    set_attention_mode(model, "linear")
    model.train()
    try:
        return run_training(params, lambda batch: lm_loss(model, batch), train_ids, settings,
                            checkpoint_dir=checkpoint_dir, resume=resume, callback=callback, stop_after=stop_after)
    finally:
        model.eval()
