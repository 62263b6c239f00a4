"""Softmax attention, the teacher every linearized form is compared with.

y = softmax(q k^T / sqrt(d) + mask) v, scores computed in fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch

from ._checks import up, check_bhtd, check_key_mask, check_same_bh


def causal_mask(tq: int, tk: int, device=None) -> torch.Tensor:
    """[Tq, Tk] bool, True where query i may see key j. Queries are the LAST tq positions of the tk keys
    (tq == tk for a full pass; tq < tk when decoding with a cache)."""
    qpos = torch.arange(tk - tq, tk, device=device)[:, None]
    kpos = torch.arange(tk, device=device)[None, :]
    return kpos <= qpos


def softmax_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    return_map: bool = False,
):
    """Softmax attention.

    Args:
        q: [B, H, Tq, D]; k: [B, H, Tk, D]; v: [B, H, Tk, Dv]. Repeat grouped-query k/v heads first.
        causal: mask keys after each query (queries aligned to the end of the keys).
        key_mask: [B, Tk] bool, True = real token (padding is False).
        scale: score scale, default 1 / sqrt(D).
        return_map: also return the attention map A [B, H, Tq, Tk] (fp32).

    Returns:
        y [B, H, Tq, Dv] in q's dtype, or (y, A). A query row with no visible key gets y = 0, A = 0.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_bhtd(name, x)
    check_same_bh("q", q, k=k, v=v)
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same length, got {k.shape[2]} and {v.shape[2]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head dim, got {q.shape[-1]} and {k.shape[-1]}")
    B, _, Tq, D = q.shape
    Tk = k.shape[2]
    if causal and Tq > Tk:
        raise ValueError(f"causal attention needs Tq <= Tk (queries are the last Tq keys), got Tq={Tq}, Tk={Tk}")
    key_mask = check_key_mask(key_mask, B, Tk)
    scale = D**-0.5 if scale is None else scale

    s = torch.einsum("bhid,bhjd->bhij", up(q), up(k)) * scale  # [B, H, Tq, Tk]
    visible = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
    if causal:
        visible = causal_mask(Tq, Tk, q.device)
    visible = visible[None, None]  # [1, 1, Tq, Tk]
    if key_mask is not None:
        visible = visible & key_mask[:, None, None, :]
    s = s.masked_fill(~visible, float("-inf"))
    a = torch.softmax(s, dim=-1)
    a = torch.where(visible.any(-1, keepdim=True), a, torch.zeros_like(a))  # rows with no key: 0, not NaN
    y = torch.einsum("bhij,bhjd->bhid", a, up(v)).to(q.dtype)  # [B, H, Tq, Dv]
    return (y, a) if return_map else y
