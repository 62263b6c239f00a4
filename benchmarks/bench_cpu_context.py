"""CPU: linearized SmolLM2 vs its softmax form at long context (issue 10, the CPU deliverable).

Loads the embedded SmolLM2-135M (or ``--model DIR``, any local Llama-family directory), makes a
linearized copy with the paper's recipe (hybrid tk, window 64, Hedgehog 64 -> 128 features; the maps stay
at their identity initialisation: this measures speed, not quality) running the PyTorch chunked form
(``impl="chunk"``), and times on CPU in fp32, batch 1, with ``--threads`` torch threads:

* prefill: one full forward over T tokens (no grad, no cache) for softmax with ``eager`` attention,
  softmax with ``sdpa`` (the fair baseline) and the linearized model;
* decode: the per-token cost of greedy steps after a T-token prompt, softmax with its growing KV cache vs
  the linearized constant-size cache (one untimed prefill per variant, then ``--decode-steps`` timed steps
  per repetition; each step extends the context by one token).

Variants are interleaved (A B C A B C ...) and each figure is the median of ``--reps`` repetitions. The
JSON records the load average before and after every length, the torch version, the CPU model and the
thread count, so a shared machine says how shared it was.

    .venv/bin/python benchmarks/bench_cpu_context.py                        # 1k, 2k, 4k
    .venv/bin/python benchmarks/bench_cpu_context.py --lengths 1024 4096 8192 --reps 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "cpu-context-smollm2-2026-11-23.json"
RECIPE = dict(attention="hybrid-tk", window=64, feature_map="hedgehog", feature_dim=64)  # PAPER_RECIPE
VARIANTS = ("softmax-eager", "softmax-sdpa", "linear")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_variants(model_name: str) -> dict:
    """{variant: model}: softmax with eager attention, and one sdpa model that is linearized and switched
    between softmax (exactly the original) and linear mode, so both share the same weights."""
    from lolcats_lab.models import linearize, load_model

    eager, _ = load_model(model_name, attn_implementation="eager")
    sdpa, _ = load_model(model_name, attn_implementation="sdpa")
    linearize(sdpa, impl="chunk", mode="linear", **RECIPE)
    return {"softmax-eager": (eager, None), "softmax-sdpa": (sdpa, "softmax"), "linear": (sdpa, "linear")}


def _use(entry):
    from lolcats_lab.models import set_attention_mode

    model, mode = entry
    if mode is not None:
        set_attention_mode(model, mode)
    return model


def time_prefill(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=False)
        dt_s = time.perf_counter() - t0
    if not torch.isfinite(out.logits[:, -1]).all():
        raise RuntimeError("non-finite logits")
    return dt_s


def start_decode(model, ids: torch.Tensor):
    """Untimed prefill with a cache; returns (cache, next token [B, 1])."""
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.no_grad():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    return out.past_key_values, out.logits[:, -1:].argmax(-1)


def time_decode(model, state, steps: int) -> tuple[float, tuple]:
    """Seconds per token over ``steps`` greedy steps; returns the advanced (cache, next token)."""
    cache, tok = state
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=tok, past_key_values=cache, use_cache=True)
            cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        dt_s = time.perf_counter() - t0
    return dt_s / steps, (cache, tok)


def _summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


def _ratios(res: dict, key: str) -> dict:
    lin = res["linear"][key]
    return {f"{v}/linear": res[v][key] / lin for v in res if v != "linear"}


def bench_length(variants: dict, T: int, *, reps: int, decode_steps: int, vocab: int, seed: int, say) -> dict:
    g = torch.Generator().manual_seed(seed + T)
    ids = torch.randint(0, vocab, (1, T), generator=g)  # [1, T]
    load_before = os.getloadavg()
    prefill = {v: [] for v in variants}
    for r in range(reps):
        for v, entry in variants.items():  # interleaved: A B C A B C ...
            prefill[v].append(time_prefill(_use(entry), ids))
            say(f"  T={T} rep {r + 1}/{reps} prefill {v}: {prefill[v][-1]:.3f} s")
    prefill = {v: {**_summary(t), "tokens_per_s": T / statistics.median(t)} for v, t in prefill.items()}

    decode = None
    if decode_steps > 0:
        states = {v: start_decode(_use(entry), ids) for v, entry in variants.items()}
        per_tok = {v: [] for v in variants}
        for r in range(reps):
            for v, entry in variants.items():
                t, states[v] = time_decode(_use(entry), states[v], decode_steps)
                per_tok[v].append(t)
            say(f"  T={T} rep {r + 1}/{reps} decode ms/token: " + ", ".join(f"{v} {per_tok[v][-1] * 1e3:.1f}" for v in variants))
        decode = {v: _summary(t) for v, t in per_tok.items()}
        del states
    return {
        "T": T,
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "prefill": prefill,
        "prefill_ratio": _ratios(prefill, "median_s"),
        "decode_per_token": decode,
        "decode_ratio": _ratios(decode, "median_s") if decode else None,
    }


def _fmt(res: dict, v: str, mult: float, spec: str) -> str:
    return spec.format(res[v]["median_s"] * mult) if v in res else "-"


def _fmt_ratio(ratios: dict, key: str) -> str:
    return f"{ratios[key]:.2f}x" if key in ratios else "-"


def table(result: dict) -> str:
    names = result["variants"]
    head = "| T | " + " | ".join(f"prefill {v} s" for v in names) + " | sdpa / linear | eager / linear |"
    rows = [head, "|" + "---:|" * (len(names) + 3)]
    for r in result["lengths"]:
        p, q = r["prefill"], r["prefill_ratio"]
        rows.append(f"| {r['T']} | " + " | ".join(_fmt(p, v, 1, "{:.3f}") for v in names)
                    + f" | {_fmt_ratio(q, 'softmax-sdpa/linear')} | {_fmt_ratio(q, 'softmax-eager/linear')} |")
    if any(r["decode_per_token"] for r in result["lengths"]):
        rows += ["", "| T | " + " | ".join(f"decode {v} ms/token" for v in names) + " | sdpa / linear | load before -> after |",
                 "|" + "---:|" * (len(names) + 3)]
        for r in result["lengths"]:
            d = r["decode_per_token"]
            if d:
                rows.append(f"| {r['T']} | " + " | ".join(_fmt(d, v, 1e3, "{:.1f}") for v in names)
                            + f" | {_fmt_ratio(r['decode_ratio'], 'softmax-sdpa/linear')}"
                            + f" | {r['loadavg_before'][0]:.2f} -> {r['loadavg_after'][0]:.2f} |")
    return "\n".join(rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096], help="context lengths T")
    p.add_argument("--reps", type=int, default=3, help="repetitions per variant (medians reported)")
    p.add_argument("--decode-steps", type=int, default=4, help="greedy steps per decode repetition (0: no decode)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--model", default="smollm2-135m", help="embedded model name or local model directory")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--eager-max-length", type=int, default=None,
                   help="skip softmax-eager above this length (it is the slowest variant; default: never skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output path")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.reps < 1 or min(args.lengths) < 1 or args.threads < 1 or args.decode_steps < 0:
        p.error("--reps, --lengths and --threads must be >= 1, --decode-steps >= 0")
    if "linear" not in args.variants:
        p.error("--variants must include 'linear' (the ratios are against it)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    from lolcats_lab.io import atomic_write_text

    torch.set_num_threads(args.threads)
    all_variants = load_variants(args.model)
    variants = {v: all_variants[v] for v in VARIANTS if v in args.variants}
    cfg = all_variants["linear"][0].config
    with torch.no_grad():  # warm-up: one short forward each (allocator, lazy init)
        warm = torch.randint(0, cfg.vocab_size, (1, min(128, min(args.lengths))))
        for entry in variants.values():
            _use(entry)(input_ids=warm, use_cache=False)

    import transformers

    result = {
        "what": "CPU prefill and per-token decode, softmax (eager, sdpa) vs linearized (PyTorch chunked form)",
        "date": dt.date.today().isoformat(),
        "model": args.model,
        "model_shape": {k: getattr(cfg, k, None) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                                           "num_key_value_heads", "head_dim", "intermediate_size")},
        "conversion": {**RECIPE, "impl": "chunk", "feature_count": 2 * RECIPE["feature_dim"],
                       "weights": "feature maps at init (identity), window logits at init: speed only"},
        "device": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        "dtype": "float32", "batch": 1, "reps": args.reps, "decode_steps": args.decode_steps,
        "statistic": "median over reps; variants interleaved within each rep",
        "variants": list(variants),
        "eager_max_length": args.eager_max_length,
        "lengths": [],
    }
    for T in args.lengths:
        say(f"T = {T} (load {os.getloadavg()[0]:.2f})")
        here = {v: e for v, e in variants.items() if not (v == "softmax-eager" and args.eager_max_length and T > args.eager_max_length)}
        result["lengths"].append(bench_length(here, T, reps=args.reps, decode_steps=args.decode_steps,
                                              vocab=cfg.vocab_size, seed=args.seed, say=say))
        atomic_write_text(args.out, json.dumps(result, indent=2))  # after every length: a cut run keeps what it did
    say(table(result))
    say(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
