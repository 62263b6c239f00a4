"""Array plumbing shared by the figures: input checks, causal masking, block-average downsampling.

Everything here turns tensors into float64 numpy arrays on the CPU; plotly gets numpy, never torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch


def to_numpy(x, name: str, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    """``x`` (tensor, array or nested list) as a float64 numpy array; checks the number of dims.

    Raises:
        ValueError: naming ``name`` when ``x`` is not numeric or has the wrong number of dims.
    """
    if isinstance(x, torch.Tensor):
        arr = x.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be a tensor or array of numbers, got {type(x).__name__}") from e
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name} must have {want} dims, got shape {tuple(arr.shape)}")
    return arr


def check_map_dict(maps: Mapping, name: str = "maps") -> dict[str, np.ndarray]:
    """A non-empty ``{label: [T, T]}`` mapping of square maps of one shape, as numpy."""
    if not isinstance(maps, Mapping) or len(maps) == 0:
        raise ValueError(f"{name} must be a non-empty dict {{label: attention map [T, T]}}, got {type(maps).__name__}")
    out: dict[str, np.ndarray] = {}
    for label, a in maps.items():
        arr = to_numpy(a, f"{name}[{label!r}]", ndim=2)
        if arr.shape[0] != arr.shape[1]:
            raise ValueError(
                f"{name}[{label!r}] must be a square map [T, T], got {tuple(arr.shape)}; select one batch "
                "element and head first, e.g. A[0, h]"
            )
        out[str(label)] = arr
    shapes = {k: v.shape for k, v in out.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"all {name} must have the same shape, got {shapes}")
    return out


def causal_nan(a: np.ndarray) -> np.ndarray:
    """``a`` [..., T, T] with the strict upper triangle (key after query) set to NaN, so it plots as masked."""
    T = a.shape[-1]
    out = a.astype(np.float64, copy=True)
    rows, cols = np.triu_indices(T, k=1)
    out[..., rows, cols] = np.nan
    return out


def block_factor(T: int, max_tokens: int) -> int:
    """The block size f that brings T tokens down to at most ``max_tokens`` (1 = no downsampling)."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    return max(1, math.ceil(T / max_tokens))


def block_average(a: np.ndarray, f: int) -> np.ndarray:
    """Average [..., T, T] over f x f blocks -> [..., ceil(T / f), ceil(T / f)], ignoring NaN entries.

    The last block may be partial. A block with no finite entry (e.g. wholly above the causal diagonal)
    stays NaN.
    """
    if f == 1:
        return a
    T = a.shape[-1]
    n = math.ceil(T / f)
    pad = n * f - T
    padded = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, pad), (0, pad)], constant_values=np.nan)
    blocks = padded.reshape(*a.shape[:-2], n, f, n, f)  # [..., n, f, n, f]
    finite = np.isfinite(blocks)
    total = np.where(finite, blocks, 0.0).sum(axis=(-3, -1))  # [..., n, n]
    count = finite.sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def block_labels(tokens: Sequence[str] | None, T: int, f: int) -> list[str]:
    """Axis labels for T positions in blocks of f: the tokens themselves, or position ranges "8-15"."""
    if tokens is not None and f == 1:
        return [str(t) for t in tokens]
    if f == 1:
        return [str(i) for i in range(T)]
    return [f"{s}-{min(s + f, T) - 1}" for s in range(0, T, f)]


def check_tokens(tokens, T: int) -> list[str] | None:
    """``tokens`` as a list of T strings (or None)."""
    if tokens is None:
        return None
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise ValueError(f"tokens must be a list of {T} strings (one per position), got {type(tokens).__name__}")
    if len(tokens) != T:
        raise ValueError(f"tokens has {len(tokens)} entries but the maps have T={T} positions; pass one label per position")
    return [str(t) for t in tokens]


def log10_floor(a: np.ndarray, floor: float) -> np.ndarray:
    """log10(max(a, floor)), NaN kept (for log-scale colour of weights that can be exactly 0)."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(a), np.nan, np.log10(np.maximum(a, floor)))
