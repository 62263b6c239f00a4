"""Model surgery: swap every self-attention module for a :class:`LinearizedAttention`, switch modes.

``linearize`` walks ``named_modules()``, matches the architecture's attention modules (registry), and
replaces each with a wrapper that keeps the original as ``base_attn`` (peft style: no class is patched).
Base weights are frozen; only the feature maps (and the window logits where they are used) train.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..feature_maps import FEATURE_MAPS
from .linearized_attention import ATTENTION_KINDS, MODES, LinearizedAttention
from .registry import find_attention_modules, get_arch_spec

IMPLS = ("auto", "naive", "chunk", "triton")

__all__ = [
    "linearize",
    "set_attention_mode",
    "attention_modules",
    "collect_transfer_mse",
    "captured_maps",
    "trainable_parameters",
]


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def linearize(
    model: nn.Module,
    attention: str = "hybrid-tk",
    feature_map: str = "hedgehog",
    window: int = 64,
    feature_dim: int | None = 64,
    sink_tokens: int = 0,
    *,
    feature_map_kwargs: dict | None = None,
    impl: str = "auto",
    mode: str = "linear",
) -> nn.Module:
    """Replace the self-attention of a registered architecture (llama, mistral, qwen2, bert) in place.

    Args:
        model: a Hugging Face model (e.g. from :func:`~lolcats_lab.models.load_model`).
        attention: "linear" (pure linear), "hybrid-tk" (terraced window + linear), "hybrid-sw"
            (sliding window + linear); SPEC.md has the definitions.
        feature_map: a name in ``FEATURE_MAPS`` ("hedgehog", "elu", "relu", "performer", "taylor", ...).
        window: w, window size in tokens for the hybrid forms (ignored by "linear").
        feature_dim: per-map feature size, passed to maps that take one (Hedgehog: f per softmax half,
            F = 2f outputs); ignored by maps without it (elu, relu, taylor, identity).
        sink_tokens: the first n tokens always get exact softmax terms (SPEC.md; 0 = off, the paper's setting).
        feature_map_kwargs: further keyword arguments for the feature maps (e.g. ``init="random"``).
        impl: linearized-attention implementation: "auto", "naive", "chunk" or "triton".
        mode: the mode the model is left in ("linear" by default).

    Returns:
        The same model object, modified in place, with ``model.lolcats_config`` describing the conversion.
    """
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {sorted(FEATURE_MAPS)}, got {feature_map!r}")
    if attention != "linear":
        _check_int("window", window, 1)
    _check_int("sink_tokens", sink_tokens, 0)
    if feature_dim is not None:
        _check_int("feature_dim", feature_dim, 1)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if attention_modules(model):
        raise ValueError("model is already linearized; load a fresh base model to linearize it again")
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"model must be a Hugging Face PreTrainedModel with a .config, got {type(model).__name__}")
    spec = get_arch_spec(config)

    map_kwargs = dict(feature_map_kwargs or {})
    accepts = inspect.signature(FEATURE_MAPS[feature_map].__init__).parameters
    if feature_dim is not None and "feature_dim" in accepts:
        map_kwargs.setdefault("feature_dim", feature_dim)

    for p in model.parameters():
        p.requires_grad_(False)
    targets = find_attention_modules(model, spec)
    for i, (name, base) in enumerate(targets):
        layer_idx = getattr(base, "layer_idx", None)
        wrapper = LinearizedAttention(
            base, spec, config, layer_idx=i if layer_idx is None else layer_idx, attention=attention,
            feature_map=feature_map, window=window, sink_tokens=sink_tokens,
            feature_map_kwargs=map_kwargs, impl=impl,
        )
        device = next(base.parameters()).device
        wrapper.q_map.to(device)
        wrapper.k_map.to(device)
        wrapper.window_logit.data = wrapper.window_logit.data.to(device)
        wrapper.window_logit.requires_grad_(wrapper.uses_window)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapper)

    first = attention_modules(model)[0]
    model.lolcats_config = {
        "model_type": config.model_type,
        "num_layers": len(targets),
        "num_heads": first.num_heads,
        "num_kv_heads": first.num_kv_heads,
        "head_dim": first.head_dim,
        "attention": attention,
        "feature_map": feature_map,
        "feature_map_kwargs": map_kwargs,
        "feature_dim": first.q_map.feature_dim,
        "window": window,
        "sink_tokens": sink_tokens,
        "modules": [n for n, _ in targets],
    }
    set_attention_mode(model, mode)
    return model


def attention_modules(model: nn.Module) -> list[LinearizedAttention]:
    """The :class:`LinearizedAttention` wrappers of a model, in layer order (empty if not linearized)."""
    return [m for m in model.modules() if isinstance(m, LinearizedAttention)]


def _wrappers(model: nn.Module) -> list[LinearizedAttention]:
    mods = attention_modules(model)
    if not mods:
        raise ValueError("model is not linearized; call lolcats_lab.linearize(model, ...) first")
    return mods


def set_attention_mode(model: nn.Module, mode: str, *, capture: tuple[int, int] | None = None) -> nn.Module:
    """Switch every linearized attention module to ``mode``.

    Args:
        mode: "softmax" (the original model, exactly), "linear" (the linearized attention chosen at
            linearize time), or "transfer" (softmax flows on; per-layer, per-head MSE of the linearized
            output is stored, see :func:`collect_transfer_mse`).
        capture: (layer, head) in transfer mode: that one layer also stores that head's softmax and
            linearized maps [B, T, T] (:func:`captured_maps`); no other layer materialises maps.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    mods = _wrappers(model)
    if capture is not None:
        if mode != "transfer":
            raise ValueError("capture=(layer, head) needs mode='transfer' (it compares both attentions)")
        layer, head = capture
        if not 0 <= layer < len(mods):
            raise ValueError(f"capture layer must be in [0, {len(mods)}), got {layer}")
        if not 0 <= head < mods[layer].num_heads:
            raise ValueError(f"capture head must be in [0, {mods[layer].num_heads}), got {head}")
    for i, m in enumerate(mods):
        m.mode = mode
        m.transfer_mse = None
        m.captured_maps = None
        m.capture_head = capture[1] if capture is not None and i == capture[0] else None
    return model


def collect_transfer_mse(model: nn.Module) -> torch.Tensor:
    """Per-layer, per-head MSE [L, H] from the last forward pass in transfer mode (differentiable with
    respect to the feature maps and window logits when that pass ran with gradients)."""
    mods = _wrappers(model)
    missing = [i for i, m in enumerate(mods) if m.transfer_mse is None]
    if missing:
        raise ValueError(
            f"no transfer MSE for layers {missing}; run a forward pass after set_attention_mode(model, 'transfer')"
        )
    return torch.stack([m.transfer_mse for m in mods])


def captured_maps(model: nn.Module) -> dict:
    """The maps captured in transfer mode: {"layer", "head", "softmax" [B, T, T], "linear" [B, T, T]}."""
    for i, m in enumerate(_wrappers(model)):
        if m.captured_maps is not None:
            return {"layer": i, **m.captured_maps}
    raise ValueError("no maps captured; use set_attention_mode(model, 'transfer', capture=(layer, head)) and run a forward pass")


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> parameter for every parameter with ``requires_grad`` (after linearize: maps and window logits)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
