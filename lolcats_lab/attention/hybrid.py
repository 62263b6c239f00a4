"""LoLCATs hybrid attention: exact softmax terms inside a sliding window, linear terms outside.

Exactly SPEC.md. Per batch element and head, with s_ij = q_i . k_j * scale (fp32) and gamma = sigmoid(g_h):

    W_i  window keys;  L_i  linear keys (every causal key is in exactly one of them)
    M_i  = max_{j in W_i} s_ij                      (row maximum over WINDOW keys only)
    a_ij = gamma * exp(s_ij - M_i)   for j in W_i
    a_ij = fq_i . fk_j               for j in L_i  (NOT rescaled by exp(-M_i))
    y_i  = sum_j a_ij v_j / (sum_j a_ij + eps),    A_ij = a_ij / (sum_j a_ij + eps)

Window shapes (blocks of w tokens counted from position 0, blk(p) = p // w):
    sw  W_i = { j : i - w < j <= i }
    tk  W_i = { j <= i : blk(j) >= blk(i) - 1 }  (own block + the previous one)
    bidirectional (causal=False, either kind): W_i = { j : |i - j| < w }
    sinks (sink_tokens = n): keys 0..n-1 join W_i for every query and leave L_i.
    window = 0: W_i holds only the sinks, so with n = 0 the result is pure linear attention.

Where the original LoLCATs code differs: it aligns tk blocks to the END of the sequence and, when the
whole sequence fits in one window, counts every key twice in both the window and linear sums. Both agree
with the rule above when T is a multiple of w (the paper trains on 1024-token sequences). Here a query's
output never depends on tokens after it nor on the total length.

eps = 1e-12 (as in linear attention): for w >= 1 the denominator is >= gamma > 0 and eps is below fp32
resolution; it only makes window = 0 agree with :func:`~lolcats_lab.attention.linear.naive_linear_attn`.

Forms:
* :func:`naive_hybrid_attn`: [T, T] masks, the reference (and the map for plots).
* :func:`chunk_hybrid_attn`: O(T * w) memory. Chunks of C tokens (C a multiple of w, at least 64);
  for a query chunk every window key lies in the same or the previous chunk, and every key of earlier
  chunks is linear, so those are summed in a running state S, z exactly like chunked linear attention.
* :func:`hybrid_decode_step` with :class:`HybridCache`: one token at a time, constant memory; equals the
  full pass (the cache folds a key into S, z exactly when it leaves the window).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ._checks import (
    up,
    check_bhtd,
    check_impl,
    check_key_mask,
    check_kind,
    check_same_bh,
    check_same_len,
    check_window,
)
from .linear import LINEAR_EPS

HYBRID_EPS = LINEAR_EPS


def window_masks(
    qpos: torch.Tensor,
    kpos: torch.Tensor,
    *,
    window: int,
    kind: str = "tk",
    causal: bool = True,
    sink_tokens: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which keys are window keys and which linear keys, from absolute positions.

    qpos: [Tq] int, kpos: [Tk] int. Returns (in_window, in_linear), each [Tq, Tk] bool, disjoint.
    """
    i, j = qpos[:, None], kpos[None, :]  # [Tq, 1], [1, Tk]
    visible = j <= i if causal else torch.ones_like(i == j)
    if window == 0:
        in_window = torch.zeros_like(visible)
    elif not causal:
        in_window = (i - j).abs() < window
    elif kind == "sw":
        in_window = visible & (i - j < window)
    else:  # tk
        in_window = visible & (torch.div(j, window, rounding_mode="floor") >= torch.div(i, window, rounding_mode="floor") - 1)
    is_sink = (j < sink_tokens) & visible
    in_window = in_window | is_sink
    in_linear = visible & ~in_window
    return in_window, in_linear


def _check_hybrid_inputs(q, k, v, fq, fk, window_logit, window, kind, key_mask, sink_tokens):
    for name, x in (("q", q), ("k", k), ("v", v), ("fq", fq), ("fk", fk)):
        check_bhtd(name, x)
    check_same_bh("q", q, k=k, v=v, fq=fq, fk=fk)
    check_same_len(("q", "k", "v", "fq", "fk"), q, k, v, fq, fk)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head dim, got {q.shape[-1]} and {k.shape[-1]}")
    if fq.shape[-1] != fk.shape[-1]:
        raise ValueError(f"fq and fk must have the same feature dim F, got {fq.shape[-1]} and {fk.shape[-1]}")
    check_window(window)
    check_kind(kind)
    if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 0:
        raise ValueError(f"sink_tokens must be an int >= 0, got {sink_tokens!r}")
    H = q.shape[1]
    if not isinstance(window_logit, torch.Tensor) or window_logit.shape != (H,):
        shape = tuple(window_logit.shape) if isinstance(window_logit, torch.Tensor) else type(window_logit).__name__
        raise ValueError(f"window_logit must be a tensor of shape [H] = ({H},) (one logit per head), got {shape}")
    return check_key_mask(key_mask, q.shape[0], k.shape[2])


