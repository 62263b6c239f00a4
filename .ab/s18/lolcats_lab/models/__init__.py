"""Hugging Face models: loading (embedded defaults, local dirs, hub ids), conversion to linearized
attention, generation cache, and checkpoints of only what conversion added."""

from .cache import LinearizedCacheLayer
from .checkpoint import load_linearized, read_linearized_config, save_linearized
from .convert import (
    attention_modules,
    captured_maps,
    collect_transfer_mse,
    linearize,
    set_attention_mode,
    trainable_parameters,
)
from .linearized_attention import ATTENTION_KINDS, MODES, LinearizedAttention
from .loading import EMBEDDED_MODELS, load_model, model_cache_dir
from .registry import ARCHITECTURES, ArchSpec, get_arch_spec, register_architecture

__all__ = [
    "ARCHITECTURES",
    "ATTENTION_KINDS",
    "ArchSpec",
    "EMBEDDED_MODELS",
    "LinearizedAttention",
    "LinearizedCacheLayer",
    "MODES",
    "attention_modules",
    "captured_maps",
    "collect_transfer_mse",
    "get_arch_spec",
    "linearize",
    "load_linearized",
    "read_linearized_config",
    "save_linearized",
    "load_model",
    "model_cache_dir",
    "register_architecture",
    "set_attention_mode",
    "trainable_parameters",
]
