"""Per-head summaries of attention maps you already hold, ready for :func:`lolcats_lab.viz.head_metric_grid`.

(:func:`lolcats_lab.analysis.head_statistics` computes entropy per head straight from a model.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import reduce

from ..metrics import attention_entropy, spikiness

__all__ = ["map_statistics"]


def map_statistics(maps, k: int = 4) -> dict[str, torch.Tensor]:
    """Mean-over-queries entropy and spikiness of every head of every layer.

    Args:
        maps: [L, H, T, T], [L, B, H, T, T], or a list of L per-layer maps [H, T, T] / [B, H, T, T]
            (e.g. softmax maps collected layer by layer). Rows must be attention distributions.
        k: top-k for the top-k mass.

    Returns:
        ``{"entropy", "max_weight", "topk_mass", "eff_len"}``, each [L, H] fp32: the metric per query row
        (``lolcats_lab.metrics``), averaged over queries (and batch).
    """
    if isinstance(maps, Sequence) and not isinstance(maps, torch.Tensor):
        if not maps:
            raise ValueError("maps is an empty list; pass one map [B, H, T, T] or [H, T, T] per layer")
        maps = torch.stack([torch.as_tensor(m) for m in maps])
    if not isinstance(maps, torch.Tensor):
        raise ValueError(f"maps must be a tensor [L, H, T, T] / [L, B, H, T, T] or a list of per-layer maps, got {type(maps).__name__}")
    if maps.dim() == 4:
        maps = maps[:, None]  # [L, 1, H, T, T]
    if maps.dim() != 5 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"maps must be [L, H, T, T] or [L, B, H, T, T], got {tuple(maps.shape)}")
    sp = spikiness(maps, k=k)  # each [L, B, H, T]
    per_row = {"entropy": attention_entropy(maps), "max_weight": sp.max_weight, "topk_mass": sp.topk_mass,
               "eff_len": sp.eff_len}
    return {name: reduce(v.float(), "l b h t -> l h", "mean") for name, v in per_row.items()}
