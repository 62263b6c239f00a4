"""Architecture table: where each supported model keeps its attention and how to compute q, k, v and o.

One :class:`ArchSpec` per ``config.model_type``. Adding an architecture whose attention module follows the
Llama pattern (q/k/v/o projections, optional RoPE through ``position_embeddings``, the model's own
``eager_attention_forward`` for softmax) is one entry in :data:`ARCHITECTURES`.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Callable

from torch import nn

__all__ = ["ArchSpec", "ARCHITECTURES", "get_arch_spec", "find_attention_modules", "register_architecture"]


@dataclass(frozen=True)
class ArchSpec:
    """How to find and drive one architecture's self-attention modules.

    module_pattern: regex matched (``re.search``) against full module names from ``named_modules()``.
    q_proj, k_proj, v_proj: attribute names of the projections on the attention module.
    o_proj: attribute name of the output projection, or None when it lives outside the wrapped module
        (BERT: ``BertSelfOutput.dense``, applied by the parent module together with the residual).
    causal: causal (decoder) or bidirectional (encoder) attention.
    rope: q and k are rotated with ``position_embeddings=(cos, sin)`` by the model's ``apply_rotary_pos_emb``.
    head_dim_attr: attribute of the attention module holding the head dim.
    pass_sliding_window: forward the module's sliding window to the attention function (Mistral, Qwen2).
    """

    model_type: str
    module_pattern: str
    q_proj: str
    k_proj: str
    v_proj: str
    o_proj: str | None
    causal: bool
    rope: bool
    head_dim_attr: str = "head_dim"
    pass_sliding_window: bool = False
    check_config: Callable | None = None

    def num_heads(self, config) -> int:
        return config.num_attention_heads

    def num_kv_heads(self, config) -> int:
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads

    def head_dim(self, attn: nn.Module) -> int:
        return getattr(attn, self.head_dim_attr)

    def model_function(self, attn: nn.Module, name: str) -> Callable:
        """A function of the module's own modeling file (``eager_attention_forward``, ``apply_rotary_pos_emb``),
        so the softmax path runs exactly the operations of the unmodified model."""
        fn = getattr(sys.modules[type(attn).__module__], name, None)
        if fn is None:
            raise ValueError(
                f"{type(attn).__name__}'s module {type(attn).__module__} has no {name}; the registry entry for "
                f"model_type={self.model_type!r} does not fit this transformers version"
            )
        return fn


def _check_bert(config) -> None:
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise ValueError(
            "only BERT encoders (bidirectional self-attention) are supported; got a config with "
            "is_decoder/add_cross_attention set"
        )


def _llama_like(model_type: str, sliding: bool = False) -> ArchSpec:
    return ArchSpec(
        model_type=model_type,
        module_pattern=r"(^|\.)layers\.\d+\.self_attn$",
        q_proj="q_proj",
        k_proj="k_proj",
        v_proj="v_proj",
        o_proj="o_proj",
        causal=True,
        rope=True,
        pass_sliding_window=sliding,
    )


ARCHITECTURES: dict[str, ArchSpec] = {}


def register_architecture(spec: ArchSpec) -> ArchSpec:
    """Add an architecture to the table (refuses a model_type that is already there)."""
    if spec.model_type in ARCHITECTURES:
        raise ValueError(f"architecture {spec.model_type!r} is already registered")
    ARCHITECTURES[spec.model_type] = spec
    return spec


register_architecture(_llama_like("llama"))
register_architecture(_llama_like("mistral", sliding=True))
register_architecture(_llama_like("qwen2", sliding=True))
register_architecture(
    ArchSpec(
        model_type="bert",
        module_pattern=r"(^|\.)layer\.\d+\.attention\.self$",
        q_proj="query",
        k_proj="key",
        v_proj="value",
        o_proj=None,
        causal=False,
        rope=False,
        head_dim_attr="attention_head_size",
        check_config=_check_bert,
    )
)


def get_arch_spec(config) -> ArchSpec:
    """The registry entry for ``config.model_type``; ValueError listing the supported types otherwise."""
    model_type = getattr(config, "model_type", None)
    spec = ARCHITECTURES.get(model_type)
    if spec is None:
        raise ValueError(
            f"model_type {model_type!r} is not supported; supported: {sorted(ARCHITECTURES)}. "
            "Add an ArchSpec with lolcats_lab.models.registry.register_architecture to support it."
        )
    if spec.check_config is not None:
        spec.check_config(config)
    return spec


def find_attention_modules(model: nn.Module, spec: ArchSpec) -> list[tuple[str, nn.Module]]:
    """(name, module) of every attention module the spec matches, in model order. Raises if none match."""
    pattern = re.compile(spec.module_pattern)
    found = [(n, m) for n, m in model.named_modules() if pattern.search(n)]
    if not found:
        raise ValueError(
            f"no module of this {type(model).__name__} matches the {spec.model_type!r} attention pattern "
            f"{spec.module_pattern!r}; is this a {spec.model_type} model?"
        )
    return found
