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
  chunks is linear, so those are summed in prefix states S, z exactly like chunked linear attention.
  All chunks go through a handful of batched matmuls at once (no Python loop over chunks): the CPU path
  (benchmarks/bench_cpu_context.py).
* :func:`~lolcats_lab.attention.hybrid_decode.hybrid_decode_step` with its ``HybridCache`` (module
  hybrid_decode.py): one token at a time, constant memory; equals the full pass (the cache folds a key
  into S, z exactly when it leaves the window).
"""

from __future__ import annotations

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


def _chunks(x: torch.Tensor, C: int) -> torch.Tensor:
    """[B, H, T, E] -> [B * H * N, C, E] in fp32 (fp64 stays), zero-padded to whole chunks (N = ceil(T / C))."""
    x = up(x)
    pad = -x.shape[2] % C
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    return x.reshape(-1, C, x.shape[-1])  # [M, C, E]


def _local_keys(xc: torch.Tensor, before: int, after: int, ones: bool = False) -> torch.Tensor:
    """Per query chunk m, its ``before`` previous chunks, itself and ``after`` next ones, side by side.

    xc: [M, C, E] (chunks of all rows and heads, in order). Returns [M, K, E (+1)], K = (before + 1 + after) * C,
    with a column of ones appended when ``ones`` (so a @ result also gives the row sums of a). A chunk's
    neighbours across a row / head boundary hold another row's keys: callers mask them.
    """
    M, C, E = xc.shape
    out = xc.new_empty(M, (before + 1 + after) * C, E + ones)
    for i in range(-before, after + 1):  # neighbour offset
        dst = out[:, (i + before) * C : (i + before + 1) * C, :E]  # [M, C, E]
        if i == 0:
            dst.copy_(xc)
        elif i < 0:
            dst[-i:].copy_(xc[:i])
            dst[:-i].zero_()
        else:
            dst[:-i].copy_(xc[i:])
            dst[-i:].zero_()
    if ones:
        out[..., E] = 1.0
    return out


def _prefix_sum(x: torch.Tensor, block: int = 16) -> torch.Tensor:
    """Inclusive prefix sums along dim 1 of x [R, N, E], as a few large matmuls (torch.cumsum is slow on
    CPU here, a loop over N is N small ops): within blocks of ``block`` chunks, then across blocks."""
    R, N, E = x.shape
    nb = -(-N // block)
    xb = torch.nn.functional.pad(x, (0, 0, 0, nb * block - N)).view(R, nb, block, E)  # [R, nb, G, E]
    tri = torch.ones(block, block, dtype=x.dtype, device=x.device).tril()  # [G, G]
    inner = torch.matmul(tri, xb)  # [R, nb, G, E] in-block prefix sums
    if nb > 1:
        tri_b = torch.ones(nb, nb, dtype=x.dtype, device=x.device).tril(-1)  # [nb, nb], blocks strictly before
        inner = inner + torch.matmul(tri_b, inner[:, :, -1])[:, :, None]  # [R, nb, G, E]
    return inner.view(R, nb * block, E)[:, :N]


def _far_states(S_c: torch.Tensor, causal: bool) -> torch.Tensor:
    """For each chunk n, the sum of S_c over chunks <= n - 2 (and >= n + 2 when bidirectional). S_c: [R, N, E]."""
    R, N, E = S_c.shape
    zeros = S_c.new_zeros(R, min(2, N), E)
    far = torch.cat([zeros, _prefix_sum(S_c[:, : max(0, N - 2)])], 1)  # [R, N, E]
    if not causal:
        far = far + torch.cat([_prefix_sum(S_c[:, 2:].flip(1)).flip(1), zeros], 1)
    return far


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

    All chunks are computed at once, batched over M = B * H * N chunks (no Python loop over chunks): query
    chunk n sees its local keys (chunks n-1, n, and n+1 when bidirectional) exactly, through one [C, K]
    pattern of window / linear keys shared by every chunk (C is a multiple of w, so the rules are the same
    up to a shift of whole blocks), and every farther key through prefix sums of the per-chunk states.
    Values carry an extra column of ones, so each product with them also yields the normaliser (z, row sums).
    """
    key_mask = _check_hybrid_inputs(q, k, v, fq, fk, window_logit, window, kind, key_mask, sink_tokens)
    C = hybrid_chunk_size(window) if chunk_size is None else chunk_size
    if isinstance(C, bool) or not isinstance(C, int) or C < 1 or (window > 0 and C % window):
        raise ValueError(f"chunk_size must be a positive multiple of window={window}, got {chunk_size!r}")
    B, H, T, D = q.shape
    Dv = v.shape[-1]
    scale = D**-0.5 if scale is None else scale
    dev = q.device
    if T == 0:  # empty sequence: empty output
        return v.new_zeros(v.shape)
    # in-place elementwise ops where autograd does not need the overwritten values
    inplace = not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, fq, fk, window_logit)))
    N = -(-T // C)
    P = N * C  # padded length
    before, after = 1, (0 if causal else 1)  # local chunks around each query chunk
    K = (before + 1 + after) * C
    valid = torch.arange(P, device=dev) < T if key_mask is None else torch.nn.functional.pad(key_mask, (0, P - T))
    valid = valid.expand(B, P)  # [B, P]

    # window / linear pattern of a chunk against its local keys, from relative positions
    kpos = torch.arange(K, device=dev)  # [K]
    in_win, in_lin = window_masks(kpos[:C] + before * C, kpos, window=window, kind=kind, causal=causal)  # [C, K]
    kabs = (torch.arange(N, device=dev) - before)[:, None] * C + kpos  # [N, K] absolute key positions
    inside = (kabs >= 0) & (kabs < P)
    kvalid = valid[:, kabs.clamp(0, P - 1)] & inside  # [B, N, K]
    if sink_tokens:  # sinks among the local keys: window keys wherever visible
        is_sink = (inside & (kabs < sink_tokens))[:, None, :]  # [N, 1, K]
        in_win, in_lin = in_win | (is_sink & (in_win | in_lin)), in_lin & ~is_sink  # [N, C, K]
    in_win, in_lin = in_win & kvalid[:, None, :, None, :], in_lin & kvalid[:, None, :, None, :]  # [B, 1, N, C, K]

    q_c, fq_c = _chunks(q, C), _chunks(fq, C)  # [M, C, D], [M, C, F]
    k_l = _local_keys(_chunks(k, C), before, after)  # [M, K, D]
    v_c = _chunks(v, C)  # [M, C, Dv]
    v_l = _local_keys(v_c, before, after, ones=True)  # [M, K, Dv + 1]
    s = torch.baddbmm(q_c.new_empty(()), q_c, k_l.transpose(1, 2), beta=0, alpha=scale)  # [M, C, K]
    if sink_tokens:  # sinks before the local keys: extra window keys for every query of the chunk
        ns = min(sink_tokens, T)
        spos = torch.arange(ns, device=dev)[None, :]  # [1, ns]
        far_sink = spos < kabs[:, :1] if causal else (spos < kabs[:, :1]) | (spos > kabs[:, -1:])  # [N, ns]
        sink_win = far_sink[None] & valid[:, None, :ns]  # [B, N, ns]
        k_s, v_s = up(k[:, :, :ns]), torch.nn.functional.pad(up(v[:, :, :ns]), (0, 1), value=1.0)  # [B, H, ns, *]
        s_s = torch.einsum("bhncd,bhsd->bhncs", q_c.view(B, H, N, C, D), k_s) * scale  # [B, H, N, C, ns]
        s = torch.cat([s, s_s.reshape(-1, C, ns)], -1)  # [M, C, K + ns]
        in_win = torch.cat([in_win, sink_win[:, None, :, None, :].expand(B, 1, N, C, ns)], -1)
        in_lin = torch.cat([in_lin, torch.zeros_like(in_win[..., K:])], -1)
        v_l = torch.cat([v_l, v_s[:, :, None].expand(B, H, N, ns, Dv + 1).reshape(-1, ns, Dv + 1)], 1)
    s5 = s.view(B, H, N, C, -1)  # [B, H, N, C, K (+ ns)]
    s_win = s5.masked_fill_(~in_win, float("-inf")) if inplace else s5.masked_fill(~in_win, float("-inf"))
    m = s_win.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows without window keys
    gamma = torch.sigmoid(window_logit.to(s.dtype))[None, :, None, None, None]  # [1, H, 1, 1, 1]
    a = s_win.sub_(m).exp_().mul_(gamma) if inplace else gamma * torch.exp(s_win - m)  # [B, H, N, C, K (+ ns)]
    if bool(in_lin.any()):  # tk with C == w has no linear keys among the local ones
        fk_l = _local_keys(_chunks(fk, C), before, after)  # [M, K, F]
        a_lin = (fq_c @ fk_l.transpose(1, 2)).view(B, H, N, C, K) * in_lin[..., :K]  # [B, H, N, C, K]
        a = a + torch.nn.functional.pad(a_lin, (0, a.shape[-1] - K))

    # states of whole chunks over the keys that feed them (real, not sinks); [S | z] in one [F, Dv + 1] matrix
    fk_c = _chunks(fk, C)  # [M, C, F]
    state_keys = valid & (torch.arange(P, device=dev) >= sink_tokens)  # [B, P]
    if not bool(state_keys.all()):
        fk_c = fk_c * state_keys[:, None, :].expand(B, H, P).reshape(-1, C, 1)
    v1_c = v_l[:, before * C : (before + 1) * C]  # [M, C, Dv + 1] own chunk, with the ones column
    S_c = (fk_c.transpose(1, 2) @ v1_c).view(B * H, N, -1)  # [BH, N, F * (Dv + 1)]
    S_far = _far_states(S_c, causal).view(-1, fk_c.shape[-1], Dv + 1)  # [M, F, Dv + 1]
    num = torch.baddbmm(a.view(-1, C, a.shape[-1]) @ v_l, fq_c, S_far)  # [M, C, Dv + 1]
    y = num[..., :Dv] / (num[..., Dv:] + eps)  # [M, C, Dv]
    return y.view(B, H, P, Dv)[:, :, :T].to(v.dtype)  # [B, H, T, Dv]


def auto_uses_triton(q: torch.Tensor, *, causal: bool, key_mask, window: int, sink_tokens: int) -> bool:
    """Whether ``hybrid_attn(..., impl="auto")`` runs the Triton kernel for these inputs: causal fp16/bf16
    CUDA tensors without a key mask (``dispatch.triton_supported``), with window keys or no sinks."""
    from .dispatch import triton_supported

    return triton_supported(q, causal=causal, key_mask=key_mask) and (window > 0 or sink_tokens == 0)


def hybrid_attn(
    q, k, v, fq, fk, window_logit, *, window, kind="tk", causal=True, sink_tokens=0, key_mask=None, scale=None,
    eps: float = HYBRID_EPS, impl: str = "auto",
) -> torch.Tensor:
    """Hybrid attention with an explicit implementation: "naive", "chunk", "triton" (CUDA, causal, no key
    mask) or "auto" (Triton for causal CUDA inputs without a key mask, else "chunk"; decided by device)."""
    check_impl(impl, ("auto", "naive", "chunk", "triton"))
    kw = dict(window=window, kind=kind, causal=causal, sink_tokens=sink_tokens, key_mask=key_mask, scale=scale, eps=eps)
    if impl == "auto":
        on_triton = auto_uses_triton(q, causal=causal, key_mask=key_mask, window=window, sink_tokens=sink_tokens)
        impl = "triton" if on_triton else "chunk"
    if impl == "naive":
        return naive_hybrid_attn(q, k, v, fq, fk, window_logit, **kw)
    if impl == "chunk":
        return chunk_hybrid_attn(q, k, v, fq, fk, window_logit, **kw)
    from .dispatch import triton_hybrid_attn

    return triton_hybrid_attn(q, k, v, fq, fk, window_logit, **kw)


# the decoding path lives in hybrid_decode.py; imported here too for code written against this module
from .hybrid_decode import HybridCache, hybrid_decode_step, prefill_hybrid_cache  # noqa: E402, F401
