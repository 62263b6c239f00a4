"""Memory estimate for the two training stages, and a refusal (naming the flag that fixes it) when a run
will not fit the device.

    est = estimate_memory(llama3_8b_config(), RunShape("lora", batch_size=4, seq_len=1024, dtype="bfloat16"))
    print(est.table())                  # weights, trainable, grads, optimizer, activations, cache, total
    require_fit(config, run, device="cuda")   # InsufficientMemory: "... fits with: --grad-checkpointing"

What is counted (bytes; s = bytes per element of ``dtype``; h hidden, i MLP, H / Hkv heads, D head dim,
F = 2 f Hedgehog features, V vocabulary, L layers, B batch, T tokens, N cached sequences):

* weights: the base model's parameters in ``dtype`` (exact count) + feature maps and window logits (fp32).
* grads / optimizer: gradients of the trained fp32 parameters and two AdamW moments (LoRA weights
  themselves are added to weights). Stage 1 layer-wise
  trains one layer's maps at a time; joint transfer trains all layers' maps; stage 2 trains LoRA.
* activations: what one step holds. The linearized attention and the feature maps compute in fp32 whatever
  ``dtype`` is, so their terms do not shrink with bf16. Constants were measured with
  :class:`~lolcats_lab.scale.measure.PeakMemory` on 8B-shaped tiny-width Llama configs on CPU (PyTorch
  attention path, transformers 5.23; H = 32, D = 128, f = 32 / 64, T = 64-256), rounded up:

    - stage 1, per layer trained at once:  B*H*T*(STAGE1_PER_HEAD_TOKEN * (D + F) + u)  (maps,
      linearized attention, MSE), plus the teacher's eager attention scores B*H*T*T*(2 s + 4) while they
      exist; u = UPCAST_PER_HEAD_TOKEN * D in bf16/fp16 (the maps keep fp32 copies of q and k), else 0.
    - stage 2, saved per layer:  B*T*(H*(STAGE2_PER_HEAD_TOKEN * (D + F) + u) + STAGE2_PER_HIDDEN * s * h);
      with gradient checkpointing only the layer input B*T*h*s is saved per layer and one layer's
      activations are rebuilt at a time. Plus one layer's backward transient and the logits
      (B*T*V*(8 + s): fp32 upcast, log-softmax, gradient).

* cache (stage 1 layer-wise only): ``transfer_layerwise`` keeps, for all N training sequences, a layer's
  inputs, its outputs and its attention inputs (3 * N*T*h*s) plus the eager causal mask of every batch
  (N*T*T*s).

The terms are added, so the estimate errs high (transients that never coexist are summed). It does not
include CUDA's allocator cache, the CUDA context (~0.5 GiB) or fragmentation: :func:`require_fit` keeps
``headroom`` of the free memory for those. Triton kernels (GPU) hold less than the PyTorch path measured here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

__all__ = [
    "RunShape", "MemoryEstimate", "InsufficientMemory", "estimate_memory", "available_memory", "require_fit",
    "suggest_fixes", "enable_gradient_checkpointing", "base_parameter_count", "format_bytes",
]

STAGES = ("transfer", "lora")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
STAGE1_PER_HEAD_TOKEN = 70  # measured 47-52 bytes per B*H*T*(D+F); the batched chunk form (2026-11-23) holds more
STAGE2_PER_HEAD_TOKEN = 44  # measured 30-32 bytes per B*T*H*(D+F), saved per layer; ~40 with the batched chunk form
STAGE2_PER_HIDDEN = 14  # measured 13.7 elements per B*T*h per layer (norms, MLP with i ~ 3.5 h, residuals)
STAGE2_TRANSIENT = 20  # measured 12 bytes per B*T*H*(D+F): one layer's backward temporaries (more since the batched chunk form)
LOGITS_BYTES = 8  # per B*T*V, plus s: fp32 logits and log-softmax; the gradient in the model's dtype
UPCAST_PER_HEAD_TOKEN = 8  # bytes per B*H*T*D: bf16/fp16 q and k copied to fp32 for the maps (measured +1.1 KB at D = 128)


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'`` (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


@dataclass(frozen=True)
class RunShape:
    """What a training run will do, as far as memory is concerned.

    Args:
        stage: "transfer" (stage 1, attention transfer) or "lora" (stage 2).
        batch_size: sequences per micro-batch (B).
        seq_len: tokens per sequence (T).
        dtype: base weights' dtype, "float32", "bfloat16" or "float16".
        layerwise: stage 1 only: train one layer at a time from cached teacher inputs (``--layerwise``).
        grad_checkpointing: stage 2 only: recompute each decoder layer in backward (``--grad-checkpointing``).
        train_sequences: stage 1 layer-wise: sequences whose activations are cached (N).
        feature_dim: Hedgehog features per softmax half (f; F = 2 f).
        lora_rank: stage 2 LoRA rank on q/k/v/o.
        attn_implementation: "eager" materialises the teacher's attention scores; "sdpa" does not.
    """

    stage: str
    batch_size: int = 1
    seq_len: int = 1024  # the paper's sequence length
    dtype: str = "bfloat16"  # what an 8B model is loaded in on a GPU
    layerwise: bool = False
    grad_checkpointing: bool = False
    train_sequences: int | None = None
    feature_dim: int = 64  # the paper: Hedgehog 64 -> 128 features
    lora_rank: int = 8  # the paper: LoRA r = 8
    attn_implementation: str = "eager"  # load_model's default, so maps can be read

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {self.dtype!r}")
        for name in ("batch_size", "seq_len", "feature_dim", "lora_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.layerwise and self.stage != "transfer":
            raise ValueError("layerwise=True applies to stage 'transfer' only (stage 2 trains all layers together)")
        if self.grad_checkpointing and self.stage != "lora":
            raise ValueError("grad_checkpointing=True applies to stage 'lora' only (stage 1 has no deep graph)")
        if self.layerwise and (self.train_sequences is None or self.train_sequences < 1):
            raise ValueError(
                "layerwise=True caches every training sequence's activations: pass train_sequences "
                f"(a positive int, the N of train_ids [N, T]), got {self.train_sequences!r}"
            )

    def flags(self) -> str:
        """The CLI flags that describe this run (for messages)."""
        out = [f"--batch-size {self.batch_size}", f"--seq-len {self.seq_len}", f"--dtype {self.dtype}"]
        if self.layerwise:
            out += ["--layerwise", f"--train-sequences {self.train_sequences}"]
        if self.grad_checkpointing:
            out.append("--grad-checkpointing")
        return " ".join(out)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per part of one training stage; ``total`` is their sum."""

    run: RunShape
    parts: tuple[tuple[str, int], ...]  # (part, bytes), in table order
    model: str = ""

    @property
    def total(self) -> int:
        return sum(b for _, b in self.parts)

    def part(self, name: str) -> int:
        return dict(self.parts)[name]

    def table(self) -> str:
        """A small text table: one line per part, then the total (return value; print it yourself)."""
        head = f"memory estimate: {self.model + ', ' if self.model else ''}stage {self.run.stage!r}, {self.run.flags()}"
        rows = [f"  {name:<12s}{format_bytes(b):>12s}" for name, b in self.parts]
        return "\n".join([head, *rows, f"  {'total':<12s}{format_bytes(self.total):>12s}"])


