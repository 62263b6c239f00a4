"""Checkpoints of only what linearization added: feature maps and window logits (later: LoRA weights).

A checkpoint directory holds ``linearized.safetensors`` (the wrappers' own parameters and buffers, named
as in ``model.state_dict()``, without any base-model tensor, plus LoRA adapter weights when the model has
them) and ``lolcats_config.json`` (base model name/path, model_type, layer/head counts, attention kind,
feature map, window, dims, LoRA rank/alpha/targets, lolcats-lab version, and ``weights_sha256``: the
sha256 of ``linearized.safetensors``).
Both are written to a temporary directory that is renamed into place. Loading checks the weights file against
its sha256 (checkpoints written before the field existed load without the check), rebuilds the wrappers on a
base model and refuses one whose shape does not match the checkpoint, saying what differs. A damaged checkpoint
(unparsable JSON, missing config keys, truncated or altered weights) raises a one-line ValueError naming the
file and the problem.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..io import sha256_file
from .convert import attention_modules, linearize, set_attention_mode

__all__ = ["save_linearized", "load_linearized", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "lolcats_config.json"
WEIGHTS_NAME = "linearized.safetensors"
FORMAT_VERSION = 1
# what must agree between a checkpoint and the base model it is loaded onto
_BASE_KEYS = ("model_type", "num_layers", "num_heads", "num_kv_heads", "head_dim")
# what load_linearized reads from the config
_REQUIRED_KEYS = ("format_version", "base_model", *_BASE_KEYS, "attention", "feature_map", "window", "sink_tokens",
                  "feature_map_kwargs")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lolcats-lab")
    except Exception:  # noqa: BLE001 - running from a source tree without install metadata
        return "unknown"


def _added_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the model's state dict that linearization added (not under ``base_attn``), the LoRA
    adapters (keys with ``lora_``), and any other trainable tensor. Keys as in ``model.state_dict()``."""
    wrappers = {id(m) for m in attention_modules(model)}  # computed once: the comprehension below is O(modules)
    wrapper_prefixes = [n + "." for n, m in model.named_modules() if id(m) in wrappers]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    out = {}
    for key, t in model.state_dict().items():
        in_wrapper = any(key.startswith(p) for p in wrapper_prefixes) and ".base_attn." not in key
        if in_wrapper or "lora_" in key or key in trainable:
            out[key] = t.detach().contiguous().cpu()
    return out