def naive_hybrid_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    fq: torch.Tensor,
    fk: torch.Tensor,
    window_logit: torch.Tensor,
    *,
    window: int,
    kind: str = "tk",
    causal: bool = True,
    sink_tokens: int = 0,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    eps: float = HYBRID_EPS,
    return_map: bool = False,
):
    """Hybrid attention, quadratic reference.

    Args:
        q, k: [B, H, T, D] after RoPE (and GQA repetition); v: [B, H, T, Dv];
        fq, fk: feature-mapped q and k, [B, H, T, F]; window_logit: [H], gamma = sigmoid(window_logit).
        window: w >= 0; kind: "tk" or "sw"; sink_tokens: n >= 0; key_mask: [B, T] bool (True = real).
    Returns:
        y [B, H, T, Dv] in v's dtype, or (y, A [B, H, T, T] fp32) with return_map.
    """
    key_mask = _check_hybrid_inputs(q, k, v, fq, fk, window_logit, window, kind, key_mask, sink_tokens)
    T, D = q.shape[2], q.shape[3]
    scale = D**-0.5 if scale is None else scale
    pos = torch.arange(T, device=q.device)
    in_win, in_lin = window_masks(pos, pos, window=window, kind=kind, causal=causal, sink_tokens=sink_tokens)
    in_win, in_lin = in_win[None, None], in_lin[None, None]  # [1, 1, T, T]
    if key_mask is not None:
        in_win = in_win & key_mask[:, None, None, :]
        in_lin = in_lin & key_mask[:, None, None, :]

    s = torch.einsum("bhid,bhjd->bhij", up(q), up(k)) * scale  # [B, H, T, T]
    s_win = s.masked_fill(~in_win, float("-inf"))
    m = s_win.amax(-1, keepdim=True)  # [B, H, T, 1]
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows without window keys
    gamma = torch.sigmoid(window_logit.to(s.dtype))[None, :, None, None]  # [1, H, 1, 1]
    a_win = gamma * torch.exp(s_win - m)  # exp(-inf) = 0 outside the window
    a_lin = torch.einsum("bhif,bhjf->bhij", up(fq), up(fk)) * in_lin
    a = a_win + a_lin  # [B, H, T, T]
    den = a.sum(-1, keepdim=True) + eps
    y = torch.einsum("bhij,bhjd->bhid", a, up(v)) / den  # [B, H, T, Dv]
    return (y.to(v.dtype), a / den) if return_map else y.to(v.dtype)


