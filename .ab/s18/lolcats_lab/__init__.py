"""lolcats-lab: learn and do attention linearization (LoLCATs, Hedgehog).

    from lolcats_lab import load_model, linearize, set_attention_mode, save_linearized, load_linearized

Entry points are imported lazily, so ``import lolcats_lab.attention`` stays light (no transformers).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "lolcats_lab.models",
    "linearize": "lolcats_lab.models",
    "set_attention_mode": "lolcats_lab.models",
    "save_linearized": "lolcats_lab.models",
    "load_linearized": "lolcats_lab.models",
    "attention_modules": "lolcats_lab.models",
    "collect_transfer_mse": "lolcats_lab.models",
    "captured_maps": "lolcats_lab.models",
    "trainable_parameters": "lolcats_lab.models",
    "transfer": "lolcats_lab.train",
    "finetune_lora": "lolcats_lab.train",
    "perplexity": "lolcats_lab.evaluate",
    "run_linearize": "lolcats_lab.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lolcats_lab' has no attribute {name!r}")
