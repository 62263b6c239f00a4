"""Generation cache for linearized attention: constant memory in the generated length.

``model.generate`` builds a Hugging Face ``DynamicCache``. When a :class:`LinearizedAttention` in linear
mode meets one, it swaps its layer's slot for a :class:`LinearizedCacheLayer` (an empty slot only: a slot
already holding softmax keys/values is refused). That layer holds the state of SPEC.md "Decoding must
equal training": the linear state S, z over keys that left the window, the raw keys/values of any sink
tokens, and the raw keys/values of the window (sw: the last w tokens; tk: the current partial block and
the previous full block). Two implementations, chosen at prefill (``LinearizedAttention.decode_impl``):

* Triton (CUDA, or CPU under ``TRITON_INTERPRET=1``): one
  :class:`~lolcats_lab.kernels.decode.RingHybridCache` for the whole batch, advanced in place by one
  kernel launch per token. Each row's position sits in device memory ([B]), so rows of a left-padded batch
  with different real-token counts share the cache, and a step never synchronises with the host (it can
  be captured in a CUDA graph; see :func:`advance_seen`).
* PyTorch (the reference; CPU, fp32 under impl="auto", impl="chunk"): per group of rows, a
  :class:`~lolcats_lab.attention.hybrid.HybridCache`. Rows are grouped by how many real tokens they hold:
  with left padding, row b's next token sits at real position ``n_real[b]``, and the tk block rule needs
  that position, so rows with different counts keep separate caches (one group when nothing is padded).

The layer reports ``get_seq_length()`` as the padded length Hugging Face counts, so position ids and
masks line up with the softmax model's.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from ..attention.hybrid_decode import HybridCache, hybrid_decode_step, prefill_hybrid_cache

__all__ = ["LinearizedCacheLayer", "advance_seen", "linearized_cache_layer"]


class LinearizedCacheLayer(DynamicLayer):
    """One layer's decoding state for linearized attention (a ``DynamicLayer`` for softmax mode too).

    Until linear-mode attention fills it, it behaves as a plain ``DynamicLayer`` (softmax keys/values).
    Filled, it holds either ``ring`` (a ``RingHybridCache``, Triton decoding) or ``groups`` (a list of
    (rows [b] long, HybridCache), PyTorch decoding); ``seen`` is the padded token count (a host int).
    """

    is_croppable = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.groups: list[tuple[torch.Tensor, HybridCache]] | None = None
        self.ring = None  # lolcats_lab.kernels.decode.RingHybridCache when decoding with Triton
        self.seen = 0
        self.batch_size = 0

    # --- Hugging Face cache protocol ---------------------------------------------------------------
    def get_seq_length(self) -> int:
        return self.seen if self.has_state else super().get_seq_length()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def update(self, key_states, value_states, *args, **kwargs):
        if self.groups is not None:
            raise ValueError(
                "this cache layer holds linearized-attention state; softmax attention cannot continue it. "
                "Generate with a fresh cache after set_attention_mode(model, 'softmax')."
            )
        return super().update(key_states, value_states, *args, **kwargs)

    def reset(self) -> None:
        self.groups, self.ring, self.seen, self.batch_size = None, None, 0, 0
        super().reset()

    def _no_batch_edit(self, what: str):
        if self.has_state:
            raise NotImplementedError(
                f"{what} is not supported for linearized-attention caches (beam search / contrastive search); "
                "use greedy decoding or sampling"
            )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._no_batch_edit("reorder_cache")
        super().reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._no_batch_edit("batch_repeat_interleave")
        super().batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._no_batch_edit("batch_select_indices")
        super().batch_select_indices(indices)

    def crop(self, tokens_to_remove: int) -> None:
        self._no_batch_edit("crop")
        super().crop(tokens_to_remove)

    # --- linearized state ----------------------------------------------------------------------------
    @property
    def has_state(self) -> bool:
        return self.groups is not None or self.ring is not None

    @property
    def uses_triton(self) -> bool:
        """Whether this layer decodes with the Triton ring-buffer kernel (set at prefill)."""
        return self.ring is not None

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor of the linearized state (S, z, window and sink keys/values, positions)."""
        if self.ring is not None:
            return list(self.ring.tensors())
        return [t for _, c in self.groups or () for t in (c.S, c.z, c.k_win, c.v_win, c.fk_win, c.k_sink, c.v_sink)]

    def state_numel(self) -> int:
        """Number of cached values (S, z, window and sink keys/values): constant once the window is full."""
        return sum(t.numel() for t in self.state_tensors())

    def prefill(self, k, v, fk, n_real: torch.Tensor, total_len: int, *, window: int, kind: str, sink_tokens: int,
                use_triton: bool = False):  # fmt: skip
        """Fill from a prompt in compact order (each row's real tokens first).

        k [B, H, T, D], v [B, H, T, Dv], fk [B, H, T, F] (heads already repeated for GQA);
        n_real [B] real-token count per row; total_len the padded length T Hugging Face counts.
        use_triton: keep one ``RingHybridCache`` for the whole batch and decode with the Triton kernel.
        """
        k, v, fk = k.detach(), v.detach(), fk.detach()
        if use_triton:
            from lolcats_lab.kernels.decode import RingHybridCache

            self.ring = RingHybridCache.from_prompt(
                k, v, fk, window=window, kind=kind, sink_tokens=sink_tokens, lengths=n_real
            )
            self.seen, self.batch_size = total_len, k.shape[0]
            return
        groups = []
        for n in torch.unique(n_real).tolist():
            rows = (n_real == n).nonzero()[:, 0]  # [b]
            cache = prefill_hybrid_cache(
                k[rows, :, :n], v[rows, :, :n], fk[rows, :, :n], window=window, kind=kind, sink_tokens=sink_tokens
            )
            groups.append((rows, cache))
        self.groups, self.seen, self.batch_size = groups, total_len, k.shape[0]

    def step(self, q, k, v, fq, fk, window_logit, *, window: int, kind: str, sink_tokens: int, scale: float):
        """Decode new tokens (all real) one at a time. q, k [B, H, t, D], v [B, H, t, Dv], fq, fk [B, H, t, F].

        Returns y [B, H, t, Dv] (v's dtype); advances every group's cache by t tokens.
        """
        if q.shape[0] != self.batch_size:
            raise ValueError(f"cache was filled for batch size {self.batch_size}, got {q.shape[0]} new rows")
        if self.ring is not None:
            return self._step_triton(q, k, v, fq, fk, window_logit, window=window, kind=kind, sink_tokens=sink_tokens,
                                     scale=scale)  # fmt: skip
        B, H, t, _ = q.shape
        y = torch.zeros(B, H, t, v.shape[-1], dtype=v.dtype, device=v.device)  # [B, H, t, Dv]
        k, v, fk = k.detach(), v.detach(), fk.detach()
        new_groups = []
        for rows, cache in self.groups:
            for i in range(t):
                s = slice(i, i + 1)
                y_i, cache = hybrid_decode_step(
                    q[rows, :, s], k[rows, :, s], v[rows, :, s], fq[rows, :, s], fk[rows, :, s], window_logit,
                    cache, window=window, kind=kind, sink_tokens=sink_tokens, scale=scale,
                )
                y[rows, :, i] = y_i[:, :, 0]
            new_groups.append((rows, cache))
        self.groups = new_groups
        self.seen += t
        return y

    def _step_triton(self, q, k, v, fq, fk, window_logit, *, window: int, kind: str, sink_tokens: int, scale: float):
        """The Triton step: one launch per new token for all rows, in place, no host synchronisation."""
        from lolcats_lab.kernels import triton_hybrid_decode_step

        ring = self.ring
        if (ring.window, ring.kind, ring.sink_tokens) != (window, kind, sink_tokens):
            raise ValueError(
                f"cache was filled with window={ring.window}, kind={ring.kind!r}, sink_tokens={ring.sink_tokens}; "
                f"this step asks for window={window}, kind={kind!r}, sink_tokens={sink_tokens}"
            )
        ys = []
        for i in range(q.shape[2]):
            s = slice(i, i + 1)
            y_i, _ = triton_hybrid_decode_step(
                q[:, :, s], k[:, :, s].detach(), v[:, :, s].detach(), fq[:, :, s], fk[:, :, s].detach(),
                window_logit.detach(), ring, scale=scale,
            )  # fmt: skip
            ys.append(y_i)  # [B, H, 1, Dv]
        self.seen += q.shape[2]
        return ys[0] if len(ys) == 1 else torch.cat(ys, 2)  # [B, H, t, Dv]


