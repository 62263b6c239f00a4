"""Linear attention in three forms that agree: quadratic (reference), chunked (O(T)), recurrent (decoding).

With feature maps applied, fq = phi_q(q) and fk = phi_k(k) ([B, H, T, F]):

    y_i = sum_{j<=i} (fq_i . fk_j) v_j / (sum_{j<=i} fq_i . fk_j + eps)         (causal)
    y_i = sum_j      (fq_i . fk_j) v_j / (sum_j      fq_i . fk_j + eps)         (bidirectional)

eps = 1e-12, added to the normaliser in fp32 (SPEC.md). It only matters when every score of a row is
(near) zero, e.g. ReLU features of opposite sign; for the Hedgehog map the normaliser is >= ~1e-24 * T
per term and eps keeps a fully masked row at y = 0 instead of NaN. All forms compute in fp32 and
return v's dtype.

* :func:`naive_linear_attn`: materialises the [T, T] score matrix; the reference and the map for plots.
* :func:`chunk_linear_attn`: the algorithm the Triton kernel implements. Per chunk of C tokens, an
  intra-chunk masked quadratic term plus the running state S = sum fk^T v ([F, D]) and z = sum fk ([F])
  of all earlier chunks. Memory O(T + F D) per head; any T (the last chunk may be short).
* :func:`recurrent_linear_attn`: token by token with an explicit :class:`LinearState`, for decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import up, check_bhtd, check_impl, check_key_mask, check_same_bh, check_same_len

LINEAR_EPS = 1e-12


@dataclass
class LinearState:
    """Recurrent state of causal linear attention: S = sum_j fk_j v_j^T [B, H, F, D], z = sum_j fk_j [B, H, F]."""

    S: torch.Tensor
    z: torch.Tensor

    @classmethod
    def zeros(cls, batch: int, heads: int, feature_dim: int, value_dim: int, device=None, dtype=torch.float32) -> "LinearState":
        return cls(
            S=torch.zeros(batch, heads, feature_dim, value_dim, device=device, dtype=dtype),
            z=torch.zeros(batch, heads, feature_dim, device=device, dtype=dtype),
        )


def _check_linear_inputs(fq, fk, v, key_mask):
    for name, x in (("fq", fq), ("fk", fk), ("v", v)):
        check_bhtd(name, x)
    check_same_bh("fq", fq, fk=fk, v=v)
    check_same_len(("fq", "fk", "v"), fq, fk, v)
    if fq.shape[-1] != fk.shape[-1]:
        raise ValueError(f"fq and fk must have the same feature dim F, got {fq.shape[-1]} and {fk.shape[-1]}")
    return check_key_mask(key_mask, fq.shape[0], fk.shape[2])


def _masked_keys(fk: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """fk in fp32 with padded keys zeroed, so they add nothing to any sum."""
    fk = up(fk)
    if key_mask is not None:
        fk = fk * key_mask[:, None, :, None]
    return fk


def naive_linear_attn(
    fq: torch.Tensor,
    fk: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    key_mask: torch.Tensor | None = None,
    eps: float = LINEAR_EPS,
    return_map: bool = False,
):
    """Quadratic-form linear attention (reference). fq, fk: [B, H, T, F]; v: [B, H, T, D].

    Returns y [B, H, T, D] (v's dtype), or (y, A) with the normalised map A [B, H, T, T] (fp32).
    """
    key_mask = _check_linear_inputs(fq, fk, v, key_mask)
    T = fq.shape[2]
    a = torch.einsum("bhif,bhjf->bhij", up(fq), _masked_keys(fk, key_mask))  # [B, H, T, T]
    if causal:
        a = a * torch.ones(T, T, dtype=torch.bool, device=a.device).tril()
    den = a.sum(-1, keepdim=True) + eps  # [B, H, T, 1]
    y = torch.einsum("bhij,bhjd->bhid", a, up(v)) / den  # [B, H, T, D]
    return (y.to(v.dtype), a / den) if return_map else y.to(v.dtype)


def chunk_linear_attn(
    fq: torch.Tensor,
    fk: torch.Tensor,
    v: torch.Tensor,
    *,
    chunk_size: int = 64,
    causal: bool = True,
    key_mask: torch.Tensor | None = None,
    eps: float = LINEAR_EPS,
) -> torch.Tensor:
    """Chunked linear attention, O(T) time and memory. Same arguments and result as :func:`naive_linear_attn`."""
    key_mask = _check_linear_inputs(fq, fk, v, key_mask)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if fq.shape[2] == 0:  # empty sequence: empty output
        return v.new_zeros(v.shape)
    fq32, fk32, v32 = up(fq), _masked_keys(fk, key_mask), up(v)
    if not causal:
        S = torch.einsum("bhtf,bhtd->bhfd", fk32, v32)  # [B, H, F, D]
        z = fk32.sum(2)  # [B, H, F]
        num = torch.einsum("bhtf,bhfd->bhtd", fq32, S)
        den = torch.einsum("bhtf,bhf->bht", fq32, z)[..., None] + eps
        return (num / den).to(v.dtype)

    B, H, T, F = fq.shape
    state = LinearState.zeros(B, H, F, v.shape[-1], device=fq.device, dtype=fq32.dtype)
    tril = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=fq.device).tril()
    outs = []
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        q_c, k_c, v_c = fq32[:, :, start:end], fk32[:, :, start:end], v32[:, :, start:end]  # [B, H, C, *]
        a = torch.einsum("bhif,bhjf->bhij", q_c, k_c) * tril[: end - start, : end - start]  # [B, H, C, C]
        num = torch.einsum("bhij,bhjd->bhid", a, v_c) + torch.einsum("bhif,bhfd->bhid", q_c, state.S)
        den = a.sum(-1) + torch.einsum("bhif,bhf->bhi", q_c, state.z) + eps  # [B, H, C]
        outs.append(num / den[..., None])
        state = LinearState(
            S=state.S + torch.einsum("bhjf,bhjd->bhfd", k_c, v_c),
            z=state.z + k_c.sum(2),
        )
    return torch.cat(outs, dim=2).to(v.dtype)  # [B, H, T, D]


def recurrent_linear_attn(
    fq: torch.Tensor,
    fk: torch.Tensor,
    v: torch.Tensor,
    *,
    state: LinearState | None = None,
    eps: float = LINEAR_EPS,
) -> tuple[torch.Tensor, LinearState]:
    """Causal linear attention token by token, continuing from ``state`` (zeros if None).

    fq, fk: [B, H, T, F]; v: [B, H, T, D] (T may be 1 for one decoding step).
    Returns (y [B, H, T, D] in v's dtype, the state after the last token).
    """
    _check_linear_inputs(fq, fk, v, None)
    B, H, T, F = fq.shape
    if state is None:
        state = LinearState.zeros(B, H, F, v.shape[-1], device=fq.device, dtype=up(fq).dtype)
    elif state.S.shape != (B, H, F, v.shape[-1]) or state.z.shape != (B, H, F):
        raise ValueError(
            f"state has S {tuple(state.S.shape)}, z {tuple(state.z.shape)}; expected "
            f"S {(B, H, F, v.shape[-1])}, z {(B, H, F)} for these inputs"
        )
    S, z = up(state.S), up(state.z)
    ys = []
    for t in range(T):
        k_t, v_t, q_t = up(fk[:, :, t]), up(v[:, :, t]), up(fq[:, :, t])  # [B, H, F] / [B, H, D]
        S = S + torch.einsum("bhf,bhd->bhfd", k_t, v_t)
        z = z + k_t
        num = torch.einsum("bhf,bhfd->bhd", q_t, S)
        den = torch.einsum("bhf,bhf->bh", q_t, z)[..., None] + eps
        ys.append(num / den)
    y = torch.stack(ys, dim=2).to(v.dtype) if ys else v.new_zeros(v.shape)  # [B, H, T, D]
    return y, LinearState(S=S, z=z)


def linear_attn(
    fq: torch.Tensor,
    fk: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    key_mask: torch.Tensor | None = None,
    eps: float = LINEAR_EPS,
    impl: str = "auto",
) -> torch.Tensor:
    """Linear attention with an explicit implementation choice.

    impl: "naive" (quadratic reference), "chunk" (PyTorch O(T)), "recurrent" (token loop, causal only),
    "triton" (CUDA kernel, causal, no key_mask), or "auto": Triton for causal CUDA inputs without a key
    mask, else "chunk" (decided by device, never by a failed import).
    """
    check_impl(impl, ("auto", "naive", "chunk", "recurrent", "triton"))
    if impl == "auto":
        from .dispatch import triton_supported

        impl = "triton" if triton_supported(fq, causal=causal, key_mask=key_mask) else "chunk"
    if impl == "naive":
        return naive_linear_attn(fq, fk, v, causal=causal, key_mask=key_mask, eps=eps)
    if impl == "chunk":
        return chunk_linear_attn(fq, fk, v, causal=causal, key_mask=key_mask, eps=eps)
    if impl == "recurrent":
        if not causal or key_mask is not None:
            raise ValueError("impl='recurrent' is causal only and takes no key_mask; use impl='chunk'")
        return recurrent_linear_attn(fq, fk, v, eps=eps)[0]
    from .dispatch import triton_linear_attn

    return triton_linear_attn(fq, fk, v, causal=causal, key_mask=key_mask, eps=eps)
