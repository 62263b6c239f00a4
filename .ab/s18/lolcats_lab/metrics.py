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


def _check_dims(x: torch.Tensor, dims) -> tuple[int, ...]:
    """dims (an int or a sequence of ints) normalised to distinct non-negative dims of x."""
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise ValueError(f"dims must be ints, got {dims!r}")
    bad = [d for d in dims if not -x.dim() <= d < x.dim()]
    if bad:
        raise ValueError(f"dims {bad} are out of range for a tensor with {x.dim()} dims {tuple(x.shape)}")
    norm = tuple(d % x.dim() for d in dims)
    if len(set(norm)) != len(norm):
        raise ValueError(f"dims {dims!r} name the same dim twice for a tensor with {x.dim()} dims")
    return norm


def attention_entropy(A: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats, -sum p log p (torch.special.entr, so 0 log 0 = 0).
    A uniform row over t keys gives log(t); a one-hot row gives 0."""
    A = _check_map(A)
    return torch.special.entr(A).sum(_check_dims(A, dim))


def effective_seq_len(A: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """1 / sum p^2: t for a uniform row over t keys, 1 for a one-hot row (inverse participation ratio)."""
    A = _check_map(A)
    return 1.0 / A.pow(2).sum(_check_dims(A, dim)).clamp_min(1e-30)


class Spikiness(NamedTuple):
    max_weight: torch.Tensor  # largest weight per row
    topk_mass: torch.Tensor  # mass on the k largest weights per row
    eff_len: torch.Tensor  # 1 / sum p^2


def spikiness(A: torch.Tensor, k: int = 4) -> Spikiness:
    """How concentrated each attention row is (over the last dim)."""
    A = _check_map(A)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if A.shape[-1] == 0:
        raise ValueError(f"A has an empty key dim (shape {tuple(A.shape)}); spikiness needs at least one key")
    k = min(k, A.shape[-1])
    return Spikiness(A.amax(-1), A.topk(k, dim=-1).values.sum(-1), effective_seq_len(A))


def _check_pair(a, b) -> None:
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def mse(a: torch.Tensor, b: torch.Tensor, dims=None) -> torch.Tensor:
    """Mean squared error, averaged over ``dims`` (all dims if None)."""
    _check_pair(a, b)
    d = (a.float() - b.float()).pow(2)
    return d.mean() if dims is None else d.mean(dim=_check_dims(d, dims))


def per_head_mse(y_a: torch.Tensor, y_b: torch.Tensor) -> torch.Tensor:
    """MSE between attention outputs [B, H, T, D], per head: [H]."""
    if y_a.dim() != 4:
        raise ValueError(f"attention outputs must be [B, H, T, D], got {tuple(y_a.shape)}")
    return mse(y_a, y_b, dims=(0, 2, 3))


def relative_error(a: torch.Tensor, b: torch.Tensor, dims=None) -> torch.Tensor:
    """||a - b|| / ||b|| (b is the reference), over ``dims`` (all if None); 0/0 counts as 0."""
    _check_pair(a, b)
    a, b = a.float(), b.float()
    dims = None if dims is None else _check_dims(a, dims)
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
        if num_tokens is not None and (isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1):
            raise ValueError(f"num_tokens must be a positive int (the count behind a summed NLL), got {num_tokens!r}")
        total = float(nll)
        mean = total / num_tokens if num_tokens else total
    if not math.isfinite(mean):
        raise ValueError(f"perplexity of a non-finite NLL ({mean}); check the model outputs for NaN/inf")
    return math.exp(mean)
