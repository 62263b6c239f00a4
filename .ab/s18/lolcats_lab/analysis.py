"""Look inside a linearized model: per-layer attention maps and per-head statistics from ONE forward pass.

:func:`record_qkv` runs the model once in softmax mode and keeps each layer's q, k, v (after RoPE; small
tensors, [B, H, T, D]). :func:`layer_maps` then builds one layer's softmax and linearized maps at a time,
so the L x H x T x T maps of all layers are never held at once.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .attention import softmax_attn
from .metrics import attention_entropy, effective_seq_len


@contextmanager
def _recording(modules):
    records = [None] * len(modules)
    originals = []
    for i, m in enumerate(modules):
        original = m._qkv

        def wrapped(*args, _orig=original, _i=i, **kwargs):
            q, k, v = _orig(*args, **kwargs)
            records[_i] = tuple(t.detach() for t in (q, k, v))
            return q, k, v

        originals.append(original)
        m._qkv = wrapped  # instance attribute shadows the method for this forward only
    try:
        yield records
    finally:
        for m in modules:
            del m._qkv


@torch.no_grad()
def record_qkv(model: nn.Module, input_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer (q [B, H, T, D], k [B, Hkv, T, D], v [B, Hkv, T, D]) after RoPE, from one forward pass in
    transfer mode (so each layer sees the teacher's inputs). Restores the model's attention mode."""
    from .models.convert import attention_modules, set_attention_mode
    from .train.transfer import backbone

    mods = attention_modules(model)
    if not mods:
        raise ValueError("model is not linearized; call lolcats_lab.linearize(model, ...) first")
    previous = mods[0].mode
    set_attention_mode(model, "transfer")
    try:
        with _recording(mods) as records:
            backbone(model)(input_ids=input_ids, use_cache=False)
    finally:
        set_attention_mode(model, previous)
    return records


@torch.no_grad()
def layer_maps(module, q, k, v) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax and linearized maps of one wrapped layer, each [B, H, T, T] (fp32)."""
    k_r, v_r, fq, fk = module._features(q, k, v)
    _, a_soft = softmax_attn(q, k_r, v_r, causal=module.causal, scale=module.scaling, return_map=True)
    _, a_lin = module.linearized(q, k_r, v_r, fq, fk, return_map=True)
    return a_soft, a_lin


@torch.no_grad()
def head_statistics(model: nn.Module, input_ids: torch.Tensor, keep_maps: tuple[int, ...] = ()) -> dict:
    """Mean entropy and effective length per (layer, head) of teacher and linearized maps on ``input_ids``.

    Returns {"entropy_softmax" [L, H], "entropy_linear" [L, H], "eff_len_softmax" [L, H], "eff_len_linear"
    [L, H], "maps": {layer: (softmax [H, T, T], linear [H, T, T]) for layer in keep_maps}} (batch row 0 maps).
    """
    from .models.convert import attention_modules

    mods = attention_modules(model)
    records = record_qkv(model, input_ids)
    out = {key: torch.zeros(len(mods), mods[0].num_heads) for key in
           ("entropy_softmax", "entropy_linear", "eff_len_softmax", "eff_len_linear")}
    out["maps"] = {}
    for layer, (m, (q, k, v)) in enumerate(zip(mods, records)):
        a_soft, a_lin = layer_maps(m, q, k, v)
        out["entropy_softmax"][layer] = attention_entropy(a_soft).mean((0, 2))
        out["entropy_linear"][layer] = attention_entropy(a_lin).mean((0, 2))
        out["eff_len_softmax"][layer] = effective_seq_len(a_soft).mean((0, 2))
        out["eff_len_linear"][layer] = effective_seq_len(a_lin).mean((0, 2))
        if layer in keep_maps:
            out["maps"][layer] = (a_soft[0].cpu(), a_lin[0].cpu())
    return out