class InsufficientMemory(MemoryError):
    """A run's estimate exceeds the memory available; the message names the flags that make it fit."""

    def __init__(self, message: str, estimate: MemoryEstimate, available: int, fixes: list[tuple[str, MemoryEstimate]]):
        super().__init__(message)
        self.estimate, self.available, self.fixes = estimate, available, fixes


def base_parameter_count(config) -> int:
    """Exact parameter count of a Llama / Mistral / Qwen2 causal LM from its config (no model is built)."""
    if config.model_type not in ("llama", "mistral", "qwen2"):
        raise ValueError(f"parameter count is implemented for llama, mistral and qwen2 configs, got {config.model_type!r}")
    h, i, V, L = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    H, Hkv = config.num_attention_heads, config.num_key_value_heads
    D = getattr(config, "head_dim", None) or h // H
    qkv_bias = config.model_type == "qwen2" or getattr(config, "attention_bias", False)
    attn = h * H * D + 2 * h * Hkv * D + H * D * h + (H * D + 2 * Hkv * D if qkv_bias else 0)
    if getattr(config, "attention_bias", False) and config.model_type == "llama":
        attn += h  # o_proj bias
    mlp = 3 * h * i + (2 * i + h if getattr(config, "mlp_bias", False) else 0)
    per_layer = attn + mlp + 2 * h  # two RMSNorms
    embeddings = V * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    return embeddings + L * per_layer + h  # final norm