def advance_seen(cache: Cache, steps: int) -> None:
    """Add ``steps`` tokens to the host-side length (``seen``) of every linearized layer of ``cache``.

    For CUDA-graph decoding: replaying a captured step advances the device state (the Triton cache's
    positions, S, z and window) but not ``seen``, a Python int that only Hugging Face's
    ``get_seq_length`` reads (and nothing inside a captured linear-mode step). Call this after ``steps``
    replays so the cache reports its true length again."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    for layer in getattr(cache, "layers", ()):
        if isinstance(layer, LinearizedCacheLayer) and layer.has_state:
            layer.seen += steps


def linearized_cache_layer(cache: Cache, layer_idx: int) -> LinearizedCacheLayer:
    """The :class:`LinearizedCacheLayer` in slot ``layer_idx`` of a Hugging Face cache, installing one in an
    empty slot. Raises when the slot already holds softmax keys/values."""
    if not isinstance(cache, Cache) or not hasattr(cache, "layers"):
        raise ValueError(
            f"past_key_values must be a transformers Cache (e.g. DynamicCache) for linearized decoding, "
            f"got {type(cache).__name__}"
        )
    layers = cache.layers
    while len(layers) <= layer_idx:
        if getattr(cache, "layer_class_to_replicate", None) is None:
            raise ValueError(f"cache has {len(layers)} layers, no slot for layer {layer_idx}")
        layers.append(LinearizedCacheLayer())
    layer = layers[layer_idx]
    if not isinstance(layer, LinearizedCacheLayer):
        if layer.is_initialized and layer.get_seq_length() > 0:
            raise ValueError(
                f"cache layer {layer_idx} already holds {layer.get_seq_length()} softmax keys/values (filled in "
                "softmax mode); linear-mode decoding needs a fresh cache"
            )
        layer = LinearizedCacheLayer()
        layers[layer_idx] = layer
    return layer
