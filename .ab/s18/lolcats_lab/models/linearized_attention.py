"""The wrapper that replaces one Hugging Face attention module: softmax, linearized, or both (transfer).

:class:`LinearizedAttention` keeps the original module as ``base_attn`` (frozen, untouched) and adds
per-head, untied q and k feature maps and a per-head window logit (gamma = sigmoid(logit), SPEC.md).

Modes (set with :func:`lolcats_lab.models.set_attention_mode`):

* ``"softmax"``: calls ``base_attn`` unchanged, so the model is exactly the original.
* ``"linear"``: the attention chosen at linearize time: pure linear (``attention="linear"``) or the
  sliding-window + linear hybrid (``"hybrid-tk"``, ``"hybrid-sw"``), on q, k after RoPE, with grouped
  k/v heads repeated to the query heads before the feature map. Decodes with a constant-size cache.
* ``"transfer"``: computes the softmax output with the model's own eager attention (that is what flows to
  the next layer, so the teacher path is exact) and the linearized output, and stores the per-head MSE
  between them (before the output projection) in ``transfer_mse`` ([H], with gradient to the feature
  maps). One layer can capture one head's softmax and linearized maps (``capture_head``).

Padding: rows are computed with their real tokens moved to the front (``masks.compact_order``), so the
window rules count from each row's first real token. RoPE is applied before the feature maps, so unlike
softmax, linearized attention depends on absolute positions: with left padding, pass
``position_ids = attention_mask.cumsum(-1) - 1`` (clamped at 0) as ``generate`` does; a plain forward
call without them rotates a left-padded row by its padding length.
"""

from __future__ import annotations

import inspect
import math

import torch
from einops import rearrange
from torch import nn

from ..attention.hybrid import auto_uses_triton, hybrid_attn, naive_hybrid_attn
from ..attention.linear import linear_attn, naive_linear_attn
from ..attention.softmax import softmax_attn
from ..feature_maps import make_feature_map
from .cache import linearized_cache_layer
from .masks import compact_order, gather_map, gather_seq, key_mask_from_attention_mask, restore_seq
from .registry import ArchSpec

__all__ = ["LinearizedAttention", "linearized_attention", "ATTENTION_KINDS", "MODES"]

ATTENTION_KINDS = ("linear", "hybrid-tk", "hybrid-sw")
MODES = ("softmax", "linear", "transfer")
DECODE_IMPLS = ("auto", "torch", "triton")
WINDOW_INIT = 0.1  # gamma at initialisation (SPEC.md: logit(0.1))


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, Hkv, T, D] -> [B, Hkv * n_rep, T, D], each kv head repeated for its query group."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _cache_argument(bound: dict, extra: dict):
    """The generation cache handed to the attention module, or None: transformers >= 5.24 names it ``cache``,
    earlier 5.x releases ``past_key_values`` (still accepted as a deprecated keyword, which then arrives
    among the extra keyword arguments). Removes it from ``extra`` so it is not passed on twice."""
    for name in ("cache", "past_key_values"):
        if bound.get(name) is not None:
            return bound[name]
        if extra.get(name) is not None:
            return extra.pop(name)
    return None


def linearized_attention(
    q, k, v, fq, fk, window_logit, key_mask=None, *, pure_linear: bool, window: int, kind: str, causal: bool,
    sink_tokens: int, scale: float, impl: str = "auto", return_map: bool = False,
):
    """Linearized attention over full sequences, with padding handled per row.

    q, k, v: [B, H, T, D] (k/v heads already repeated); fq, fk: [B, H, T, F]; window_logit: [H];
    key_mask: [B, T] bool (True = real token) or None. ``pure_linear`` without sinks runs linear attention
    (position-free); otherwise the hybrid of SPEC.md (window = 0 with sinks: sinks exact, the rest linear).
    Rows with left (or inner) padding are computed with their real tokens moved to the front, so their
    outputs equal those of the unpadded sequence.

    Returns y [B, H, T, D] (v's dtype), or (y, A [B, H, T, T]) from the quadratic reference with ``return_map``.
    """
    if pure_linear and sink_tokens == 0:  # position-free: padding keys are masked, nothing to move
        if return_map:
            return naive_linear_attn(fq, fk, v, causal=causal, key_mask=key_mask, return_map=True)
        return linear_attn(fq, fk, v, causal=causal, key_mask=key_mask, impl=impl)
    perm = compact_order(key_mask)
    q, k, v, fq, fk = (gather_seq(x, perm) for x in (q, k, v, fq, fk))
    km = key_mask if perm is None else key_mask.gather(1, perm)
    kw = dict(window=window, kind=kind, causal=causal, sink_tokens=sink_tokens, scale=scale, key_mask=km)
    if return_map:
        y, a = naive_hybrid_attn(q, k, v, fq, fk, window_logit, return_map=True, **kw)
        return restore_seq(y, perm), gather_map(a, perm)
    return restore_seq(hybrid_attn(q, k, v, fq, fk, window_logit, impl=impl, **kw), perm)