def _dims(config):
    H = config.num_attention_heads
    D = getattr(config, "head_dim", None) or config.hidden_size // H
    return config.hidden_size, H, config.num_key_value_heads, D, config.vocab_size, config.num_hidden_layers


def estimate_memory(config, run: RunShape, *, model: str = "") -> MemoryEstimate:
    """Estimate the peak memory of one training stage for a model with ``config`` (see the module docstring).

    Args:
        config: a Hugging Face Llama / Mistral / Qwen2 config (e.g. :func:`~lolcats_lab.scale.llama3_8b_config`).
        run: batch, sequence length, dtype and the memory switches.
        model: a name for the table's title.
    """
    h, H, Hkv, D, V, L = _dims(config)
    s = DTYPE_BYTES[run.dtype]
    B, T, f = run.batch_size, run.seq_len, run.feature_dim
    F = 2 * f
    upcast = UPCAST_PER_HEAD_TOKEN * D if s < 4 else 0  # per B*H*T, saved by the maps in half precision
    maps_per_layer = 2 * H * D * f + H  # q and k Hedgehog projections [H, D, f] + window logits [H]
    weights = base_parameter_count(config) * s + L * maps_per_layer * 4
    if run.stage == "transfer":
        layers_at_once = 1 if run.layerwise else L
        trainable = layers_at_once * maps_per_layer * 4
        # transfer_layerwise leaves each trained layer's .grad in place, so gradients pile up over the layers
        # (L x the maps: 64 MiB for Llama-3-8B); AdamW state lives for one layer only
        grads = L * maps_per_layer * 4
        acts = layers_at_once * B * H * T * (STAGE1_PER_HEAD_TOKEN * (D + F) + upcast)
        if run.attn_implementation == "eager":
            acts += B * H * T * T * (2 * s + 4)  # scores, fp32 softmax, cast back (one layer at a time)
        cache = 0
        if run.layerwise:
            N = run.train_sequences
            cache = 3 * N * T * h * s + N * T * T * (s if run.attn_implementation == "eager" else 0)
    else:
        lora_per_layer = run.lora_rank * (h + H * D) * 2 + run.lora_rank * (h + Hkv * D) * 2  # q, o, k, v
        trainable = L * lora_per_layer * 4
        weights += trainable  # the adapters themselves (fp32)
        grads = trainable
        per_layer = B * T * (H * (STAGE2_PER_HEAD_TOKEN * (D + F) + upcast) + STAGE2_PER_HIDDEN * s * h)
        transient = B * T * STAGE2_TRANSIENT * H * (D + F)
        logits = B * T * V * (LOGITS_BYTES + s)
        saved = L * B * T * h * s + per_layer if run.grad_checkpointing else L * per_layer
        acts = saved + transient + logits
        cache = 0
    parts = (
        ("weights", weights),
        ("grads", grads),
        ("optimizer", 2 * trainable),
        ("activations", acts),
        ("cache", cache),
    )
    return MemoryEstimate(run=run, parts=parts, model=model)


