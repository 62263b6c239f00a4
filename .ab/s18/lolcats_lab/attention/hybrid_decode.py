"""Hybrid attention one token at a time: :class:`HybridCache` and :func:`hybrid_decode_step` (PyTorch).

The reference decoding path (SPEC.md "Decoding must equal training"): a constant-size cache holding the
linear state S, z of the keys that left the window, the raw keys/values of the window and of the sink
tokens; each step appends the new token, folds into S, z the keys that leave the window (exactly when they
turn linear in :func:`~lolcats_lab.attention.hybrid.naive_hybrid_attn`), then attends. The Triton kernel
``lolcats_lab.kernels.decode`` is the fast path on GPUs and is tested against this one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ._checks import check_bhtd, check_kind, check_window, up
from .hybrid import HYBRID_EPS, _check_hybrid_inputs, window_masks

__all__ = ["HybridCache", "hybrid_decode_step", "prefill_hybrid_cache"]


@dataclass
class HybridCache:
    """Constant-size decoding state of hybrid attention for one layer (SPEC.md "Decoding").

    S [B, H, F, Dv], z [B, H, F]: linear state over the keys that left the window (sinks excluded).
    k_win [B, H, n, D], v_win [B, H, n, Dv], fk_win [B, H, n, F]: raw keys/values (and key features,
    needed when a key is folded into S) of the current window; pos_win [n]: their positions.
    k_sink, v_sink [B, H, s, *]: the attention-sink tokens (s <= sink_tokens). seen: tokens so far.
    """

    S: torch.Tensor
    z: torch.Tensor
    k_win: torch.Tensor
    v_win: torch.Tensor
    fk_win: torch.Tensor
    pos_win: torch.Tensor
    k_sink: torch.Tensor
    v_sink: torch.Tensor
    seen: int = 0

    @classmethod
    def empty(cls, batch, heads, head_dim, value_dim, feature_dim, device=None, dtype=torch.float32) -> "HybridCache":
        e = lambda d: torch.zeros(batch, heads, 0, d, device=device, dtype=dtype)  # noqa: E731
        return cls(
            S=torch.zeros(batch, heads, feature_dim, value_dim, device=device, dtype=dtype),
            z=torch.zeros(batch, heads, feature_dim, device=device, dtype=dtype),
            k_win=e(head_dim), v_win=e(value_dim), fk_win=e(feature_dim),
            pos_win=torch.zeros(0, dtype=torch.long, device=device),
            k_sink=e(head_dim), v_sink=e(value_dim),
        )

    def num_cached_tokens(self) -> int:
        return self.k_win.shape[2] + self.k_sink.shape[2]

    def _evict(self, query_pos: int, window: int, kind: str) -> "HybridCache":
        """Fold window keys that are not in W_{query_pos} into the linear state."""
        qp = torch.tensor([query_pos], device=self.pos_win.device)
        in_win, _ = window_masks(qp, self.pos_win, window=window, kind=kind, causal=True)
        keep = in_win[0]  # [n]
        if bool(keep.all()):
            return self
        out_fk, out_v = self.fk_win[:, :, ~keep], self.v_win[:, :, ~keep]
        return replace(
            self,
            S=self.S + torch.einsum("bhjf,bhjd->bhfd", out_fk, out_v),
            z=self.z + out_fk.sum(2),
            k_win=self.k_win[:, :, keep], v_win=self.v_win[:, :, keep], fk_win=self.fk_win[:, :, keep],
            pos_win=self.pos_win[keep],
        )

    def append(self, k, v, fk, *, window: int, kind: str, sink_tokens: int) -> "HybridCache":
        """Add tokens (k [B, H, t, D], v, fk) at positions seen .. seen+t-1, then evict for the last one."""
        cache = self
        t = k.shape[2]
        n_sink = max(0, min(t, sink_tokens - self.seen))  # the first tokens may be sinks
        if n_sink:
            cache = replace(
                cache,
                k_sink=torch.cat([cache.k_sink, up(k[:, :, :n_sink])], 2),
                v_sink=torch.cat([cache.v_sink, up(v[:, :, :n_sink])], 2),
            )
        if t > n_sink:
            new_pos = torch.arange(self.seen + n_sink, self.seen + t, device=cache.pos_win.device)
            cache = replace(
                cache,
                k_win=torch.cat([cache.k_win, up(k[:, :, n_sink:])], 2),
                v_win=torch.cat([cache.v_win, up(v[:, :, n_sink:])], 2),
                fk_win=torch.cat([cache.fk_win, up(fk[:, :, n_sink:])], 2),
                pos_win=torch.cat([cache.pos_win, new_pos]),
            )
        cache = replace(cache, seen=self.seen + t)
        return cache._evict(cache.seen - 1, window, kind)


def hybrid_decode_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    fq: torch.Tensor,
    fk: torch.Tensor,
    window_logit: torch.Tensor,
    cache: HybridCache | None,
    *,
    window: int,
    kind: str = "tk",
    sink_tokens: int = 0,
    scale: float | None = None,
    eps: float = HYBRID_EPS,
) -> tuple[torch.Tensor, HybridCache]:
    """One causal decoding step: the new token (q, k, v [B, H, 1, *], fq, fk [B, H, 1, F]) attends to the
    cache plus itself. Returns (y [B, H, 1, Dv] in v's dtype, the updated cache). ``cache=None`` starts empty."""
    _check_hybrid_inputs(q, k, v, fq, fk, window_logit, window, kind, None, sink_tokens)
    if q.shape[2] != 1:
        raise ValueError(f"hybrid_decode_step takes one token (dim 2 == 1), got {q.shape[2]}; use prefill_hybrid_cache for a prompt")
    B, H, _, D = q.shape
    if cache is None:
        cache = HybridCache.empty(B, H, D, v.shape[-1], fq.shape[-1], device=q.device, dtype=up(q).dtype)
    elif cache.S.shape != (B, H, fq.shape[-1], v.shape[-1]) or cache.k_win.shape[-1] != D:
        raise ValueError(
            f"cache holds S {tuple(cache.S.shape)} and keys of dim {cache.k_win.shape[-1]}; these inputs need "
            f"S {(B, H, fq.shape[-1], v.shape[-1])} and dim {D}: use the cache of this layer and batch"
        )
    cache = cache.append(k, v, fk, window=window, kind=kind, sink_tokens=sink_tokens)
    scale = D**-0.5 if scale is None else scale

    k_w = torch.cat([cache.k_sink, cache.k_win], 2)  # [B, H, n, D]
    v_w = torch.cat([cache.v_sink, cache.v_win], 2)
    q32, fq32 = up(q), up(fq)
    s = torch.einsum("bhid,bhjd->bhij", q32, k_w) * scale  # [B, H, 1, n]
    m = s.amax(-1, keepdim=True) if s.shape[-1] else torch.zeros_like(s[..., :1])
    gamma = torch.sigmoid(window_logit.to(s.dtype))[None, :, None, None]
    a_win = gamma * torch.exp(s - m)
    num = torch.einsum("bhij,bhjd->bhid", a_win, v_w) + torch.einsum("bhif,bhfd->bhid", fq32, cache.S)
    den = a_win.sum(-1) + torch.einsum("bhif,bhf->bhi", fq32, cache.z) + eps  # [B, H, 1]
    return (num / den[..., None]).to(v.dtype), cache


def prefill_hybrid_cache(
    k: torch.Tensor, v: torch.Tensor, fk: torch.Tensor, *, window: int, kind: str = "tk", sink_tokens: int = 0,
    cache: HybridCache | None = None,
) -> HybridCache:
    """The cache after a prompt (k, v [B, H, T, *], fk [B, H, T, F]): ready for the token at position T."""
    for name, x in (("k", k), ("v", v), ("fk", fk)):
        check_bhtd(name, x)
    check_window(window)
    check_kind(kind)
    B, H, _, D = k.shape
    if cache is None:
        cache = HybridCache.empty(B, H, D, v.shape[-1], fk.shape[-1], device=k.device, dtype=up(k).dtype)
    return cache.append(k, v, fk, window=window, kind=kind, sink_tokens=sink_tokens)