class LinearizedAttention(nn.Module):
    """Wraps ``base_attn`` (a self-attention module of a registered architecture).

    Args:
        base_attn: the original module; kept as ``self.base_attn``.
        spec: the architecture's registry entry.
        attention: "linear", "hybrid-tk" or "hybrid-sw".
        feature_map: a name in ``lolcats_lab.feature_maps.FEATURE_MAPS``.
        window: w for the hybrid forms (tokens); ignored by "linear".
        sink_tokens: the first n tokens always get exact softmax terms (SPEC.md, off by default).
        feature_map_kwargs: passed to both maps (e.g. ``feature_dim=64`` for Hedgehog).
        impl: "auto", "naive", "chunk" or "triton" for the linearized forward.

    ``decode_impl`` (an attribute, default "auto") picks how a generation cache decodes: "triton" (the
    ring-buffer kernel of ``lolcats_lab.kernels.decode``, in place, CUDA-graph capturable; CUDA tensors,
    or CPU ones under ``TRITON_INTERPRET=1``), "torch" (the PyTorch reference steps), or "auto": Triton
    when ``impl`` is "triton" and the tensors are on CUDA, or ``impl`` is "auto" and they are fp16/bf16 on
    CUDA (as for the forward); PyTorch otherwise (CPU, fp32 under "auto", impl "chunk" or "naive").
    """

    def __init__(
        self,
        base_attn: nn.Module,
        spec: ArchSpec,
        config,
        *,
        layer_idx: int,
        attention: str = "hybrid-tk",
        feature_map: str = "hedgehog",
        window: int = 64,
        sink_tokens: int = 0,
        feature_map_kwargs: dict | None = None,
        impl: str = "auto",
    ):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        self.base_attn = base_attn
        self.spec = spec
        self.layer_idx = layer_idx
        self.attention = attention
        self.kind = "sw" if attention == "linear" else attention.split("-")[1]
        self.window = 0 if attention == "linear" else window
        self.sink_tokens = sink_tokens
        self.causal = spec.causal
        self.impl = impl
        self.decode_impl = "auto"  # "auto" | "torch" | "triton": see the class docstring
        self.num_heads = spec.num_heads(config)
        self.num_kv_heads = spec.num_kv_heads(config)
        self.head_dim = spec.head_dim(base_attn)
        self.scaling = getattr(base_attn, "scaling", self.head_dim**-0.5)
        kw = dict(feature_map_kwargs or {})
        self.q_map = make_feature_map(feature_map, self.num_heads, self.head_dim, **kw)
        self.k_map = make_feature_map(feature_map, self.num_heads, self.head_dim, **kw)
        self.feature_map_name = feature_map
        self.window_logit = nn.Parameter(torch.full((self.num_heads,), math.log(WINDOW_INIT / (1 - WINDOW_INIT))))
        self.mode = "softmax"
        self.transfer_mse: torch.Tensor | None = None  # [H], set in transfer mode
        self.capture_head: int | None = None
        self.captured_maps: dict[str, torch.Tensor] | None = None
        self._signature = inspect.signature(base_attn.forward)

    @property
    def uses_window(self) -> bool:
        """Whether gamma (window_logit) enters the output: hybrid forms, or linear with sink tokens."""
        return self.window > 0 or self.sink_tokens > 0

    def extra_repr(self) -> str:
        return (
            f"attention={self.attention!r}, mode={self.mode!r}, window={self.window}, "
            f"sink_tokens={self.sink_tokens}, heads={self.num_heads}, kv_heads={self.num_kv_heads}"
        )

    # ------------------------------------------------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self.mode == "softmax":
            return self.base_attn(hidden_states, *args, **kwargs)
        bound = self._signature.bind(hidden_states, *args, **kwargs).arguments
        extra = dict(bound.pop("kwargs", {}))
        attention_mask = bound.get("attention_mask")
        cache = _cache_argument(bound, extra)
        q, k, v = self._qkv(hidden_states, bound.get("position_embeddings"))  # [B, H, T, D], [B, Hkv, T, D]
        if self.mode == "transfer":
            return self._transfer(q, k, v, attention_mask, cache, extra)
        y = self._linear_with_cache(q, k, v, attention_mask, cache)  # [B, H, T, D]
        return self._out(y), None

    def _qkv(self, x: torch.Tensor, position_embeddings):
        """Projections (+ RoPE) exactly as the base module computes them."""
        base, spec = self.base_attn, self.spec
        shape = (*x.shape[:-1], -1, self.head_dim)
        q = getattr(base, spec.q_proj)(x).view(shape).transpose(1, 2)  # [B, H, T, D]
        k = getattr(base, spec.k_proj)(x).view(shape).transpose(1, 2)  # [B, Hkv, T, D]
        v = getattr(base, spec.v_proj)(x).view(shape).transpose(1, 2)  # [B, Hkv, T, D]
        if spec.rope:
            if position_embeddings is None:
                raise ValueError(f"{spec.model_type} attention needs position_embeddings=(cos, sin) for RoPE")
            cos, sin = position_embeddings
            q, k = spec.model_function(base, "apply_rotary_pos_emb")(q, k, cos, sin)
        # q keeps the projection's [B, T, H, D] memory order through transpose and RoPE; the feature map and
        # the attention kernels each need it contiguous: one copy here instead of one in each
        return q.contiguous(), k, v

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        """y [B, H, T, D] -> [B, T, hidden] through the output projection (when the module owns one)."""
        y = rearrange(y, "b h t d -> b t (h d)")
        if self.spec.o_proj is None:
            return y
        o_proj = getattr(self.base_attn, self.spec.o_proj)
        return o_proj(y.to(o_proj.weight.dtype))

    def _features(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """GQA repeat, then the feature maps. Returns k, v [B, H, T, D] and fq, fk [B, H, T, F] in q's dtype
        (the maps compute in fp32 internally; the Triton kernels need one dtype for q, k, v, fq, fk)."""
        k, v = self._repeat_kv_heads(k, v)
        return k, v, self.q_map(q), self.k_map(k)

    def _repeat_kv_heads(self, k: torch.Tensor, v: torch.Tensor):
        """k, v [B, Hkv, T, D] -> [B, H, T, D]: each key/value head repeated for its query group."""
        n_rep = self.num_heads // self.num_kv_heads
        return _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)

    def _kw(self) -> dict:
        return dict(window=self.window, kind=self.kind, causal=self.causal, sink_tokens=self.sink_tokens, scale=self.scaling)

    def linearized(self, q, k, v, fq, fk, key_mask=None, *, return_map: bool = False):
        """:func:`linearized_attention` with this module's settings (see there)."""
        return linearized_attention(
            q, k, v, fq, fk, self.window_logit, key_mask, pure_linear=self.attention == "linear",
            impl=self.impl, return_map=return_map, **self._kw(),
        )

    def _triton_decode(self, x: torch.Tensor) -> bool:
        """Whether a cache filled now decodes with the Triton kernel (``decode_impl``, class docstring)."""
        if self.decode_impl not in DECODE_IMPLS:
            raise ValueError(f"decode_impl must be one of {DECODE_IMPLS}, got {self.decode_impl!r}")
        if self.decode_impl == "torch":
            return False
        if self.decode_impl == "triton":
            from lolcats_lab.kernels._utils import check_device

            check_device("q", x)  # CUDA, or CPU under TRITON_INTERPRET=1; otherwise a clear error
            return True
        if self.impl == "triton":
            return x.is_cuda
        from ..attention.dispatch import triton_supported

        return self.impl == "auto" and triton_supported(x, causal=True, key_mask=None)

    def _uses_one_op(self, q: torch.Tensor, key_mask) -> bool:
        """Whether this call runs one Triton autograd op for both Hedgehog maps and the attention: the hybrid
        forms through ``lolcats_lab.kernels.hedgehog_hybrid``, pure linear attention (no sinks) through the
        staged Hedgehog linear op (``lolcats_lab.kernels.hedgehog_linear``). Taken when both maps run their
        Triton kernel, the Triton attention is chosen for these inputs (as ``hybrid_attn`` / ``linear_attn``
        dispatch: impl "triton" on CUDA, or "auto" for causal fp16/bf16 CUDA inputs) and there is no padding
        (padded rows are reordered or masked first)."""
        if key_mask is not None or not self._has_one_op_form():
            return False
        if not (q.is_cuda and self.q_map._use_triton(q) and self.k_map._use_triton(q)):
            return False
        return self.impl == "triton" or (
            self.impl == "auto"
            and auto_uses_triton(q, causal=True, key_mask=None, window=self.window, sink_tokens=self.sink_tokens)
        )

    def _has_one_op_form(self) -> bool:
        """Whether this layer's math has a one-op Triton form: causal Hedgehog maps with a window (the
        hybrid), or pure linear attention without sinks (window 0 with sinks keeps exact sink terms: two ops)."""
        if not self.causal or self.feature_map_name != "hedgehog":
            return False
        return self.window > 0 or (self.attention == "linear" and self.sink_tokens == 0)

    def _one_op_hedgehog(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """y [B, H, T, D] from one op for the maps and the attention (``_uses_one_op``), equal to
        ``linearized(q, *self._features(q, k, v))``. Hybrid: each map's backward kernel adds its gradient into
        the attention's dq / dk (no separate adds). Linear: the map kernel writes phi once and the linear
        backward kernels take the maps' gradient from it; grouped-query keys and values are read in place
        (no repeat)."""
        if self.window == 0:
            from ..kernels import triton_hedgehog_linear_attn

            return triton_hedgehog_linear_attn(q, k, v, self.q_map.weight, self.k_map.weight, fuse_map=False)
        from ..kernels import triton_hedgehog_hybrid_attn

        return triton_hedgehog_hybrid_attn(
            q, *self._repeat_kv_heads(k, v), self.q_map.weight, self.k_map.weight, self.window_logit,
            window=self.window, kind=self.kind, sink_tokens=self.sink_tokens, scale=self.scaling,
        )  # fmt: skip

    def _linear_with_cache(self, q, k, v, attention_mask, cache) -> torch.Tensor:
        T = q.shape[2]
        if cache is None:
            key_mask = key_mask_from_attention_mask(attention_mask, T)
            if self._uses_one_op(q, key_mask):
                return self._one_op_hedgehog(q, k, v)
            k, v, fq, fk = self._features(q, k, v)
            return self.linearized(q, k, v, fq, fk, key_mask)
        k, v, fq, fk = self._features(q, k, v)
        if not self.causal:
            raise ValueError("a cache is only used for causal (decoder) models; call the model without past_key_values")
        layer = linearized_cache_layer(cache, self.layer_idx)
        if layer.uses_triton and q.is_cuda and torch.cuda.is_current_stream_capturing():
            # a decoding step being captured in a CUDA graph: the mask check below reads values on the host,
            # which capture forbids (eager attention builds a mask for every step); the eager warm-up steps
            # before a capture check the same kind of input
            key_mask = None
        else:
            key_mask = key_mask_from_attention_mask(attention_mask, T)
        if not layer.has_state:  # prefill
            y = self.linearized(q, k, v, fq, fk, key_mask)
            perm = compact_order(key_mask)
            n_real = torch.full((q.shape[0],), T, device=q.device) if key_mask is None else key_mask.sum(1)
            layer.prefill(
                gather_seq(k, perm), gather_seq(v, perm), gather_seq(fk, perm), n_real, T,
                window=self.window, kind=self.kind, sink_tokens=self.sink_tokens, use_triton=self._triton_decode(q),
            )
            return y
        if key_mask is not None:
            raise ValueError(
                "padding among new tokens after the prompt is not supported by the linearized cache; "
                "pad only the prompt (left or right)"
            )
        return layer.step(q, k, v, fq, fk, self.window_logit, window=self.window, kind=self.kind, sink_tokens=self.sink_tokens, scale=self.scaling)

    def _transfer(self, q, k, v, attention_mask, cache, extra):
        base, spec = self.base_attn, self.spec
        if cache is not None:  # as the base module does: the softmax path sees (and fills) the cache
            k_all, v_all = cache.update(k, v, self.layer_idx)
            if k_all.shape[2] != k.shape[2]:
                raise ValueError(
                    "transfer mode compares whole sequences and cannot decode with a filled cache; "
                    "use set_attention_mode(model, 'softmax' or 'linear') for generation"
                )
        if spec.pass_sliding_window:
            extra.setdefault("sliding_window", getattr(base, "sliding_window", getattr(base.config, "sliding_window", None)))
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        attn_fn = ALL_ATTENTION_FUNCTIONS.get_interface(
            base.config._attn_implementation, spec.model_function(base, "eager_attention_forward")
        )
        dropout = 0.0
        if self.training:  # Llama-family: attention_dropout (float); BERT: an nn.Dropout module
            p = getattr(base, "attention_dropout", None)
            dropout = p if p is not None else getattr(getattr(base, "dropout", None), "p", 0.0)
        y_soft, a_soft = attn_fn(base, q, k, v, attention_mask, dropout=dropout, scaling=self.scaling, **extra)
        y_soft_bhtd = rearrange(y_soft, "b t h d -> b h t d")
        out = y_soft.reshape(*y_soft.shape[:2], -1).contiguous()
        if spec.o_proj is not None:
            out = getattr(base, spec.o_proj)(out)

        T = q.shape[2]
        key_mask = key_mask_from_attention_mask(attention_mask, T)
        if self.capture_head is None and self._uses_one_op(q, key_mask):
            y_lin = self._one_op_hedgehog(q, k, v)  # [B, H, T, D]
        else:
            k_r, v_r, fq, fk = self._features(q, k, v)
            y_lin = self.linearized(q, k_r, v_r, fq, fk, key_mask)  # [B, H, T, D]
        err = (y_lin.float() - y_soft_bhtd.detach().float()).pow(2)  # [B, H, T, D]
        if key_mask is None:
            self.transfer_mse = err.mean(dim=(0, 2, 3))  # [H]
        else:
            w = key_mask[:, None, :, None].float()  # padding queries do not count
            self.transfer_mse = (err * w).sum(dim=(0, 2, 3)) / (w.sum() * err.shape[-1]).clamp_min(1)
        if self.capture_head is not None:
            self._capture(q, k_r, v_r, fq, fk, key_mask, a_soft)
        return out, a_soft

    def _capture(self, q, k, v, fq, fk, key_mask, a_soft):
        """Store one head's maps [B, T, T] (softmax, linearized), detached, for plots; rows of padding
        queries are zero."""
        h = self.capture_head
        if not 0 <= h < self.num_heads:
            raise ValueError(f"capture_head must be in [0, {self.num_heads}), got {h}")
        with torch.no_grad():
            if a_soft is None:  # attention implementation without weights (sdpa): recompute
                _, a_soft_h = softmax_attn(q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], causal=self.causal,
                                           key_mask=key_mask, scale=self.scaling, return_map=True)
            else:
                a_soft_h = a_soft[:, h : h + 1].float()
            _, a_lin_h = linearized_attention(
                *(x[:, h : h + 1] for x in (q, k, v, fq, fk)), self.window_logit[h : h + 1], key_mask,
                pure_linear=self.attention == "linear", return_map=True, **self._kw(),
            )
        maps = {"softmax": a_soft_h[:, 0].detach(), "linear": a_lin_h[:, 0].detach()}  # [B, T, T]
        if key_mask is not None:  # padding queries: zero rows (HF gives them arbitrary weights)
            maps = {n: a * key_mask[:, :, None] for n, a in maps.items()}
        self.captured_maps = {**maps, "head": h}