def save_linearized(model: nn.Module, directory: str | os.PathLike, *, base_model: str | None = None) -> Path:
    """Write the linearization of ``model`` (feature maps, window logits, trainable extras) to ``directory``.

    base_model: how to name the base model in the config; default ``model.lolcats_base_name`` (set by
    ``load_model``) or ``model.config._name_or_path``. Returns the directory path. An existing checkpoint
    in ``directory`` is replaced as a whole.
    """
    from safetensors.torch import save_file

    if not attention_modules(model) or not hasattr(model, "lolcats_config"):
        raise ValueError("model is not linearized; call lolcats_lab.linearize(model, ...) before save_linearized")
    target = Path(directory)
    base = base_model or getattr(model, "lolcats_base_name", None) or getattr(model.config, "_name_or_path", "")
    config = {
        "format_version": FORMAT_VERSION,
        "lolcats_lab_version": _version(),
        "base_model": str(base),
        **model.lolcats_config,
        "lora": getattr(model, "lolcats_lora", None),  # {"rank", "alpha", "targets"} once LoRA is added
    }
    state = _added_state(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        config["weights_sha256"] = sha256_file(tmp / WEIGHTS_NAME)  # of the bytes as written, checked on load
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
        os.chmod(tmp, 0o755)
        if target.exists():  # replace: move the old one aside first, so a failure leaves one complete copy
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_linearized_config(directory: str | os.PathLike) -> dict:
    """The JSON config of a checkpoint written by :func:`save_linearized`.

    Raises FileNotFoundError when it is missing, ValueError naming the file when it is not a JSON object
    (e.g. truncated)."""
    path = Path(directory) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; is {directory} a directory written by save_linearized?")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(
            f"{path} is not valid JSON ({_one_line(err)}); the checkpoint is corrupted or truncated: "
            "re-save it with save_linearized or re-run lolcats-lab linearize"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not an object; is it a lolcats checkpoint?")
    return config


def _check_config(config: dict, path: Path) -> None:
    """Refuse a config of another format version or without the keys load_linearized reads."""
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format_version {config.get('format_version')!r} is not {FORMAT_VERSION}")
    missing = [k for k in _REQUIRED_KEYS if k not in config]
    if missing:
        raise ValueError(
            f"{path} lacks required keys {missing}; the checkpoint is damaged or incomplete: "
            "re-save it with save_linearized or re-run lolcats-lab linearize"
        )


def _load_weights(path: Path, sha256: str | None) -> dict[str, torch.Tensor]:
    """Read the weights file, first checking it against the config's sha256 (when the config has one)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; the checkpoint is incomplete")
    if sha256 is not None and sha256_file(path) != sha256:
        raise ValueError(
            f"{path} is corrupted or truncated (sha256 mismatch with weights_sha256 in {CONFIG_NAME}); "
            "re-save it with save_linearized or re-run lolcats-lab linearize"
        )
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises SafetensorError and others for damaged files
        raise ValueError(
            f"{path} is unreadable ({_one_line(err)}); the file is corrupted or truncated: "
            "re-save it with save_linearized or re-run lolcats-lab linearize"
        ) from err


def _base_description(model: nn.Module) -> dict:
    """The base-model facts a checkpoint must match, read from a (not yet linearized) model."""
    from .registry import find_attention_modules, get_arch_spec

    spec = get_arch_spec(model.config)
    mods = find_attention_modules(model, spec)
    return {
        "model_type": model.config.model_type,
        "num_layers": len(mods),
        "num_heads": spec.num_heads(model.config),
        "num_kv_heads": spec.num_kv_heads(model.config),
        "head_dim": spec.head_dim(mods[0][1]),
    }


def _add_lora(model: nn.Module, lora: dict) -> None:
    """Re-create the LoRA adapters a checkpoint was saved with (rank, alpha, target module names), so their
    weights can be loaded; the same injection as ``lolcats_lab.train.lora.add_lora``."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], target_modules=lora["targets"]), model)
    for name, p in model.named_parameters():  # as after add_lora: the adapters train, everything else is frozen
        p.requires_grad_("lora_" in name)
    model.lolcats_lora = dict(lora)


def load_linearized(
    directory: str | os.PathLike, base: nn.Module | str | None = None, *, mode: str = "linear", **load_kwargs
) -> nn.Module:
    """Rebuild a linearized model from a checkpoint.

    Args:
        directory: written by :func:`save_linearized`.
        base: the base model (not linearized), or a name/path for ``load_model``; default: the base
            model named in the checkpoint.
        mode: attention mode to leave the model in.
        load_kwargs: passed to ``load_model`` when ``base`` is a name (e.g. ``dtype``).

    Returns the model (the tokenizer, when ``base`` was a name, is on ``model.lolcats_tokenizer``).
    Raises ValueError naming every field where the checkpoint and the base model differ, and ValueError
    naming the file when the checkpoint is damaged (config not JSON or missing keys; weights truncated,
    unreadable or not matching ``weights_sha256``), before any base model is loaded.
    """
    config = read_linearized_config(directory)
    _check_config(config, Path(directory) / CONFIG_NAME)
    # verify and read the weights first: a damaged checkpoint fails fast, before a base model is loaded
    state = _load_weights(Path(directory) / WEIGHTS_NAME, config.get("weights_sha256"))
    if base is None:
        base = config["base_model"]
    if isinstance(base, (str, os.PathLike)):
        from .loading import load_model

        model, tok = load_model(base, **load_kwargs)
        model.lolcats_tokenizer = tok
    else:
        model = base
    if attention_modules(model):
        raise ValueError("base must be the original model, not an already linearized one")
    have = _base_description(model)
    diffs = [f"{k}: checkpoint {config.get(k)!r} vs base {have[k]!r}" for k in _BASE_KEYS if config.get(k) != have[k]]
    if diffs:
        raise ValueError(
            f"checkpoint {directory} does not match this base model (checkpoint base: {config['base_model']!r}); "
            "differences: " + "; ".join(diffs)
        )
    linearize(
        model, attention=config["attention"], feature_map=config["feature_map"], window=config["window"],
        feature_dim=None, sink_tokens=config["sink_tokens"], feature_map_kwargs=config["feature_map_kwargs"],
        mode=mode,
    )
    if config.get("lora"):
        _add_lora(model, config["lora"])
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(_added_state(model)) - set(state))
    for what, keys in (("tensors this model does not have", unexpected), ("no tensors for", missing)):
        if keys:
            raise ValueError(f"checkpoint has {what}: {keys[:5]}{' ...' if len(keys) > 5 else ''}")
    for key, t in state.items():
        if own[key].shape != t.shape:
            raise ValueError(f"{key}: checkpoint shape {tuple(t.shape)} vs model {tuple(own[key].shape)}")
    model.load_state_dict(state, strict=False)
    set_attention_mode(model, mode)
    model.lolcats_base_name = config["base_model"]
    return model
