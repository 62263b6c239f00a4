"""The ``lolcats-lab`` command.

    lolcats-lab linearize --out DIR [--model smollm2-135m] [--attention hybrid-tk] [--feature-map hedgehog]
                          [--window 64] [--seq-len N] [--transfer-steps N] [--lora-steps N] [--preset quick|paper]
    lolcats-lab evaluate  --checkpoint DIR [--model NAME] [--data SOURCE] [--json FILE]
    lolcats-lab explore   --prompt TEXT [--model NAME] [--checkpoint DIR] --out report.html

Bad input ends with one line on stderr naming the problem and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys


def _number(kind: type, minimum: float, inclusive: bool, what: str):
    """An argparse type: parse ``kind`` and require it >= (or >) ``minimum``; the message says what is expected."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value >= minimum if inclusive else value > minimum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _number(int, 1, True, "a positive integer")
_nonneg_int = _number(int, 0, True, "an integer >= 0")
_positive_float = _number(float, 0.0, False, "a positive number")


def build_parser() -> argparse.ArgumentParser:
    from .feature_maps import FEATURE_MAPS
    from .pipeline import PRESETS

    p = argparse.ArgumentParser(prog="lolcats-lab", description="Attention linearization: convert, train, evaluate, look.")
    sub = p.add_subparsers(dest="command", required=True)

    lin = sub.add_parser("linearize", help="the main job: convert + attention transfer + LoRA + evaluate + report")
    lin.add_argument("--out", required=True, help="output directory (checkpoint/, metrics.json, report.html)")
    lin.add_argument("--model", default="smollm2-135m", help="embedded default (smollm2-135m), hub id, or local dir")
    lin.add_argument("--attention", default="hybrid-tk", choices=["linear", "hybrid-sw", "hybrid-tk"])
    lin.add_argument("--feature-map", default="hedgehog", choices=sorted(FEATURE_MAPS))
    lin.add_argument("--feature-dim", type=_positive_int, default=64, help="Hedgehog: features per softmax half")
    lin.add_argument("--window", type=_positive_int, default=None, help="window size (default: the preset's: quick 32, paper 64)")
    lin.add_argument("--sink-tokens", type=_nonneg_int, default=0)
    lin.add_argument("--data", default="default", help="'default' corpus, 'sample', a .txt/.jsonl file or folder, or hf:NAME")
    lin.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                     help="quick: < 10 min on a 2-core CPU; paper: the paper's sizes (GPU)")
    lin.add_argument("--seq-len", type=_positive_int)
    lin.add_argument("--batch-size", type=_positive_int)
    lin.add_argument("--transfer-steps", type=_nonneg_int, help="attention-transfer steps (0 skips transfer: the LoRA-only ablation)")
    lin.add_argument("--transfer-lr", type=_positive_float)
    lin.add_argument("--lora-steps", type=_positive_int)
    lin.add_argument("--lora-lr", type=_positive_float)
    lin.add_argument("--lora-rank", type=_positive_int, default=8)
    lin.add_argument("--train-sequences", type=_positive_int)
    lin.add_argument("--val-sequences", type=_positive_int)
    lin.add_argument("--seed", type=int, default=0)
    lin.add_argument("--device", default="cpu")
    lin.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    lin.add_argument("--resume", action="store_true", help="continue interrupted training stages from DIR")
    lin.add_argument("--checkpoint-every", type=_nonneg_int, default=0)
    lin.add_argument("--layerwise", action="store_true", help="stage 1 one block at a time from cached teacher inputs")
    lin.add_argument("--grad-checkpointing", action="store_true", help="stage 2 with activation checkpointing")
    lin.add_argument("--no-memory-check", action="store_true", help="skip the memory estimate and refusal")
    lin.add_argument("--no-progress", action="store_true")

    ev = sub.add_parser("evaluate", help="perplexity of a linearized checkpoint (and of its teacher)")
    ev.add_argument("--checkpoint", required=True, help="a checkpoint directory written by linearize")
    ev.add_argument("--model", default=None, help="base model (default: the one named in the checkpoint)")
    ev.add_argument("--data", default="default")
    ev.add_argument("--seq-len", type=_positive_int, default=128)
    ev.add_argument("--val-sequences", type=_positive_int, default=16)
    ev.add_argument("--batch-size", type=_positive_int, default=2)
    ev.add_argument("--json", default=None, help="also write the numbers to this JSON file")

    ex = sub.add_parser("explore", help="an HTML report comparing softmax and linearized attention on a prompt")
    ex.add_argument("--prompt", required=True)
    ex.add_argument("--model", default="smollm2-135m")
    ex.add_argument("--checkpoint", default=None, help="trained linearization to load (default: fresh, untrained maps)")
    ex.add_argument("--attention", default="hybrid-tk", choices=["linear", "hybrid-sw", "hybrid-tk"])
    ex.add_argument("--feature-map", default="hedgehog", choices=sorted(FEATURE_MAPS))
    ex.add_argument("--window", type=_positive_int, default=16)
    ex.add_argument("--layer", type=_nonneg_int, default=None, help="layer to draw maps for (default: the worst)")
    ex.add_argument("--out", required=True, help="report .html path")
    return p


