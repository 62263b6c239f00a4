"""Attention maps of one head of a linearized Hugging Face model, for a text: the data behind the explorer.

A thin layer over :mod:`lolcats_lab.models`: one forward pass in transfer mode with
``capture=(layer, head)`` gives that head's softmax and linearized maps and the per-head output MSE of every
layer; the model's mode and train/eval state are restored afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..feature_maps import FEATURE_MAPS, make_feature_map
from ..models import attention_modules, captured_maps, collect_transfer_mse, set_attention_mode

__all__ = ["ModelMaps", "model_attention_maps", "model_head_entropy", "model_limits", "tokenize_text", "MODEL_FEATURE_MAP"]

MODEL_FEATURE_MAP = "model"  # use the model's own (trained) feature maps


@dataclass(frozen=True)
class ModelMaps:
    """One head's maps for one text.

    Attributes:
        tokens: T token strings; softmax, linear: [T, T] maps of batch element 0 (numpy float64);
        transfer_mse: [L, H] per-head output MSE of every layer for this text (numpy);
        layer, head: what was captured; feature_map: the map used in ``layer`` ("model" = the trained one);
        causal: whether the model's attention is causal.
    """

    tokens: list[str]
    softmax: np.ndarray
    linear: np.ndarray
    transfer_mse: np.ndarray
    layer: int
    head: int
    feature_map: str
    causal: bool


def model_limits(model: nn.Module) -> tuple[int, int, int | None]:
    """(num_layers, num_heads, max_positions or None) of a linearized model."""
    mods = attention_modules(model)
    if not mods:
        raise ValueError("model is not linearized; call lolcats_lab.models.linearize(model, ...) first")
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return len(mods), mods[0].num_heads, max_pos


def tokenize_text(tokenizer, text: str, max_positions: int | None) -> tuple[torch.Tensor, list[str]]:
    """input_ids [1, T] and the T token strings; ValueError for empty text or text over ``max_positions``."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("text is empty; type a sentence to look at its attention")
    ids = tokenizer(text, return_tensors="pt")["input_ids"]  # [1, T]
    T = ids.shape[1]
    if T == 0:
        raise ValueError(f"text {text[:40]!r} gives no tokens with this tokenizer; type some words")
    if max_positions is not None and T > max_positions:
        raise ValueError(
            f"text is {T} tokens long but the model takes at most max_position_embeddings={max_positions}; "
            "shorten the text"
        )
    return ids, [str(t) for t in tokenizer.convert_ids_to_tokens(ids[0].tolist())]


@contextmanager
def _swapped_feature_maps(module, name: str):
    """Temporarily give ``module`` fixed feature map ``name`` for q and k (restored on exit)."""
    if name == MODEL_FEATURE_MAP:
        yield
        return
    old = module.q_map, module.k_map
    device = next(module.base_attn.parameters()).device
    fmap = make_feature_map(name, module.num_heads, module.head_dim).to(device)
    module.q_map, module.k_map = fmap, fmap
    try:
        yield
    finally:
        module.q_map, module.k_map = old


def model_attention_maps(model: nn.Module, tokenizer, text: str, layer: int, head: int,
                         feature_map: str = MODEL_FEATURE_MAP) -> ModelMaps:
    """Softmax and linearized maps of (layer, head) for ``text``, plus every layer's per-head MSE.

    Args:
        model: a model converted with :func:`lolcats_lab.models.linearize` (any mode; restored afterwards).
        tokenizer: its Hugging Face tokenizer.
        layer, head: which head to capture.
        feature_map: ``"model"`` for the model's own maps, or a fixed map name from ``FEATURE_MAPS``
            (e.g. "elu"), swapped into ``layer`` for this pass only, to compare against the trained map.

    Raises:
        ValueError: not linearized, layer/head out of range, unknown feature map, empty or too-long text.
    """
    L, H, max_pos = model_limits(model)
    for name, value, n in (("layer", layer, L), ("head", head, H)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < n:
            raise ValueError(f"{name} must be an int in [0, {n}) for this model ({L} layers, {H} heads), got {value!r}")
    layer, head = int(layer), int(head)
    if feature_map != MODEL_FEATURE_MAP and feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be {MODEL_FEATURE_MAP!r} or one of {sorted(FEATURE_MAPS)}, got {feature_map!r}")
    ids, tokens = tokenize_text(tokenizer, text, max_pos)

    mods = attention_modules(model)
    prev_mode, was_training = mods[0].mode, model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        set_attention_mode(model, "transfer", capture=(layer, head))
        with _swapped_feature_maps(mods[layer], feature_map), torch.no_grad():
            model(input_ids=ids.to(device), use_cache=False)
        maps = captured_maps(model)
        mse = collect_transfer_mse(model)  # [L, H]
    finally:
        set_attention_mode(model, prev_mode)
        model.train(was_training)
    return ModelMaps(
        tokens=tokens,
        softmax=maps["softmax"][0].double().cpu().numpy(),  # [T, T]
        linear=maps["linear"][0].double().cpu().numpy(),  # [T, T]
        transfer_mse=mse.detach().double().cpu().numpy(),
        layer=layer, head=head, feature_map=feature_map, causal=bool(mods[0].causal),
    )


def model_head_entropy(model: nn.Module, tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean row entropy (nats) of every head, teacher and linearized (the model's own feature maps), for
    ``text``: two [L, H] arrays, from :func:`lolcats_lab.analysis.head_statistics` (eval mode, restored)."""
    from ..analysis import head_statistics

    _, _, max_pos = model_limits(model)
    ids, _ = tokenize_text(tokenizer, text, max_pos)
    was_training = model.training
    try:
        model.eval()
        stats = head_statistics(model, ids.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
    return stats["entropy_softmax"].double().cpu().numpy(), stats["entropy_linear"].double().cpu().numpy()
