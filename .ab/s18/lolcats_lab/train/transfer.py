"""Stage 1, attention transfer: train only the feature maps (and window factors) so that every layer's
linearized attention output matches its softmax output.

In transfer mode each wrapped layer passes the exact softmax output on to the next layer and records the
per-head MSE of its linearized output (before o_proj). The loss is

    loss = mse_scale * sum_layers mean_heads MSE(y_lin, y_soft)

(the paper scales the MSE by 1000; ``mse_scale`` sets it). Because every layer sees teacher inputs, each
layer's maps get gradients from their own layer's term only: training all layers jointly equals training
them one at a time. The base model's weights stay frozen and no logits are computed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.convert import collect_transfer_mse, set_attention_mode, trainable_parameters
from .loop import LoopConfig, LoopResult, run_training


@dataclass
class TransferConfig(LoopConfig):
    """Attention-transfer settings (LoopConfig plus the loss scale)."""

    lr: float = 1e-2
    mse_scale: float = 1000.0
    desc: str = "attention transfer"


def backbone(model: nn.Module) -> nn.Module:
    """The transformer without its task head (no logits needed for transfer)."""
    return getattr(model, "base_model", model)


def transfer_loss(model: nn.Module, input_ids: torch.Tensor, mse_scale: float) -> tuple[torch.Tensor, dict]:
    """One transfer-mode forward pass: (scaled summed per-layer MSE, {"layer_mse": [L], "mse": mean})."""
    backbone(model)(input_ids=input_ids, use_cache=False)
    per_head = collect_transfer_mse(model)  # [L, H]
    layer_mse = per_head.mean(-1)  # [L]
    values = layer_mse.detach().float().tolist()
    return mse_scale * layer_mse.sum(), {"layer_mse": values, "mse": sum(values) / len(values)}


def transfer(
    model: nn.Module,
    train_ids: torch.Tensor,
    cfg: TransferConfig | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    callback=None,
    stop_after: int | None = None,
) -> LoopResult:
    """Train the linearized model's feature maps on packed sequences ``train_ids`` [N, T].

    Leaves the model in "linear" mode. ``callback`` receives {"step", "loss", "lr", "mse", "layer_mse"}.
    """
    cfg = cfg or TransferConfig()
    params = {n: p for n, p in trainable_parameters(model).items() if "lora_" not in n}
    if not params:
        raise ValueError("no trainable feature maps: call lolcats_lab.linearize(model, ...) before transfer")
    was_training = model.training
    model.eval()  # no dropout: the teacher must be deterministic
    set_attention_mode(model, "transfer")
    try:
        return run_training(
            params, lambda batch: transfer_loss(model, batch, cfg.mse_scale), train_ids, cfg,
            checkpoint_dir=checkpoint_dir, resume=resume, callback=callback, stop_after=stop_after,
        )
    finally:
        set_attention_mode(model, "linear")
        model.train(was_training)


@torch.no_grad()
def layer_mse(model: nn.Module, ids: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Per-layer, per-head MSE [L, H] between linearized and softmax outputs over ``ids`` [N, T]
    (mean over batches). Restores the previous attention mode."""
    from ..models.convert import attention_modules

    previous = attention_modules(model)[0].mode
    set_attention_mode(model, "transfer")
    try:
        total = None
        for start in range(0, ids.shape[0], batch_size):
            backbone(model)(input_ids=ids[start : start + batch_size], use_cache=False)
            mse = collect_transfer_mse(model).float() * ids[start : start + batch_size].shape[0]
            total = mse if total is None else total + mse
        return total / ids.shape[0]
    finally:
        set_attention_mode(model, previous)
