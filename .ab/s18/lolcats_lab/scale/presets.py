"""8B-class model shapes and the LoLCATs paper recipe, as config objects.

Two things live here:

* :class:`ModelShape`: the published architecture numbers of Llama-3-8B, Mistral-7B (v0.1) and Qwen2-7B
  (layers, hidden size, q / kv heads, head dim, vocabulary, RoPE base). :func:`model_config` turns a shape
  into a Hugging Face config, either full size (for the real checkpoints, or a meta-device model to count
  parameters) or at a tiny width for CPU tests: ``width_scale`` divides the hidden and MLP sizes but keeps
  the layer count, the head counts, the GQA ratio and head dim 128, so the attention modules (the only
  part linearization touches) have exactly the 8B shapes. A model built from a scaled config has RANDOM
  weights: it measures shapes, memory and speed, never quality.
* :class:`Recipe`: the paper's conversion recipe (Zhang et al. 2024, "LoLCATs", Llama 3 8B): hybrid
  terraced window of 64 + Hedgehog maps with 64 -> 128 features, attention transfer with the MSE loss,
  then LoRA rank 8 on q/k/v/o, sequences of 1024 tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

__all__ = [
    "ModelShape", "MODEL_SHAPES", "Recipe", "PAPER_RECIPE", "model_config", "llama3_8b_config",
    "mistral_7b_config", "qwen2_7b_config", "build_random_model", "count_parameters",
]


@dataclass(frozen=True)
class ModelShape:
    """The architecture numbers of one model family (from its published ``config.json``).

    Args:
        name: short name used by the presets (``"llama3-8b"``).
        hub_id: the checkpoint's Hugging Face id (needs access and network; not used offline).
        model_type: ``config.model_type`` ("llama", "mistral", "qwen2"); must be in the models registry.
        num_layers, hidden_size, intermediate_size, num_heads, num_kv_heads, head_dim, vocab_size: sizes.
        rope_theta: RoPE base.
        rms_norm_eps: RMSNorm epsilon.
        max_position_embeddings: the config's context length.
        extra: further config fields as (name, value) pairs (e.g. Mistral's sliding window).
    """

    name: str
    hub_id: str
    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    extra: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")

    @property
    def gqa_ratio(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads


MODEL_SHAPES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        # meta-llama/Meta-Llama-3-8B config.json: 8.03B parameters, untied embeddings
        ModelShape("llama3-8b", "meta-llama/Meta-Llama-3-8B", "llama", num_layers=32, hidden_size=4096,
                   intermediate_size=14336, num_heads=32, num_kv_heads=8, head_dim=128, vocab_size=128256,
                   rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=8192),
        # mistralai/Mistral-7B-v0.1 config.json: 7.24B parameters, sliding window 4096
        ModelShape("mistral-7b", "mistralai/Mistral-7B-v0.1", "mistral", num_layers=32, hidden_size=4096,
                   intermediate_size=14336, num_heads=32, num_kv_heads=8, head_dim=128, vocab_size=32000,
                   rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=32768,
                   extra=(("sliding_window", 4096),)),
        # Qwen/Qwen2-7B config.json: 7.62B parameters, biases on q/k/v, 28 heads / 4 kv heads
        ModelShape("qwen2-7b", "Qwen/Qwen2-7B", "qwen2", num_layers=28, hidden_size=3584,
                   intermediate_size=18944, num_heads=28, num_kv_heads=4, head_dim=128, vocab_size=152064,
                   rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=131072),
    )
}


def _shape(shape: ModelShape | str) -> ModelShape:
    if isinstance(shape, ModelShape):
        return shape
    if shape not in MODEL_SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; choose one of {sorted(MODEL_SHAPES)}")
    return MODEL_SHAPES[shape]


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def model_config(
    shape: ModelShape | str,
    *,
    width_scale: int = 1,
    num_layers: int | None = None,
    vocab_size: int | None = None,
    attn_implementation: str = "eager",
):
    """A Hugging Face config with ``shape``'s architecture.

    Args:
        shape: a :class:`ModelShape` or its name (``"llama3-8b"``, ``"mistral-7b"``, ``"qwen2-7b"``).
        width_scale: divides ``hidden_size`` and ``intermediate_size`` (1 = full size). Head counts, the GQA
            ratio and head dim stay, so q_proj maps the narrow hidden state to ``num_heads * head_dim``
            (4096 for Llama-3-8B) as in the real model. ``hidden_size / width_scale`` must stay a whole
            number; 64 gives Llama-3-8B a hidden size of 64 (about 30M parameters with the full vocabulary).
        num_layers: override the layer count (default: the model's, e.g. 32).
        vocab_size: override the vocabulary (default: the model's; smaller keeps CPU logits cheap).
        attn_implementation: "eager" (default, maps can be read) or "sdpa".

    Returns:
        ``LlamaConfig`` / ``MistralConfig`` / ``Qwen2Config`` with ``architectures`` set to the causal LM.
    """
    from transformers import AutoConfig

    s = _shape(shape)
    _check_positive_int("width_scale", width_scale)
    if s.hidden_size % width_scale or s.intermediate_size % width_scale:
        raise ValueError(
            f"width_scale={width_scale} must divide hidden_size={s.hidden_size} and "
            f"intermediate_size={s.intermediate_size} of {s.name}; try a power of two such as 64"
        )
    for name, value in (("num_layers", num_layers), ("vocab_size", vocab_size)):
        if value is not None:
            _check_positive_int(name, value)
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}[s.model_type]
    cfg = AutoConfig.for_model(
        s.model_type,
        hidden_size=s.hidden_size // width_scale,
        intermediate_size=s.intermediate_size // width_scale,
        num_hidden_layers=num_layers or s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_kv_heads,
        head_dim=s.head_dim,
        vocab_size=vocab_size or s.vocab_size,
        rope_theta=s.rope_theta,
        rms_norm_eps=s.rms_norm_eps,
        max_position_embeddings=s.max_position_embeddings,
        tie_word_embeddings=False,
        architectures=[arch],
        **dict(s.extra),
    )
    cfg._attn_implementation = attn_implementation
    return cfg


def llama3_8b_config(width_scale: int = 1, **kwargs):
    """Llama-3-8B's config (``width_scale > 1``: 8B-shaped attention at a tiny width; see :func:`model_config`)."""
    return model_config("llama3-8b", width_scale=width_scale, **kwargs)


def mistral_7b_config(width_scale: int = 1, **kwargs):
    """Mistral-7B-v0.1's config (``width_scale > 1``: tiny width, same attention shapes)."""
    return model_config("mistral-7b", width_scale=width_scale, **kwargs)


def qwen2_7b_config(width_scale: int = 1, **kwargs):
    """Qwen2-7B's config (``width_scale > 1``: tiny width, same attention shapes)."""
    return model_config("qwen2-7b", width_scale=width_scale, **kwargs)


def build_random_model(config, *, dtype: torch.dtype = torch.float32, seed: int = 0, device="cpu") -> nn.Module:
    """A causal LM with RANDOM weights for ``config`` (seeded), in eval mode, for shape/memory/speed work.

    Use ``device="meta"`` to build a full-size 8B model without allocating its weights (to count parameters
    or estimate memory). The model records ``lolcats_base_name = "random:<model_type>"``.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=config._attn_implementation)
    model.eval()
    model.lolcats_base_name = f"random:{config.model_type}"
    return model


def count_parameters(config) -> int:
    """Parameter count of the causal LM for ``config``, computed on the meta device (no memory used)."""
    model = build_random_model(config, device="meta")
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class Recipe:
    """A conversion recipe: what ``linearize``, attention transfer and LoRA get.

    Args:
        attention: linearized attention kind ("hybrid-tk": terraced window + linear).
        window: window size in tokens.
        feature_map: feature map name.
        feature_dim: Hedgehog features per softmax half (64 -> F = 128 features).
        transfer_loss: "mse" (the only loss implemented; the paper's default for Llama 3 8B).
        mse_scale: scale of the per-layer MSE in the transfer loss.
        transfer_lr: stage 1 learning rate.
        lora_rank, lora_alpha, lora_targets: stage 2 adapters.
        lora_lr: stage 2 learning rate.
        seq_len: training sequence length in tokens.
        batch_size: sequences per optimizer step.
        transfer_tokens, lora_tokens: training budget per stage in tokens.
    """

    attention: str = "hybrid-tk"  # paper: sliding window + linear, terraced window (Sec. 3.1)
    window: int = 64  # paper: window of 64 tokens
    feature_map: str = "hedgehog"
    feature_dim: int = 64  # paper: Hedgehog 64 -> 128 features (softmax over +/- halves)
    transfer_loss: str = "mse"  # paper: attention-output MSE for Llama 3 8B
    mse_scale: float = 1000.0  # the original code scales the MSE by 1000
    transfer_lr: float = 1e-2  # the original code's attention-transfer learning rate
    lora_rank: int = 8  # paper: LoRA r = 8
    lora_alpha: float = 16.0  # paper: alpha = 16
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # paper: q/k/v/o
    lora_lr: float = 1e-4  # the original code's finetuning learning rate
    seq_len: int = 1024  # paper: 1024-token sequences
    batch_size: int = 8  # 8 sequences of 1024 tokens per optimizer step
    transfer_tokens: int = 20_000_000  # paper: ~20M tokens of attention transfer
    lora_tokens: int = 20_000_000  # paper: ~20M tokens of LoRA finetuning

    def __post_init__(self):
        if self.transfer_loss != "mse":
            raise ValueError(f"transfer_loss must be 'mse' (the only loss implemented), got {self.transfer_loss!r}")
        for name in ("window", "feature_dim", "lora_rank", "seq_len", "batch_size", "transfer_tokens", "lora_tokens"):
            _check_positive_int(name, getattr(self, name))
        needed = {"hybrid-tk": 2 * self.window, "hybrid-sw": self.window}.get(self.attention, 0)
        if self.seq_len <= needed:
            raise ValueError(
                f"seq_len={self.seq_len} is too short for {self.attention} with window={self.window}: no key would "
                f"be linear; use seq_len > {needed}"
            )

    @property
    def transfer_steps(self) -> int:
        """Optimizer steps that spend ``transfer_tokens`` at ``batch_size`` x ``seq_len``."""
        return math.ceil(self.transfer_tokens / (self.batch_size * self.seq_len))

    @property
    def lora_steps(self) -> int:
        return math.ceil(self.lora_tokens / (self.batch_size * self.seq_len))

    def shrunk(self, **changes) -> "Recipe":
        """A copy with some fields changed (e.g. the CI sizes); validated like the original."""
        return replace(self, **changes)

    def linearize_kwargs(self) -> dict:
        """Keyword arguments for :func:`lolcats_lab.models.linearize`."""
        return dict(attention=self.attention, feature_map=self.feature_map, window=self.window, feature_dim=self.feature_dim)

    def transfer_config(self, steps: int | None = None, **overrides):
        """A :class:`lolcats_lab.train.TransferConfig` for stage 1 (``overrides`` win, e.g. ``batch_size=1``)."""
        from ..train import TransferConfig

        fields = dict(steps=steps or self.transfer_steps, lr=self.transfer_lr, batch_size=self.batch_size,
                      mse_scale=self.mse_scale)
        return TransferConfig(**{**fields, **overrides})

    def lora_settings(self, steps: int | None = None, **overrides):
        """A :class:`lolcats_lab.train.LoraSettings` for stage 2 (``overrides`` win)."""
        from ..train import LoraSettings

        fields = dict(steps=steps or self.lora_steps, lr=self.lora_lr, rank=self.lora_rank, alpha=self.lora_alpha,
                      targets=list(self.lora_targets), batch_size=self.batch_size)
        return LoraSettings(**{**fields, **overrides})


PAPER_RECIPE = Recipe()