def available_memory(device: str | torch.device = "cpu") -> int:
    """Free bytes on ``device``: ``torch.cuda.mem_get_info`` on CUDA, available RAM on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        raise ValueError(f"device must be a CPU or CUDA device, got {str(device)!r}")
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # Linux without psutil
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read the available RAM (no psutil, no /proc/meminfo); pass available= explicitly")


def suggest_fixes(config, run: RunShape, budget: int) -> list[tuple[str, MemoryEstimate]]:
    """Changes that bring the estimate under ``budget`` bytes: (CLI flags, new estimate), best first.

    Single changes first, in this order: bf16 weights, layer-wise transfer, gradient checkpointing, the
    largest smaller batch that fits, the most cached training sequences that fit. When no single change is
    enough, one combination: every switch at once, with the largest batch (then the most cached sequences)
    that fits.
    Returns [] when even that does not fit.
    """
    switches: list[tuple[str, dict]] = []
    if run.dtype == "float32":
        switches.append(("--dtype bfloat16", dict(dtype="bfloat16")))
    if run.stage == "transfer" and not run.layerwise:
        n = run.train_sequences or run.batch_size
        switches.append((f"--layerwise --train-sequences {n}", dict(layerwise=True, train_sequences=n)))
    if run.stage == "lora" and not run.grad_checkpointing:
        switches.append(("--grad-checkpointing", dict(grad_checkpointing=True)))

    def shrink(base: RunShape):
        """(flag, run) for smaller batches, then fewer cached sequences, largest first."""
        out = [(f"--batch-size {b}", replace(base, batch_size=b))
               for b in sorted({2**k for k in range(int(math.log2(base.batch_size)) + 1)} - {base.batch_size}, reverse=True)]
        if base.layerwise and base.train_sequences > 1:
            out += [(f"--train-sequences {n}", replace(base, train_sequences=n))
                    for n in dict.fromkeys(max(1, base.train_sequences >> k) for k in range(1, 20)) if n < base.train_sequences]
        return out

    fits = []
    for flag, candidate in [(f, replace(run, **c)) for f, c in switches] + shrink(run):
        est = estimate_memory(config, candidate)
        if est.total <= budget and not any(f.split()[0] == flag.split()[0] for f, _ in fits):
            fits.append((flag, est))  # only the first (largest) batch / sequence count that fits
    if fits:
        return fits
    combined = replace(run, **{k: v for _, c in switches for k, v in c.items()})
    batches = sorted({2**k for k in range(int(math.log2(run.batch_size)) + 1)} | {run.batch_size}, reverse=True)
    seqs = [None]
    if combined.layerwise:
        seqs = list(dict.fromkeys(max(1, combined.train_sequences >> k) for k in range(0, 20)))
    for b in batches:  # the largest batch first, then the most cached sequences at that batch
        for n in seqs:
            candidate = replace(combined, batch_size=b, train_sequences=combined.train_sequences if n is None else n)
            est = estimate_memory(config, candidate)
            if est.total <= budget:
                flags = [f for f, _ in switches]
                flags += [f"--batch-size {b}"] if b != run.batch_size else []
                flags += [f"--train-sequences {n}"] if n is not None and n != combined.train_sequences else []
                return [(" ".join(flags), est)]
    return []


def require_fit(
    config, run: RunShape, *, device: str | torch.device = "cpu", available: int | None = None,
    headroom: float = 0.9, model: str = "",
) -> MemoryEstimate:
    """Return the estimate when it fits in ``headroom`` of the free memory; raise :class:`InsufficientMemory`
    naming the flags that would make it fit otherwise.

    Args:
        available: free bytes (default: :func:`available_memory` of ``device``).
        headroom: the fraction of free memory the estimate may use (the rest: allocator cache, CUDA context).
    """
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom must be in (0, 1], got {headroom!r}")
    est = estimate_memory(config, run, model=model)
    free = available_memory(device) if available is None else int(available)
    budget = int(free * headroom)
    if est.total <= budget:
        return est
    fixes = suggest_fixes(config, run, budget)
    hint = ("; it fits with: " + ", or ".join(f"{flag} ({format_bytes(e.total)})" for flag, e in fixes)) if fixes else (
        "; no setting of --dtype, --batch-size, --layerwise, --train-sequences or --grad-checkpointing makes it "
        "fit: use a device with more free memory, or shard the work over several (python -m lolcats_lab.scale.distributed)"
    )
    raise InsufficientMemory(
        f"stage {run.stage!r} needs about {format_bytes(est.total)} but {format_bytes(budget)} is usable "
        f"({headroom:.0%} of {format_bytes(free)} free on {device}){hint}",
        est, free, fixes,
    )


def enable_gradient_checkpointing(model) -> None:
    """Turn on Hugging Face activation (gradient) checkpointing with ``use_reentrant=False``: each decoder layer
    is recomputed in backward. Works with the linearized wrappers and peft LoRA without an input-grad hook. It
    only acts in training mode (``finetune_lora`` sets ``model.train()``). Uses
    ``activation_checkpointing_enable`` where transformers has it (5.23+), else ``gradient_checkpointing_enable``."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
