"""Padding helpers for the linearized attention of Hugging Face models.

Hugging Face hands each attention module a 4D mask (``[B, 1, Tq, Tk]``, additive float for eager, bool
for sdpa, or None). Linearized attention needs which KEYS are real tokens (``key_mask [B, T]``), and the
window rules of SPEC.md count positions from the first token of each sequence. With left padding the
first real token is not at position 0, so :func:`compact_order` moves every row's real tokens to the front
(padding to the back, keeping order), the attention runs on that, and :func:`restore_seq` moves the
outputs back: a padded row then gets exactly the outputs of its unpadded sequence.
"""

from __future__ import annotations

import torch

__all__ = ["key_mask_from_attention_mask", "compact_order", "gather_seq", "restore_seq", "gather_map"]


def key_mask_from_attention_mask(attention_mask: torch.Tensor | None, q_len: int) -> torch.Tensor | None:
    """Which of the ``q_len`` newest keys are real tokens.

    attention_mask: None, a 2D ``[B, Tk]`` 0/1 mask, or a 4D ``[B, 1|H, Tq, Tk]`` mask (bool, True = may
    attend; or additive float, 0 = may attend, a large negative value = masked). The newest keys are the
    last ``q_len`` columns (queries are the newest tokens). A key is real iff some query may attend to it:
    in a causal mask every real key is seen at least by its own query, padding keys by none.

    Returns ``[B, q_len]`` bool (True = real token), or None when every key is real.
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2:
        allowed = attention_mask != 0  # [B, Tk]
    elif attention_mask.dim() == 4:
        if attention_mask.dtype == torch.bool:
            allowed4 = attention_mask
        else:
            allowed4 = attention_mask > torch.finfo(attention_mask.dtype).min / 2
        allowed = allowed4.any(dim=1).any(dim=1)  # [B, Tk]
    else:
        raise ValueError(
            f"attention_mask must be 2D [B, T] or 4D [B, 1, Tq, Tk], got shape {tuple(attention_mask.shape)}"
        )
    allowed = allowed[:, -q_len:]  # [B, q_len]
    return None if bool(allowed.all()) else allowed


def compact_order(key_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Per-row permutation putting real tokens first (in order), padding last.

    key_mask: [B, T] bool. Returns perm [B, T] long with ``x_compact[:, t] = x[:, perm[:, t]]``, or None when
    no row needs moving (no padding, or padding only at the end of each row).
    """
    if key_mask is None:
        return None
    T = key_mask.shape[1]
    idx = torch.arange(T, device=key_mask.device)
    if bool((key_mask[:, 1:] <= key_mask[:, :-1]).all()):  # already real-then-padding in every row
        return None
    sort_key = (~key_mask).long() * T + idx  # real tokens keep their order, before any padding
    return sort_key.argsort(dim=1)  # [B, T]


def gather_seq(x: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """x [B, H, T, *] reordered along T by perm [B, T] (identity when perm is None)."""
    if perm is None:
        return x
    idx = perm[:, None, :, None].expand(x.shape[0], x.shape[1], -1, x.shape[3])  # [B, H, T, *]
    return x.gather(2, idx)


def restore_seq(x: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """Undo :func:`gather_seq`: x [B, H, T, *] in compact order back to the original order."""
    if perm is None:
        return x
    return gather_seq(x, perm.argsort(dim=1))


def gather_map(a: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """An attention map a [B, H, T, T] computed in compact order, back in the original order (both axes)."""
    if perm is None:
        return a
    inv = perm.argsort(dim=1)  # [B, T]: original position -> compact position
    B, H, T, _ = a.shape
    rows = a.gather(2, inv[:, None, :, None].expand(B, H, T, T))
    return rows.gather(3, inv[:, None, None, :].expand(B, H, T, T))
