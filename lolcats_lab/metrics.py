"""Metrics for attention maps and outputs: entropy, spikiness, effective length, errors, perplexity.

Maps A are [..., Tq, Tk] with rows summing to 1 (or 0 for rows with no key); all reductions are over
the last dim unless stated. Results are fp32 tensors with the leading dims kept.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


def _check_map(A: torch.Tensor) -> torch.Tensor:
    if not isinstance(A, torch.Tensor) or not A.is_floating_point():
        raise ValueError(f"A must be a floating-point attention map tensor, got {type(A).__name__}")
    if A.dim() < 1:
        raise ValueError("A must have at least one dim (the key dim)")
    return A.float()


def attention_entropy(A: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats, -sum p log p (torch.special.entr, so 0 log 0 = 0).
    A uniform row over t keys gives log(t); a one-hot row gives 0."""
    return torch.special.entr(_check_map(A)).sum(dim)


def effective_seq_len(A: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """1 / sum p^2: t for a uniform row over t keys, 1 for a one-hot row (inverse participation ratio)."""
    return 1.0 / _check_map(A).pow(2).sum(dim).clamp_min(1e-30)


class Spikiness(NamedTuple):
    max_weight: torch.Tensor  # largest weight per row
    topk_mass: torch.Tensor  # mass on the k largest weights per row
    eff_len: torch.Tensor  # 1 / sum p^2


def spikiness(A: torch.Tensor, k: int = 4) -> Spikiness:
    """How concentrated each attention row is (over the last dim)."""
    A = _check_map(A)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    k = min(k, A.shape[-1])
    return Spikiness(A.amax(-1), A.topk(k, dim=-1).values.sum(-1), effective_seq_len(A))


def mse(a: torch.Tensor, b: torch.Tensor, dims=None) -> torch.Tensor:
    """Mean squared error, averaged over ``dims`` (all dims if None)."""
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    d = (a.float() - b.float()).pow(2)
    return d.mean() if dims is None else d.mean(dim=dims)


def per_head_mse(y_a: torch.Tensor, y_b: torch.Tensor) -> torch.Tensor:
    """MSE between attention outputs [B, H, T, D], per head: [H]."""
    if y_a.dim() != 4:
        raise ValueError(f"attention outputs must be [B, H, T, D], got {tuple(y_a.shape)}")
    return mse(y_a, y_b, dims=(0, 2, 3))


def relative_error(a: torch.Tensor, b: torch.Tensor, dims=None) -> torch.Tensor:
    """||a - b|| / ||b|| (b is the reference), over ``dims`` (all if None); 0/0 counts as 0."""
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.float(), b.float()
    if dims is None:
        num, den = (a - b).norm(), b.norm()
    else:
        num, den = (a - b).pow(2).sum(dims).sqrt(), b.pow(2).sum(dims).sqrt()
    return torch.where(num == 0, torch.zeros_like(num), num / den.clamp_min(1e-30))


def perplexity(nll: torch.Tensor | float, num_tokens: int | None = None) -> float:
    """exp(mean negative log-likelihood). ``nll``: per-token NLLs, or their sum with ``num_tokens``."""
    if isinstance(nll, torch.Tensor) and nll.numel() != 1:
        if num_tokens is not None:
            raise ValueError("pass per-token NLLs, or a summed NLL with num_tokens, not both")
        mean = nll.float().mean().item()
    else:
        total = float(nll)
        mean = total / num_tokens if num_tokens else total
    if not math.isfinite(mean):
        raise ValueError(f"perplexity of a non-finite NLL ({mean}); check the model outputs for NaN/inf")
    return math.exp(mean)
