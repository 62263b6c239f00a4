"""Input validation shared by the attention functions (public boundary checks, clear messages)."""

from __future__ import annotations

import torch

IMPLS = ("auto", "naive", "chunk", "recurrent", "triton")


def check_bhtd(name: str, x: torch.Tensor) -> None:
    """x must be a floating-point tensor of shape [B, H, T, D]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, H, T, D], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape [B, H, T, D] (4 dims), got {x.dim()} dims {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (fp32/fp16/bf16), got dtype {x.dtype}")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has an empty last dim (shape {tuple(x.shape)}): head/feature dims must be >= 1")


def check_same_bh(ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    """Batch and head sizes of every tensor in ``others`` equal those of ``ref``."""
    for name, x in others.items():
        if x.shape[:2] != ref.shape[:2]:
            raise ValueError(
                f"{name} has batch/heads {tuple(x.shape[:2])} but {ref_name} has {tuple(ref.shape[:2])}; "
                "repeat grouped-query k/v heads to the query head count before calling"
            )


def check_same_len(names: tuple[str, ...], *xs: torch.Tensor) -> None:
    lens = [x.shape[2] for x in xs]
    if len(set(lens)) != 1:
        desc = ", ".join(f"{n}: {t}" for n, t in zip(names, lens))
        raise ValueError(f"sequence lengths (dim 2) must match, got {desc}")


def check_key_mask(key_mask: torch.Tensor | None, batch: int, keys: int) -> torch.Tensor | None:
    """key_mask: [B, Tk] bool, True = a real token. Integer 0/1 masks (HF style) are accepted."""
    if key_mask is None:
        return None
    if not isinstance(key_mask, torch.Tensor):
        raise TypeError(f"key_mask must be a [B, Tk] tensor, got {type(key_mask).__name__}")
    if key_mask.shape != (batch, keys):
        raise ValueError(f"key_mask must have shape [B, Tk] = {(batch, keys)}, got {tuple(key_mask.shape)}")
    if key_mask.dtype != torch.bool:
        if key_mask.is_floating_point():
            raise ValueError("key_mask must be bool or 0/1 integers (True/1 = real token), not an additive float mask")
        key_mask = key_mask != 0
    return key_mask


def check_impl(impl: str, allowed: tuple[str, ...]) -> None:
    if impl not in allowed:
        raise ValueError(f"impl must be one of {allowed}, got {impl!r}")


def check_window(window: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int):
        raise ValueError(f"window must be an int >= 0, got {window!r}")
    if window < 0:
        raise ValueError(f"window must be >= 0 (0 = pure linear attention), got {window}")


def check_kind(kind: str) -> None:
    if kind not in ("tk", "sw"):
        raise ValueError(f"kind must be 'tk' (terraced blocks) or 'sw' (plain sliding window), got {kind!r}")


def up(x: torch.Tensor) -> torch.Tensor:
    """x in the accumulation dtype: fp32 for fp16/bf16/fp32 inputs, fp64 stays fp64 (for exact identity tests)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
