"""The 8B path: 8B-class model shapes and the paper recipe, memory estimates with a refusal that names the
fixing flag, CPU-side peak-memory measurement, and multi-process training (layer-sharded transfer, FSDP LoRA).

Runnable entry points:

    python -m lolcats_lab.scale.plan --model llama3-8b --stage lora --batch-size 4      # estimate + fit check
    torchrun --nproc-per-node 2 -m lolcats_lab.scale.distributed transfer --model DIR --out runs/8b
"""

from .measure import PeakMemory, measure_peak, tensor_bytes
from .memory import (
    InsufficientMemory,
    MemoryEstimate,
    RunShape,
    available_memory,
    enable_gradient_checkpointing,
    estimate_memory,
    format_bytes,
    require_fit,
    suggest_fixes,
)
from .presets import (
    MODEL_SHAPES,
    PAPER_RECIPE,
    ModelShape,
    Recipe,
    build_random_model,
    count_parameters,
    llama3_8b_config,
    mistral_7b_config,
    model_config,
    qwen2_7b_config,
)

__all__ = [
    "InsufficientMemory", "MODEL_SHAPES", "MemoryEstimate", "ModelShape", "PAPER_RECIPE", "PeakMemory", "Recipe",
    "RunShape", "available_memory", "build_random_model", "measure_peak", "count_parameters", "enable_gradient_checkpointing",
    "estimate_memory", "format_bytes", "llama3_8b_config", "mistral_7b_config", "model_config", "qwen2_7b_config",
    "require_fit", "suggest_fixes", "tensor_bytes",
]
