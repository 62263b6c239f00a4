"""``python -m lolcats_lab.scale.plan``: print a stage's memory estimate and say whether it fits the device.

    python -m lolcats_lab.scale.plan --model llama3-8b --stage lora --batch-size 4 --device cuda
    python -m lolcats_lab.scale.plan --model /path/to/Meta-Llama-3-8B --stage transfer --layerwise --train-sequences 64

Exit status: 0 fits, 1 refused (the message names the flags that make it fit), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys

import torch

from .memory import DTYPE_BYTES, STAGES, InsufficientMemory, RunShape, estimate_memory, require_fit



def _config_for(name: str):
    from .presets import MODEL_SHAPES, model_config

    if name in MODEL_SHAPES:
        return model_config(name)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lolcats_lab.scale.plan",
                                description="Estimate a stage's memory and say whether it fits the device.")
    p.add_argument("--model", default="llama3-8b", help="llama3-8b, mistral-7b, qwen2-7b, a local dir or a hub id")
    p.add_argument("--stage", choices=STAGES, default="transfer")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="bfloat16")
    p.add_argument("--layerwise", action="store_true")
    p.add_argument("--train-sequences", type=int, default=None)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--feature-dim", type=int, default=64)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        run = RunShape(args.stage, batch_size=args.batch_size, seq_len=args.seq_len, dtype=args.dtype,
                       layerwise=args.layerwise, grad_checkpointing=args.grad_checkpointing,
                       train_sequences=args.train_sequences, feature_dim=args.feature_dim, lora_rank=args.lora_rank)
        config = _config_for(args.model)
        print(estimate_memory(config, run, model=args.model).table())
        require_fit(config, run, device=args.device, model=args.model)
    except InsufficientMemory as err:
        print(f"refused: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"fits on {args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
