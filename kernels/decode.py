"""One decoding step of LoLCATs hybrid attention in Triton, batched, against a fixed-size ring-buffer cache.

Math: exactly SPEC.md "The hybrid output" for the newest query p (= ``cache.pos``):

    y_p = (gamma sum_{j in W_p} exp(s_pj - M_p) v_j + fq_p S) / (gamma sum_{j in W_p} exp(s_pj - M_p) + fq_p . z + eps)

with S = sum_{j in L_p} fk_j v_j^T [F, D], z = sum_{j in L_p} fk_j [F] (sinks excluded) and M_p the max
over window keys. Reference: ``lolcats_lab.attention.hybrid.hybrid_decode_step`` (token by token) and
row p of ``naive_hybrid_attn`` (SPEC.md "Decoding must equal training").

Cache layout (:class:`RingHybridCache`, all [B, H, ...]; memory constant in the context length):
    S [F, D], z [F]                     fp32 linear state
    k_buf [Wc, K], v_buf [Wc, D], fk_buf [Wc, F]   ring of window tokens, position j in slot j % Wc,
                                        Wc = w (sw) or 2w (tk: the previous and the current block)
    k_sink [n, K], v_sink [n, D]        the first n tokens when sink_tokens = n
One program per (batch, head) per step: (1) folds into S, z the keys that leave the window at this step
(sw: the one at p - w; tk: the whole block [p - 2w, p - w) when p starts a block), (2) attends to the
valid ring slots, the sinks and the new token (held in registers), (3) writes S, z back in place and
then the new token into its slot. State and window are read once and the state written once, which is
the memory-bandwidth bound of the step. Slot validity comes from positions: slot s holds the latest
position p' <= p with p' = s (mod Wc); it is a window key iff p' >= n_sinks and p' is in W_p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._tl_helpers import load_rows as _rows
from ._utils import block, check_same_dtype_device, check_tensor, is_interpreter

@triton.jit
def _vec(p, N: tl.constexpr, BN: tl.constexpr):
    o = tl.arange(0, BN)
    return tl.load(p + o, mask=o < N, other=0.0).to(tl.float32)




@triton.jit(do_not_specialize=["p", "W", "NS"])
def hybrid_decode_kernel(
    q, k, v, fq, fk, gam, S, z, kb, vb, fkb, ks, vs, y, p, W, NS, scale, eps,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, F: tl.constexpr, WC: tl.constexpr, NSC: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, BF: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr, TK: tl.constexpr,
):  # fmt: skip
    """Grid (B*H,). q, k [B*H, K]; v, y [B*H, D]; fq, fk [B*H, F]; S [B*H, F, D]; rings [B*H, WC, *]."""
    i_bh = tl.program_id(0)
    i_bh64 = i_bh.to(tl.int64)
    gamma = tl.load(gam + i_bh % H)
    q += i_bh64 * K
    k += i_bh64 * K
    fq += i_bh64 * F
    fk += i_bh64 * F
    v += i_bh64 * V
    y += i_bh64 * V
    S += i_bh64 * F * V
    z += i_bh64 * F
    kb += i_bh64 * WC * K
    vb += i_bh64 * WC * V
    fkb += i_bh64 * WC * F
    ks += i_bh64 * NSC * K
    vs += i_bh64 * NSC * V
    b_q, b_k, b_v = _vec(q, K, BK), _vec(k, K, BK), _vec(v, V, BV)  # new token, [BK] / [BV]
    b_fq = _vec(fq, F, BF)
    o_f, o_v = tl.arange(0, BF), tl.arange(0, BV)
    m_fv = (o_f < F)[:, None] & (o_v < V)[None, :]
    b_S = tl.load(S + o_f[:, None] * V + o_v[None, :], mask=m_fv, other=0.0)  # [BF, BV] fp32
    b_z = tl.load(z + o_f, mask=o_f < F, other=0.0)  # [BF]
    slot = p % WC
    # (1) fold the keys that leave the window at this step into S, z
    if TK:
        n_fold = tl.where((p % W == 0) & (p >= 2 * W), W, 0)
        first = p - 2 * W  # position in the first folded slot (= slot)
    else:
        n_fold = tl.where(p >= W, 1, 0)
        first = p - W
    for r0 in range(0, n_fold, BC):
        o_r = r0 + tl.arange(0, BC)
        m_r = (o_r < n_fold) & (first + o_r >= NS)  # sinks never enter the linear state
        b_fkr = _rows(fkb, slot + o_r, m_r, F, BF)  # [BC, BF]
        b_vr = _rows(vb, slot + o_r, m_r, V, BV)  # [BC, BV]
        b_S += tl.dot(tl.trans(b_fkr), b_vr, input_precision="ieee")
        b_z += tl.sum(b_fkr, 0)
    # (2) attention: the new token first (always a window key), then ring slots and sinks, online max
    b_m = tl.sum(b_q * b_k, 0) * scale
    b_acc = b_v  # exp(s_new - m) = 1
    b_l = b_m * 0.0 + 1.0
    if TK:  # first position in W_p (SPEC.md)
        win_lo = ((p // W) - 1) * W
    else:
        win_lo = p - W + 1
    for c0 in range(0, WC, BC):
        o_s = c0 + tl.arange(0, BC)
        pos = p - ((p - o_s) % WC + WC) % WC  # latest position <= p stored in slot o_s
        m_s = (o_s < WC) & (o_s != slot) & (pos >= 0) & (pos >= NS) & (pos >= win_lo)
        b_kr = _rows(kb, o_s, m_s, K, BK)  # [BC, BK]
        b_s = tl.where(m_s, tl.sum(b_kr * b_q[None, :], 1) * scale, float("-inf"))  # [BC]
        m_new = tl.maximum(b_m, tl.max(b_s, 0))
        alpha = tl.exp(b_m - m_new)
        b_p = tl.exp(b_s - m_new)  # 0 on invalid slots
        b_vr = _rows(vb, o_s, m_s, V, BV)
        b_acc = b_acc * alpha + tl.sum(b_p[:, None] * b_vr, 0)
        b_l = b_l * alpha + tl.sum(b_p, 0)
        b_m = m_new
    o_n = tl.arange(0, BS)
    m_n = (o_n < NS) & (o_n < p)  # sinks before the new token
    b_kn = _rows(ks, o_n, m_n, K, BK)
    b_s = tl.where(m_n, tl.sum(b_kn * b_q[None, :], 1) * scale, float("-inf"))
    m_new = tl.maximum(b_m, tl.max(b_s, 0))
    alpha = tl.exp(b_m - m_new)
    b_p = tl.exp(b_s - m_new)
    b_acc = b_acc * alpha + tl.sum(b_p[:, None] * _rows(vs, o_n, m_n, V, BV), 0)
    b_l = b_l * alpha + tl.sum(b_p, 0)
    # (3) output and state
    b_num = gamma * b_acc + tl.sum(b_fq[:, None] * b_S, 0)  # [BV]
    b_den = gamma * b_l + tl.sum(b_fq * b_z, 0) + eps
    tl.store(y + o_v, (b_num / b_den).to(y.dtype.element_ty), mask=o_v < V)
    tl.store(S + o_f[:, None] * V + o_v[None, :], b_S, mask=m_fv)
    tl.store(z + o_f, b_z, mask=o_f < F)
    tl.debug_barrier()  # the fold above read the slot written below
    o_k = tl.arange(0, BK)
    if p < NS:
        tl.store(ks + p * K + o_k, b_k.to(ks.dtype.element_ty), mask=o_k < K)
        tl.store(vs + p * V + o_v, b_v.to(vs.dtype.element_ty), mask=o_v < V)
    else:
        tl.store(kb + slot * K + o_k, b_k.to(kb.dtype.element_ty), mask=o_k < K)
        tl.store(vb + slot * V + o_v, b_v.to(vb.dtype.element_ty), mask=o_v < V)
        tl.store(fkb + slot * F + o_f, _vec(fk, F, BF).to(fkb.dtype.element_ty), mask=o_f < F)


@dataclass
class RingHybridCache:
    """Fixed-size decoding cache of one hybrid-attention layer (see the module docstring for the layout).

    ``pos`` is the position of the next token. Tensors are updated in place by :func:`hybrid_decode_step`.
    """

    S: torch.Tensor  # [B, H, F, D] fp32
    z: torch.Tensor  # [B, H, F] fp32
    k_buf: torch.Tensor  # [B, H, Wc, K]
    v_buf: torch.Tensor  # [B, H, Wc, D]
    fk_buf: torch.Tensor  # [B, H, Wc, F]
    k_sink: torch.Tensor  # [B, H, max(n, 1), K]
    v_sink: torch.Tensor  # [B, H, max(n, 1), D]
    window: int
    kind: str
    sink_tokens: int
    pos: int = 0

    @classmethod
    def empty(cls, batch, heads, head_dim, value_dim, feature_dim, *, window, kind="tk", sink_tokens=0,
              device=None, dtype=torch.float32) -> "RingHybridCache":  # fmt: skip
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if kind not in ("tk", "sw"):
            raise ValueError(f"kind must be 'tk' or 'sw', got {kind!r}")
        if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 0:
            raise ValueError(f"sink_tokens must be an int >= 0, got {sink_tokens!r}")
        B, H, wc, ns = batch, heads, window * (2 if kind == "tk" else 1), max(sink_tokens, 1)
        z = dict(device=device, dtype=dtype)
        return cls(
            S=torch.zeros(B, H, feature_dim, value_dim, device=device),
            z=torch.zeros(B, H, feature_dim, device=device),
            k_buf=torch.zeros(B, H, wc, head_dim, **z), v_buf=torch.zeros(B, H, wc, value_dim, **z),
            fk_buf=torch.zeros(B, H, wc, feature_dim, **z),
            k_sink=torch.zeros(B, H, ns, head_dim, **z), v_sink=torch.zeros(B, H, ns, value_dim, **z),
            window=window, kind=kind, sink_tokens=sink_tokens,
        )  # fmt: skip

    @classmethod
    def from_prompt(cls, k, v, fk, *, window, kind="tk", sink_tokens=0) -> "RingHybridCache":
        """The cache after a prompt (k, v [B, H, T, *], fk [B, H, T, F]), ready for the token at position T.

        PyTorch (runs once per prompt): S, z over the keys that are linear for the last prompt token.
        """
        B, H, T, K = k.shape
        c = cls.empty(B, H, K, v.shape[-1], fk.shape[-1], window=window, kind=kind, sink_tokens=sink_tokens,
                      device=k.device, dtype=k.dtype)  # fmt: skip
        if T == 0:
            return c
        last = T - 1
        win_lo = max(0, (last // window - 1) * window) if kind == "tk" else max(0, last - window + 1)
        n = min(sink_tokens, T)
        lin = slice(n, max(n, win_lo))  # linear keys of the last token
        c.S += torch.einsum("bhtf,bhtd->bhfd", fk[:, :, lin].float(), v[:, :, lin].float())
        c.z += fk[:, :, lin].float().sum(2)
        c.k_sink[:, :, :n], c.v_sink[:, :, :n] = k[:, :, :n], v[:, :, :n]
        pos = torch.arange(max(n, win_lo), T, device=k.device)
        slots = pos % c.k_buf.shape[2]
        c.k_buf[:, :, slots], c.v_buf[:, :, slots], c.fk_buf[:, :, slots] = (
            k[:, :, pos], v[:, :, pos], fk[:, :, pos].to(c.fk_buf.dtype),
        )  # fmt: skip
        c.pos = T
        return c


def hybrid_decode_step(q, k, v, fq, fk, window_logit, cache: RingHybridCache, *, scale=None, eps=1e-12):
    """One token for every sequence of the batch: q, k [B, H, 1, K], v [B, H, 1, D], fq, fk [B, H, 1, F].

    Returns (y [B, H, 1, D] in v's dtype, cache) with the cache updated in place (``cache.pos`` + 1).
    Not differentiable (inference).
    """
    check_tensor("q", q, 4, "[B, H, 1, K]")
    for name, x in (("k", k), ("v", v), ("fq", fq), ("fk", fk)):
        check_tensor(name, x, 4, "[B, H, 1, *]")
    check_same_dtype_device(q=q, k=k, v=v, fq=fq, fk=fk)
    if q.shape[2] != 1:
        raise ValueError(f"hybrid_decode_step takes one token (dim 2 == 1), got {q.shape[2]}; prefill with "
                         "RingHybridCache.from_prompt")  # fmt: skip
    B, H, _, K = q.shape
    D, F = v.shape[-1], fq.shape[-1]
    expect = dict(k_buf=(B, H, cache.k_buf.shape[2], K), v_buf=(B, H, cache.k_buf.shape[2], D), S=(B, H, F, D))
    for name, shape in expect.items():
        if tuple(getattr(cache, name).shape) != shape:
            raise ValueError(f"cache.{name} has shape {tuple(getattr(cache, name).shape)}, expected {shape} for "
                             "these inputs; build the cache with matching sizes")  # fmt: skip
    if k.shape != q.shape or fk.shape != fq.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"fq {tuple(fq.shape)}, fk {tuple(fk.shape)}")  # fmt: skip
    if not isinstance(window_logit, torch.Tensor) or window_logit.shape != (H,):
        raise ValueError(f"window_logit must be a tensor of shape [H] = ({H},), one logit per head")
    gamma = torch.sigmoid(window_logit.float()).contiguous()
    scale = K**-0.5 if scale is None else float(scale)
    y = torch.empty_like(v)
    WC = cache.k_buf.shape[2]
    hybrid_decode_kernel[(B * H,)](
        q.contiguous(), k.contiguous(), v.contiguous(), fq.contiguous(), fk.contiguous(), gamma,
        cache.S, cache.z, cache.k_buf, cache.v_buf, cache.fk_buf, cache.k_sink, cache.v_sink, y,
        cache.pos, cache.window, cache.sink_tokens, scale, eps,
        H=H, K=K, V=D, F=F, WC=WC, NSC=cache.k_sink.shape[2], BK=block(K), BV=block(D), BF=block(F),
        BC=16 if is_interpreter() else 32, BS=block(cache.k_sink.shape[2]), TK=cache.kind == "tk",
        num_warps=4,  # no autotuning: the kernel updates the cache in place, a tuning rerun would fold twice
    )  # fmt: skip
    cache.pos += 1
    return y, cache