def hybrid_chunk_size(window: int, min_chunk: int = 64) -> int:
    """Chunk length for the chunked form: a multiple of the window, at least ``min_chunk``."""
    if window == 0:
        return min_chunk
    return window * max(1, -(-min_chunk // window))


def chunk_hybrid_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    fq: torch.Tensor,
    fk: torch.Tensor,
    window_logit: torch.Tensor,
    *,
    window: int,
    kind: str = "tk",
    causal: bool = True,
    sink_tokens: int = 0,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    eps: float = HYBRID_EPS,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Hybrid attention in O(T * C) memory; same arguments and result as :func:`naive_hybrid_attn`.

    chunk_size: C, a positive multiple of ``window`` (default: the smallest multiple >= 64).
    """
    key_mask = _check_hybrid_inputs(q, k, v, fq, fk, window_logit, window, kind, key_mask, sink_tokens)
    C = hybrid_chunk_size(window) if chunk_size is None else chunk_size
    if isinstance(C, bool) or not isinstance(C, int) or C < 1 or (window > 0 and C % window):
        raise ValueError(f"chunk_size must be a positive multiple of window={window}, got {chunk_size!r}")
    B, H, T, D = q.shape
    scale = D**-0.5 if scale is None else scale
    dev = q.device
    if T == 0:  # empty sequence: empty output
        return v.new_zeros(v.shape)
    q32, k32, v32, fq32, fk32 = up(q), up(k), up(v), up(fq), up(fk)
    valid = torch.ones(B, T, dtype=torch.bool, device=dev) if key_mask is None else key_mask
    pos = torch.arange(T, device=dev)
    # keys feeding the linear state: real, and not sinks (sinks are always window keys)
    fk_state = fk32 * (valid & (pos >= sink_tokens)[None])[:, None, :, None]  # [B, H, T, F]
    gamma = torch.sigmoid(window_logit.to(q32.dtype))[None, :, None, None]  # [1, H, 1, 1]
    n_chunks = -(-T // C)

    if causal:
        # linear state over chunks 0 .. c-2 (all linear for queries in chunk c)
        S = torch.zeros(B, H, fq.shape[-1], v.shape[-1], device=dev, dtype=q32.dtype)
        z = torch.zeros(B, H, fq.shape[-1], device=dev, dtype=q32.dtype)
        far = None
    else:
        # bidirectional: every chunk more than one away is linear; per-chunk states, summed by exclusion
        chunk_S = torch.stack(
            [torch.einsum("bhjf,bhjd->bhfd", fk_state[:, :, c * C : (c + 1) * C], v32[:, :, c * C : (c + 1) * C]) for c in range(n_chunks)]
        )  # [N, B, H, F, D]
        chunk_z = torch.stack([fk_state[:, :, c * C : (c + 1) * C].sum(2) for c in range(n_chunks)])  # [N, B, H, F]
        far = (chunk_S, chunk_z)

    outs = []
    for c in range(n_chunks):
        q0, q1 = c * C, min((c + 1) * C, T)
        if causal:
            lo, hi = max(0, q0 - C), q1  # keys of the previous and this chunk
            if c >= 2:
                p0, p1 = (c - 2) * C, (c - 1) * C
                S = S + torch.einsum("bhjf,bhjd->bhfd", fk_state[:, :, p0:p1], v32[:, :, p0:p1])
                z = z + fk_state[:, :, p0:p1].sum(2)
            S_far, z_far = S, z
        else:
            lo, hi = max(0, q0 - C), min(T, q1 + C)
            keep = [n for n in range(n_chunks) if abs(n - c) > 1]
            S_far = far[0][keep].sum(0) if keep else torch.zeros_like(far[0][0])
            z_far = far[1][keep].sum(0) if keep else torch.zeros_like(far[1][0])
        # sink keys that lie before the local keys are window keys too
        kidx = torch.cat([torch.arange(min(sink_tokens, lo), device=dev), torch.arange(lo, hi, device=dev)])  # [K]
        in_win, in_lin = window_masks(pos[q0:q1], kidx, window=window, kind=kind, causal=causal, sink_tokens=sink_tokens)
        kvalid = valid[:, kidx][:, None, None, :]  # [B, 1, 1, K]
        in_win, in_lin = in_win[None, None] & kvalid, in_lin[None, None] & kvalid  # [B, 1, Cq, K]

        q_c, fq_c = q32[:, :, q0:q1], fq32[:, :, q0:q1]  # [B, H, Cq, *]
        k_l, v_l, fk_l = k32[:, :, kidx], v32[:, :, kidx], fk32[:, :, kidx]  # [B, H, K, *]
        s = torch.einsum("bhid,bhjd->bhij", q_c, k_l) * scale  # [B, H, Cq, K]
        s_win = s.masked_fill(~in_win, float("-inf"))
        m = s_win.amax(-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        a = gamma * torch.exp(s_win - m) + torch.einsum("bhif,bhjf->bhij", fq_c, fk_l) * in_lin  # [B, H, Cq, K]
        num = torch.einsum("bhij,bhjd->bhid", a, v_l) + torch.einsum("bhif,bhfd->bhid", fq_c, S_far)
        den = a.sum(-1) + torch.einsum("bhif,bhf->bhi", fq_c, z_far) + eps  # [B, H, Cq]
        outs.append(num / den[..., None])
    return torch.cat(outs, dim=2).to(v.dtype)  # [B, H, T, Dv]


def hybrid_attn(
    q, k, v, fq, fk, window_logit, *, window, kind="tk", causal=True, sink_tokens=0, key_mask=None, scale=None,
    eps: float = HYBRID_EPS, impl: str = "auto",
) -> torch.Tensor:
    """Hybrid attention with an explicit implementation: "naive", "chunk", "triton" (CUDA, causal, no key
    mask) or "auto" (Triton for causal CUDA inputs without a key mask, else "chunk"; decided by device)."""
    check_impl(impl, ("auto", "naive", "chunk", "triton"))
    kw = dict(window=window, kind=kind, causal=causal, sink_tokens=sink_tokens, key_mask=key_mask, scale=scale, eps=eps)
    if impl == "auto":
        from .dispatch import triton_supported

        triton_ok = triton_supported(q, causal=causal, key_mask=key_mask) and (window > 0 or sink_tokens == 0)
        impl = "triton" if triton_ok else "chunk"
    if impl == "naive":
        return naive_hybrid_attn(q, k, v, fq, fk, window_logit, **kw)
    if impl == "chunk":
        return chunk_hybrid_attn(q, k, v, fq, fk, window_logit, **kw)
    from .dispatch import triton_hybrid_attn

    return triton_hybrid_attn(q, k, v, fq, fk, window_logit, **kw)


# --------------------------------------------------------------------------------------------------
# decoding


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