def cmd_linearize(args) -> int:
    from .pipeline import LinearizeSettings, run_linearize

    settings = LinearizeSettings(
        out=args.out, model=args.model, attention=args.attention, feature_map=args.feature_map,
        feature_dim=args.feature_dim, window=args.window, sink_tokens=args.sink_tokens, data=args.data,
        preset=args.preset, seq_len=args.seq_len, batch_size=args.batch_size, transfer_steps=args.transfer_steps,
        transfer_lr=args.transfer_lr, lora_steps=args.lora_steps, lora_lr=args.lora_lr, lora_rank=args.lora_rank,
        train_sequences=args.train_sequences, val_sequences=args.val_sequences, seed=args.seed, device=args.device,
        dtype=args.dtype, resume=args.resume, checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
        layerwise=args.layerwise, grad_checkpointing=args.grad_checkpointing, memory_check=not args.no_memory_check,
    )
    m = run_linearize(settings, log=lambda msg: print(msg, flush=True))
    print()
    print(f"{'':28s}perplexity")
    for name, key in (("teacher (softmax)", "teacher_ppl"), ("before transfer", "ppl_before_transfer"),
                      ("after attention transfer", "ppl_after_transfer"), ("after LoRA", "ppl_after_lora")):
        print(f"{name:28s}{m[key]:10.2f}")
    before, after = m["layer_mse_before"], m["layer_mse_after"]
    print(f"mean per-layer attention MSE: {sum(before) / len(before):.3e} -> {sum(after) / len(after):.3e}")
    print(f"wall time {m['wall_seconds']:.0f} s; wrote {args.out}/checkpoint, metrics.json, report.html")
    return 0


def cmd_evaluate(args) -> int:
    from .data import prepare_data
    from .evaluate import perplexity
    from .models import load_linearized, set_attention_mode
    from .models.checkpoint import read_linearized_config

    config = read_linearized_config(args.checkpoint)
    model = load_linearized(args.checkpoint, base=args.model)
    tok = getattr(model, "lolcats_tokenizer", None)
    if tok is None:
        from .models import load_model

        _, tok = load_model(args.model or config["base_model"])
    data = prepare_data(args.data, tok, args.seq_len, val_sequences=args.val_sequences, train_sequences=1)
    result = {"checkpoint": args.checkpoint, "base_model": config["base_model"], "seq_len": args.seq_len,
              "val_sequences": int(data.val.shape[0])}
    set_attention_mode(model, "linear")
    result["ppl_linearized"] = perplexity(model, data.val, batch_size=args.batch_size)
    set_attention_mode(model, "softmax")
    result["ppl_softmax_mode"] = perplexity(model, data.val, batch_size=args.batch_size)
    print(f"perplexity linearized {result['ppl_linearized']:.2f} | same weights in softmax mode {result['ppl_softmax_mode']:.2f}")
    if args.json:
        from pathlib import Path

        from .pipeline import _atomic_write_json

        _atomic_write_json(Path(args.json), result)
    return 0


def cmd_explore(args) -> int:
    from .analysis import head_statistics
    from .models import linearize, load_linearized, load_model
    from .train.transfer import layer_mse
    from .viz.figures import attention_maps, entropy_comparison
    from .viz.report import write_report

    if not args.prompt.strip():
        raise ValueError("--prompt is empty; give some text to look at")
    model, tok = load_model(args.model)
    if args.checkpoint:
        model = load_linearized(args.checkpoint, base=model)
    else:
        linearize(model, attention=args.attention, feature_map=args.feature_map, window=args.window)
    ids = tok(args.prompt, return_tensors="pt").input_ids
    mse = layer_mse(model, ids)  # [L, H]
    layer = int(mse.mean(-1).argmax()) if args.layer is None else args.layer
    if not 0 <= layer < mse.shape[0]:
        raise ValueError(f"--layer must be in [0, {mse.shape[0]}), got {layer}")
    stats = head_statistics(model, ids, keep_maps=(layer,))
    a_soft, a_lin = stats["maps"][layer]
    head = int(mse[layer].argmax())
    tokens = [tok.decode([i]) for i in ids[0].tolist()]
    figs = [
        (f"Layer {layer}, head {head}: softmax vs linearized",
         attention_maps({"softmax": a_soft[head], "linearized": a_lin[head]}, tokens)),
        ("Per-head entropy", entropy_comparison(stats["entropy_softmax"], stats["entropy_linear"])),
    ]
    write_report(figs, args.out, title=f"lolcats-lab explore: {args.model}", description=args.prompt)
    print(f"layer {layer} head {head}: attention-output MSE {mse[layer, head]:.3e}; wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"linearize": cmd_linearize, "evaluate": cmd_evaluate, "explore": cmd_explore}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("interrupted; training state was checkpointed in the output directory (rerun with --resume)", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError, MemoryError) as err:
        print(f"lolcats-lab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
