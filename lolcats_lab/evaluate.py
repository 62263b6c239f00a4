"""Evaluation: perplexity over packed sequences, in whatever attention mode the model is in."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, batch_size: int = 4, progress: bool = False) -> float:
    """exp(mean next-token NLL) over ``ids`` [N, T] (each row scored on its own; T-1 targets per row)."""
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise ValueError(f"ids must be token ids [N, T] with T >= 2, got shape {tuple(ids.shape)}")
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    try:
        for start in tqdm(range(0, ids.shape[0], batch_size), desc="perplexity", disable=not progress):
            batch = ids[start : start + batch_size]
            logits = model(input_ids=batch, use_cache=False).logits.float()  # [b, T, V]
            loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
            nll += loss.item()
            count += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    if not math.isfinite(nll):
        raise ValueError("the model produced non-finite log-likelihoods; check the attention mode and weights")
    return math.exp(nll / count)
