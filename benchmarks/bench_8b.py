"""Throughput and peak memory of the LoLCATs workflow on a Llama-3-8B-shaped model with RANDOM weights.

The model has Llama-3-8B's architecture (32 layers, hidden 4096, 32 query / 8 key-value heads, head dim
128, MLP 14336, vocabulary 128256; 8.03B parameters) and random bf16 weights (normal, std 0.02) built
directly on the GPU: the numbers measure speed and memory, never quality. It is converted with the paper
recipe (hybrid-tk window 64, Hedgehog 64 -> 128 features; ``lolcats_lab.scale.PAPER_RECIPE``) with
``impl="auto"`` (the Triton kernels on CUDA) and SDPA as the softmax attention, teacher included.

Sections (each guarded: an error is recorded in the JSON and the next section runs):

    a  teacher forward: the softmax model, whole forward with logits, seq 1024, batch 1 and 4
    b  stage 1, layer-wise attention transfer (``transfer_layerwise``: teacher inputs cached, one block
       at a time, only the maps train) at seq 1024 on the first --layers layers, for several batch sizes;
       per layer: the training step time (transfer-mode forward = SDPA teacher + linearized attention + MSE,
       backward, clipping, AdamW) and the teacher block forward that produces the cache. Whole-model time
       is layer 0 as measured plus (layers - 1) x the mean of the other measured layers.
    c  stage 2, LoRA r8 on q/k/v/o at seq 1024 (batch 4): softmax vs linearized model, with and without
       gradient checkpointing; one optimizer step (forward with the LM loss, backward, clipping, AdamW)
    d  generation at batch 8: prefill a random prompt (32k, 8k, 2k tokens), then 32 greedy decode steps;
       linearized model (constant-size cache; on CUDA the Triton ring cache of kernels/decode.py) vs the
       softmax model with Hugging Face's KV cache, in two harnesses (--no-gen-graph: the first only):
       eager   the same Python loop for both: model(...) per token (DynamicCache for softmax)
       graph   after the eager steps, ONE greedy decode step of the whole model captured in a CUDA graph
               (static ids / positions updated in place, the next token written back on the device) and
               replayed; linearized: the same cache (Triton steps, no host syncs); softmax: the KV cache
               moved into a transformers StaticCache (sized for the steps), which is built for capture.
               A failed capture is recorded in the row (graph_error); the eager numbers stay. CPU: skipped.
               (decode_harness.py: the static softmax step, the packed-GQA SDPA, capture and timing)

Times are medians of steps after warm-up, with the device synchronised around each step; peaks are
``torch.cuda.max_memory_allocated`` over the timed steps (weights included). The JSON is written after
every section (atomically), so a run cut short keeps what it measured.

    python benchmarks/bench_8b.py                               # everything, ~3-5 min on one H100
    python benchmarks/bench_8b.py --sections b --layers 2       # one section
    python benchmarks/bench_8b.py --tiny                        # 8B-shaped, hidden 64, 4 layers, CPU: seconds
    python benchmarks/bench_8b.py --sections d --budget-s 900   # generation only, eager + CUDA-graph harness
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

if __name__ == "__main__":  # before CUDA starts: less fragmentation (long prefills free and allocate GiBs)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import GiB, device_ms_per_op, err_str, gib, med  # noqa: E402
from decode_harness import (  # noqa: E402, F401 (re-exported: tests/test_bench_8b.py reads them from here)
    cache_bytes,
    cache_seq_len,
    capture_and_time,
    linear_decode_kind,
    measure_graph_decode,
    packed_gqa_sdpa,
    sdpa_as,
    static_decode_step,
    to_static_cache,
)

SECTIONS = ("a", "b", "c", "d")
SECTION_NAMES = {"a": "teacher_forward", "b": "stage1_layerwise_transfer", "c": "stage2_lora", "d": "generation"}
STAGE1_PEAK_LIMIT = 24 * GiB  # issue 8 targets
LORA_PEAK_LIMIT = 48 * GiB


def log(ctx, msg: str) -> None:
    print(f"[{ctx.budget.elapsed():7.1f}s] {msg}", flush=True)


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()


class Ctx:
    """What the sections share: arguments, device, model, results, budget."""

    def __init__(self, args, device, budget):
        self.args, self.device, self.budget = args, device, budget
        self.model = None
        self.config = None
        self.results: dict = {}
        self.out: Path | None = None
        self.current: str | None = None  # the section running now

    # --- device helpers ----------------------------------------------------------------------------
    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int | None:
        return int(torch.cuda.max_memory_allocated(self.device)) if self.cuda else None

    def allocated(self) -> int | None:
        return int(torch.cuda.memory_allocated(self.device)) if self.cuda else None

    def free(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def ids(self, *shape) -> torch.Tensor:
        return torch.randint(0, self.config.vocab_size, shape, device=self.device)

    def partial(self, out: dict) -> None:
        """Record the running section's results so far (status "partial") and write the JSON."""
        self.results["sections"][self.current] = dict(name=SECTION_NAMES[self.current], status="partial", **out)
        self.write()

    def write(self):
        from lolcats_lab.io import atomic_write_text

        self.results["elapsed_s"] = round(self.budget.elapsed(), 1)
        self.results["targets"] = targets(self.results)
        atomic_write_text(self.out, json.dumps(self.results, indent=1, default=str) + "\n")


def time_calls(ctx, fn, warmup: int, reps: int) -> tuple[list[float], int | None]:
    """Run ``fn`` ``warmup`` times, then time ``reps`` calls (synchronised); (seconds per call, peak bytes)."""
    for _ in range(warmup):
        fn()
    ctx.reset_peak()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ctx.sync()
        times.append(time.perf_counter() - t0)
    return times, ctx.peak()


class StepClock:
    """A training-loop callback: synchronises and stamps every optimizer step, per layer (None: whole model)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.stamps: dict = defaultdict(list)
        self.records: dict = defaultdict(list)

    def __call__(self, record: dict) -> None:
        self.ctx.sync()
        self.stamps[record.get("layer")].append(time.perf_counter())
        self.records[record.get("layer")].append(record)

    def intervals(self, key=None, skip: int = 0) -> list[float]:
        s = self.stamps[key]
        return [b - a for a, b in zip(s, s[1:])][skip:]


# ------------------------------------------------------------------------------------------------- setup
def environment(device: torch.device) -> dict:
    import transformers

    env = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        torch=torch.__version__, transformers=transformers.__version__, cuda=torch.version.cuda,
        python=platform.python_version(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32, alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
    )  # fmt: skip
    for name in ("triton", "peft"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - optional
            env[name] = None
    sys.path.insert(0, str(Path(__file__).parent))
    from _provenance import git_provenance

    env.update(git_provenance())
    return env


def build(ctx) -> None:
    """The 8B-shaped model with random weights, on the device, linearized with the paper recipe."""
    from lolcats_lab.models import linearize
    from lolcats_lab.scale import PAPER_RECIPE, build_random_model, model_config, tensor_bytes

    a = ctx.args
    if a.tiny:
        config = model_config(a.shape, width_scale=64, num_layers=a.num_layers or 4, vocab_size=512, attn_implementation="sdpa")
        dtype = torch.float32  # bf16 matmuls are slow on CPU
    else:
        config = model_config(a.shape, num_layers=a.num_layers, attn_implementation="sdpa")
        dtype = torch.bfloat16
    ctx.config = config
    t0 = time.perf_counter()
    model = build_random_model(config, dtype=dtype, seed=0, device=ctx.device)  # HF init: normal(0, 0.02)
    ctx.sync()
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    linearize(model, **PAPER_RECIPE.linearize_kwargs(), impl="auto")
    ctx.sync()
    ctx.model = model
    n_base = sum(p.numel() for n, p in model.named_parameters() if not any(s in n for s in (".q_map.", ".k_map.", "window_logit")))
    ctx.results["model"] = dict(
        note="random weights, 8B-shaped" + (" (tiny width: hidden / 64, CPU test config)" if a.tiny else ""),
        shape=a.shape, model_type=config.model_type, num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_heads=config.num_attention_heads, num_kv_heads=config.num_key_value_heads, head_dim=config.head_dim,
        vocab_size=config.vocab_size, base_parameters=n_base, dtype=str(dtype).replace("torch.", ""),
        init="Hugging Face _init_weights: normal(0, 0.02), built on the device",
        attn_implementation=config._attn_implementation, weights_gib=gib(tensor_bytes(model.parameters())),
        build_s=round(t_build, 2), linearize_s=round(time.perf_counter() - t0, 2),
    )  # fmt: skip
    ctx.results["recipe"] = dict(**PAPER_RECIPE.linearize_kwargs(), features=2 * PAPER_RECIPE.feature_dim, impl="auto",
                                 lora_rank=PAPER_RECIPE.lora_rank, lora_targets=list(PAPER_RECIPE.lora_targets))


# ------------------------------------------------------------------------------------------- a: teacher
def section_teacher(ctx) -> dict:
    from lolcats_lab.models import set_attention_mode

    a, model = ctx.args, ctx.model
    set_attention_mode(model, "softmax")
    model.eval()
    out = dict(what="softmax model forward (SDPA), whole model with logits, no grad", seq=a.seq, runs=[])
    for B in a.teacher_batches:
        row = dict(batch=B)
        if ctx.budget.left() <= 0:
            row["skipped"] = "budget"
            out["runs"].append(row)
            continue
        try:
            ids = ctx.ids(B, a.seq)
            with torch.no_grad():
                times, peak = time_calls(ctx, lambda: model(input_ids=ids, use_cache=False), a.warmup, a.reps)
            m = med(times)
            row.update(ms=round(m * 1e3, 2), tokens_per_s=round(B * a.seq / m), peak_gib=gib(peak),
                       times_ms=[round(t * 1e3, 2) for t in times])
            log(ctx, f"a: teacher forward batch {B}: {row['tokens_per_s']} tok/s, peak {row['peak_gib']} GiB")
        except Exception as err:  # noqa: BLE001 - record, go on
            row["error"] = err_str(err)
            log(ctx, f"a: teacher forward batch {B} failed: {row['error']}")
        ctx.free()
        out["runs"].append(row)
        ctx.partial(out)
    return out


# --------------------------------------------------------------------------------------- b: stage 1
def measure_stage1(ctx, B: int, n_layers: int) -> dict:
    from lolcats_lab.scale import PAPER_RECIPE
    from lolcats_lab.scale.distributed import truncated_layers
    from lolcats_lab.train import transfer_layerwise
    from lolcats_lab.train.layerwise import decoder_layers

    a, model = ctx.args, ctx.model
    L = ctx.config.num_hidden_layers
    n_batches = a.stage1_batches_per_layer
    ids = ctx.ids(B * n_batches, a.seq)
    steps = 1 + a.warmup + a.reps  # intervals between step stamps: warmup + reps
    cfg = PAPER_RECIPE.transfer_config(steps=steps, batch_size=B, progress=False)
    clock = StepClock(ctx)
    blocks = decoder_layers(model)[:n_layers]
    fwd_s: dict[int, list[float]] = defaultdict(list)
    started: dict[int, float] = {}

    def pre(i):
        def hook(module, args, kwargs):
            if not torch.is_grad_enabled():  # the teacher forward that fills the cache
                ctx.sync()
                started[i] = time.perf_counter()

        return hook

    def post(i):
        def hook(module, args, output):
            if not torch.is_grad_enabled() and i in started:
                ctx.sync()
                fwd_s[i].append(time.perf_counter() - started.pop(i))

        return hook

    handles = [b.register_forward_pre_hook(pre(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(post(i)) for i, b in enumerate(blocks)]
    try:
        ctx.reset_peak()
        t0 = time.perf_counter()
        with truncated_layers(model, n_layers):
            transfer_layerwise(model, ids, cfg, callback=clock)
        ctx.sync()
        wall = time.perf_counter() - t0
        peak = ctx.peak()
    finally:
        for h in handles:
            h.remove()
    tokens = B * a.seq
    layers = []
    for l in range(n_layers):
        step = med(clock.intervals(l, skip=a.warmup))
        fwd = sum(fwd_s[l]) / n_batches  # teacher block forward per batch (cache production)
        mses = [r["mse"] for r in clock.records[l]]
        layers.append(dict(layer=l, step_ms=round(step * 1e3, 3), teacher_block_fwd_ms=round(fwd * 1e3, 3),
                           step_tokens_per_s=round(tokens / step), mse_first=mses[0], mse_last=mses[-1]))
    step_s = [x["step_ms"] / 1e3 for x in layers]
    fwd_s_layer = [x["teacher_block_fwd_ms"] / 1e3 for x in layers]
    both_s = [a_ + b_ for a_, b_ in zip(step_s, fwd_s_layer)]
    return dict(
        batch=B, cached_sequences=B * n_batches, steps_per_layer=steps, timed_steps=a.reps, wall_s=round(wall, 2),
        peak_gib=gib(peak), fits_24gib=None if peak is None else peak <= STAGE1_PEAK_LIMIT, layers=layers,
        # whole model (all L layers), extrapolated from the measured layers (whole_model_seconds):
        tokens_per_s_train=round(tokens / whole_model_seconds(step_s, L)),
        tokens_per_s_with_cache=round(tokens / whole_model_seconds(both_s, L)),
        teacher_cache_tokens_per_s=round(tokens / whole_model_seconds(fwd_s_layer, L)),
    )  # fmt: skip


def whole_model_seconds(per_layer: list[float], n_layers: int) -> float:
    """Seconds for all n_layers from the first few measured: layer 0 as measured (it carries one-time costs,
    e.g. the first teacher forward at a new batch size: 75 ms against 27 ms for the next layers at batch 32
    on an H100), plus n_layers - 1 times the mean of the others. A plain mean x n_layers would count layer
    0's one-time cost n_layers / len(per_layer) times over."""
    if len(per_layer) == 1:
        return per_layer[0] * n_layers
    return per_layer[0] + (n_layers - 1) * statistics.mean(per_layer[1:])


def section_stage1(ctx) -> dict:
    a = ctx.args
    L = ctx.config.num_hidden_layers
    n_layers = min(a.layers, L)
    out = dict(
        what="transfer_layerwise (teacher inputs cached, one block at a time, maps + window logits train), "
             "transfer-mode step: SDPA teacher + hybrid-tk linearized attention + MSE, backward, clip, AdamW",
        seq=a.seq, layers_measured=n_layers, layers_total=L,
        extrapolation=f"measured on layers 0..{n_layers - 1}; whole-model time = layer 0 + {L - 1} x mean of layers "
                      f"1..{n_layers - 1} (layer 0 carries one-time costs; whole_model_seconds)",
        rates="tokens_per_s_train: training steps only; tokens_per_s_with_cache: plus the teacher block forward "
              "that fills the cache, each sequence trained once per layer (the paper's one pass over the data)",
        teacher_attention=f"{ctx.config._attn_implementation} (LinearizedAttention 'transfer' mode calls the model's "
                          "configured attention function; 'eager' would materialise B*H*T^2 scores)",
        peak_limit_gib=gib(STAGE1_PEAK_LIMIT), candidates=[],
    )  # fmt: skip
    for B in a.stage1_batch_sizes:
        if ctx.budget.left() <= 0:
            out["candidates"].append(dict(batch=B, skipped="budget"))
            continue
        try:
            cand = measure_stage1(ctx, B, n_layers)
            log(ctx, f"b: stage 1 batch {B}: {cand['tokens_per_s_train']} tok/s train, "
                     f"{cand['tokens_per_s_with_cache']} with cache, peak {cand['peak_gib']} GiB")
        except Exception as err:  # noqa: BLE001
            cand = dict(batch=B, error=err_str(err))
            log(ctx, f"b: stage 1 batch {B} failed: {cand['error']}")
            traceback.print_exc()
        ctx.free()
        out["candidates"].append(cand)
        ctx.partial(out)
        if "error" in cand or cand.get("fits_24gib") is False:
            break  # larger batches only need more memory
    ok = [c for c in out["candidates"] if "tokens_per_s_train" in c and c.get("fits_24gib") is not False]
    if ok:
        best = max(ok, key=lambda c: c["tokens_per_s_with_cache"])  # end to end: the paper's one pass
        out["best"] = {k: best[k] for k in ("batch", "tokens_per_s_train", "tokens_per_s_with_cache", "peak_gib")}
    return out


# --------------------------------------------------------------------------------------- c: stage 2
def _disable_checkpointing(model) -> None:
    for name in ("activation_checkpointing_disable", "gradient_checkpointing_disable"):
        if hasattr(model, name):
            getattr(model, name)()
            return


def _remove_lora(model) -> None:
    """Put every peft LoRA layer's base layer back (undoes ``add_lora``)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    for attr in ("lolcats_lora", "peft_config"):  # add_lora's record and the one peft leaves behind
        if attr in model.__dict__:
            delattr(model, attr)


def profile_kernels(step, device: torch.device, top: int = 40) -> dict:
    """One call of ``step`` (e.g. forward + backward) under torch.profiler (_common.device_ms_per_op): total
    GPU kernel time and the ``top`` kernels by time (ms; names cut to 90 characters; 40 because the
    stage-2 gap spreads over more than the 15 kept before); on a CPU, ops by self CPU time instead."""
    kernels: dict[str, float] = {}
    for name, ms in device_ms_per_op(step, device.type == "cuda").items():
        kernels[name[:90]] = kernels.get(name[:90], 0.0) + ms
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1])
    return dict(kernel_ms_total=round(sum(kernels.values()), 2),
                top_kernels_ms={k: round(v, 3) for k, v in ranked[:top]})


def host_side(step, device: torch.device) -> dict:
    """What the host does in one call of ``step`` (a forward + backward): ``issue_ms``, the host time from a
    synchronised start until ``step`` returns (the launches queued, the GPU still working: when it is near
    the GPU time the step waits on the host), and ``syncs``, the operations that made the host wait for the
    GPU inside it (``torch.cuda.set_sync_debug_mode``: each one empties the GPU's queue). CUDA only."""
    import time
    import warnings

    if device.type != "cuda":
        return {}
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    issue = time.perf_counter() - t0
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    syncs = [str(w.message)[:160] for w in caught if "synchroniz" in str(w.message)]
    return dict(issue_ms=round(issue * 1e3, 2), syncs=len(syncs), sync_messages=sorted(set(syncs))[:10])


def section_lora(ctx) -> dict:
    import warnings

    from lolcats_lab.models import set_attention_mode
    from lolcats_lab.scale import PAPER_RECIPE, enable_gradient_checkpointing
    from lolcats_lab.train.lora import add_lora, lm_loss
    from lolcats_lab.train.loop import run_training

    a, model = ctx.args, ctx.model
    B = a.lora_batch
    steps = 1 + a.warmup + a.reps
    settings = PAPER_RECIPE.lora_settings(steps=steps, batch_size=B, progress=False)
    out = dict(what="LoRA r8 alpha 16 on q/k/v/o (peft, lolcats_lab.train.lora.add_lora), one optimizer step: "
                    "forward with the LM loss (logits), backward, clip, AdamW (run_training)",
               seq=a.seq, batch=B, peak_limit_gib=gib(LORA_PEAK_LIMIT), runs=[])  # fmt: skip
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        params = add_lora(model, settings)
        out["trainable_parameters"] = sum(p.numel() for p in params.values())
        ids = ctx.ids(B, a.seq)
        for ckpt in (False, True):
            for mode in ("softmax", "linear"):
                row = dict(mode=mode, grad_checkpointing=ckpt)
                if ctx.budget.left() <= 0:
                    row["skipped"] = "budget"
                    out["runs"].append(row)
                    continue
                try:
                    set_attention_mode(model, mode)
                    model.train()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", FutureWarning)
                        if ckpt:
                            enable_gradient_checkpointing(model)
                        else:
                            _disable_checkpointing(model)
                    clock = StepClock(ctx)
                    ctx.reset_peak()
                    run_training(params, lambda batch: lm_loss(model, batch), ids, settings, callback=clock)
                    ctx.sync()
                    peak = ctx.peak()
                    step = med(clock.intervals(None, skip=a.warmup))
                    row.update(step_ms=round(step * 1e3, 1), tokens_per_s=round(B * a.seq / step), peak_gib=gib(peak),
                               losses=[round(r["loss"], 4) for r in clock.records[None]])
                    # where a step's GPU time goes, per kernel; what the host does meanwhile
                    row["profile"] = profile_kernels(lambda: lm_loss(model, ids)[0].backward(), ctx.device)
                    row["host"] = host_side(lambda: lm_loss(model, ids)[0].backward(), ctx.device)
                    log(ctx, f"c: LoRA {mode} ckpt={ckpt}: {row['tokens_per_s']} tok/s, peak {row['peak_gib']} GiB")
                except Exception as err:  # noqa: BLE001
                    row["error"] = err_str(err)
                    log(ctx, f"c: LoRA {mode} ckpt={ckpt} failed: {row['error']}")
                    traceback.print_exc()
                for p in params.values():
                    p.grad = None
                ctx.free()
                out["runs"].append(row)
                ctx.partial(out)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            _disable_checkpointing(model)
        model.eval()
        _remove_lora(model)
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, False))
        ctx.free()
    by = {(r["mode"], r["grad_checkpointing"]): r for r in out["runs"]}
    for ckpt in (False, True):
        s, l = by.get(("softmax", ckpt), {}), by.get(("linear", ckpt), {})
        if s.get("tokens_per_s") and l.get("tokens_per_s"):
            out[f"linear_over_softmax{'_ckpt' if ckpt else ''}"] = round(l["tokens_per_s"] / s["tokens_per_s"], 3)
    return out


# ------------------------------------------------------------------------------------- d: generation
def _prefill(ctx, ids, chunk: int | None):
    """Prefill through a fresh cache (in pieces of ``chunk`` tokens when given); returns (cache, next token)."""
    from transformers import DynamicCache

    model = ctx.model
    cache = DynamicCache(config=model.config)
    T = ids.shape[1]
    step = chunk or T
    with torch.no_grad():
        for s in range(0, T, step):
            logits = model(input_ids=ids[:, s : s + step], past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    return cache, logits[:, -1].argmax(-1, keepdim=True)


def measure_generation(ctx, mode: str, B: int, P: int, chunk: int | None) -> dict:
    from lolcats_lab.models import set_attention_mode

    a, model = ctx.args, ctx.model
    set_attention_mode(model, mode)
    model.eval()
    ids = ctx.ids(B, P)
    # an untimed prefill of a short prompt first: the Triton kernels compile and autotune on their first call
    # (seconds; before session 12 that landed in the first linear row: 32k, 21.9 s against softmax's 12.0)
    warm_tokens = min(P, a.gen_prefill_warmup)
    t0 = time.perf_counter()
    if warm_tokens:
        _prefill(ctx, ids[:, :warm_tokens], None)  # its cache is dropped here
        ctx.sync()
    warm_s = time.perf_counter() - t0
    ctx.free()
    base = ctx.allocated()
    ctx.reset_peak()
    t0 = time.perf_counter()
    cache, tok = _prefill(ctx, ids, chunk)
    ctx.sync()
    prefill_s = time.perf_counter() - t0
    prefill_peak = ctx.peak()
    held = None if base is None else ctx.allocated() - base  # the cache (and the next token)
    ctx.reset_peak()
    times, logits = [], None
    with torch.no_grad():
        for i in range(a.gen_warmup + a.gen_steps):
            t0 = time.perf_counter()
            logits = model(input_ids=tok, past_key_values=cache, use_cache=True).logits
            tok = logits[:, -1].argmax(-1, keepdim=True)
            ctx.sync()
            times.append(time.perf_counter() - t0)
    decode_peak = ctx.peak()
    timed = times[a.gen_warmup :]
    row = dict(
        mode=mode, batch=B, prompt=P, prefill=("one pass" if not chunk else f"chunks of {chunk} tokens"),
        prefill_s=round(prefill_s, 3), prefill_tokens_per_s=round(B * P / prefill_s),
        prefill_warmup_tokens=warm_tokens, prefill_warmup_s=round(warm_s, 3),
        decode_steps=len(timed), decode_ms_per_step=round(med(timed) * 1e3, 2),
        decode_tokens_per_s=round(B * len(timed) / sum(timed), 1),
        prefill_peak_gib=gib(prefill_peak), decode_peak_gib=gib(decode_peak),
        allocated_gib_after_prefill=gib(held), cache_tensors_gib_at_end=round(cache_bytes(cache) / GiB, 4),
        cache_seq_length=cache.get_seq_length(),
    )  # fmt: skip
    if mode == "linear":
        row["linear_decode"] = linear_decode_kind(cache)
    del logits
    if not a.no_gen_graph:
        if not ctx.cuda:
            row["graph"] = "skipped: CUDA graphs need a CUDA device (CPU run)"
        else:
            try:
                row["graph"] = measure_graph_decode(ctx, mode, cache, tok)
                g = row["graph"]
                log(ctx, f"d: {mode} prompt {P} batch {B} CUDA graph: {g['ms_per_step']} ms/step "
                         f"({g['tokens_per_s']} tok/s), peak {g['peak_gib']} GiB")
            except Exception as err:  # noqa: BLE001 - record; the eager numbers stand
                row["graph_error"] = err_str(err)
                log(ctx, f"d: {mode} prompt {P} batch {B} CUDA graph failed: {row['graph_error'][:300]}")
                traceback.print_exc()
    del cache, tok
    return row


def section_generation(ctx) -> dict:
    a = ctx.args
    out = dict(what="prefill (logits of the last token only; after an untimed prefill of prefill_warmup_tokens at the "
                    "same batch), then greedy decode steps with the cache, same loop for both models; linear: "
                    "LinearizedCacheLayer (recurrent state + window), softmax: DynamicCache",
               graph_what="per row 'graph': after the eager steps, one greedy step of the whole model captured in a "
                          "CUDA graph and replayed (linear: the same cache, Triton ring steps; softmax: the KV cache "
                          "moved into a transformers StaticCache, timed with transformers' sdpa (hf_sdpa) and with "
                          "grouped KV heads packed instead of repeated (packed_gqa); its top-level numbers are the "
                          "faster one's); 'graph_error' when capture failed. graph_speedup_P: linear / fastest softmax",
               graph_harness=not a.no_gen_graph, batch=a.gen_batch, decode_steps=a.gen_steps, warmup_steps=a.gen_warmup,
               runs=[])  # fmt: skip
    for P in a.gen_prompts:
        for mode in ("linear", "softmax"):
            if ctx.budget.left() <= 0:
                out["runs"].append(dict(mode=mode, prompt=P, skipped="budget"))
                continue
            # softmax at long prompts may not fit in one pass: then chunked prefill, then batch 1
            # (the linearized cache decodes a chunk after the first token by token, so it only gets batch 1)
            attempts = [(a.gen_batch, None)]
            if mode == "softmax":
                attempts += [(a.gen_batch, c) for c in (8192, 2048) if c < P]
            if a.gen_batch > 1:
                attempts.append((1, None))
            failures = []
            row = None
            for B, chunk in attempts:
                if failures and ctx.budget.left() <= 0:
                    break
                try:
                    row = measure_generation(ctx, mode, B, P, chunk)
                    break
                except Exception as err:  # noqa: BLE001 - record; after running out of memory try the next way
                    failures.append(dict(batch=B, prefill_chunk=chunk, error=err_str(err)))
                    log(ctx, f"d: {mode} prompt {P} batch {B} chunk {chunk} failed: {failures[-1]['error'][:200]}")
                    oom = isinstance(err, torch.cuda.OutOfMemoryError)
                    ctx.free()
                    if not oom:
                        break
            row = row or dict(mode=mode, prompt=P, error="; ".join(f["error"] for f in failures)[:1500])
            if failures and "error" not in row:
                row["earlier_attempts_failed"] = failures
            ctx.free()
            if "error" not in row:
                log(ctx, f"d: {mode} prompt {P} batch {row['batch']}: prefill {row['prefill_s']} s, decode "
                         f"{row['decode_ms_per_step']} ms/step ({row['decode_tokens_per_s']} tok/s), "
                         f"decode peak {row['decode_peak_gib']} GiB")
            out["runs"].append(row)
            ctx.partial(out)
    by = {(r["mode"], r["prompt"]): r for r in out["runs"] if "decode_tokens_per_s" in r}
    weights = (ctx.results.get("model") or {}).get("weights_gib")
    for P in a.gen_prompts:
        lin, soft = by.get(("linear", P)), by.get(("softmax", P))
        if lin and soft and lin["batch"] == soft["batch"]:
            out[f"speedup_{P}"] = round(lin["decode_tokens_per_s"] / soft["decode_tokens_per_s"], 2)
            lg, sg = lin.get("graph"), soft.get("graph")
            if isinstance(lg, dict) and isinstance(sg, dict):  # softmax: its faster graph variant
                out[f"graph_speedup_{P}"] = round(lg["tokens_per_s"] / sg["tokens_per_s"], 2)
                if "hf_sdpa" in sg:
                    out[f"graph_speedup_vs_hf_sdpa_{P}"] = round(lg["tokens_per_s"] / sg["hf_sdpa"]["tokens_per_s"], 2)
            if weights:  # a step must read the weights and the cache at least once: the most a lower cache can gain
                out[f"read_bytes_ratio_{P}"] = round((weights + soft["cache_tensors_gib_at_end"])
                                                     / (weights + lin["cache_tensors_gib_at_end"]), 2)  # fmt: skip
    if any(k.startswith("read_bytes_ratio_") for k in out):
        out["read_bytes_note"] = ("read_bytes_ratio_P = (weights + softmax KV cache) / (weights + linearized state): the "
                                  "speedup of a decode step bound by reading each byte once (HBM bandwidth); extra "
                                  "traffic (e.g. HF repeating KV heads under a mask) lets a measured ratio exceed it")
    return out


# ------------------------------------------------------------------------------------------ summary
def targets(results: dict) -> dict:
    """Issue 8's single-GPU targets against what was measured (None where not measured)."""
    s = results.get("sections", {})
    out = {}
    b = s.get("b", {}).get("best")
    out["stage1"] = dict(target=">= 15k tokens/s at seq 1024 with the teacher cache filled, peak <= 24 GiB",
                         measured=b, met=None if not b else b["tokens_per_s_with_cache"] >= 15000 and (b["peak_gib"] or 0) <= 24)
    c = s.get("c", {})
    runs = {(r.get("mode"), r.get("grad_checkpointing")): r for r in c.get("runs", [])}
    ratio = c.get("linear_over_softmax")
    lin = runs.get(("linear", False), {})
    out["stage2"] = dict(target="linearized LoRA >= 0.9x softmax LoRA rate (batch 4, seq 1024), peak <= 48 GiB",
                         ratio=ratio, ratio_ckpt=c.get("linear_over_softmax_ckpt"), linear_peak_gib=lin.get("peak_gib"),
                         met=None if ratio is None else ratio >= 0.9 and (lin.get("peak_gib") or 0) <= 48)
    d = s.get("d", {})

    def by_prompt(prefix: str) -> dict:  # {"<prefix><P>": value} for integer P only
        return {k: v for k, v in d.items() if k.startswith(prefix) and k[len(prefix) :].isdigit()}

    speed, graph, graph_hf = by_prompt("speedup_"), by_prompt("graph_speedup_"), by_prompt("graph_speedup_vs_hf_sdpa_")
    runs = d.get("runs", [])
    lin_peaks = {r["prompt"]: r["decode_peak_gib"] for r in runs if r.get("mode") == "linear" and "decode_peak_gib" in r}
    lin_graph_peaks = {r["prompt"]: r["graph"]["peak_gib"] for r in runs if r.get("mode") == "linear" and isinstance(r.get("graph"), dict)}
    big = max((int(k.rsplit("_", 1)[1]) for k in speed), default=None)
    big_g = max((int(k.rsplit("_", 1)[1]) for k in graph), default=None)
    met_eager = None if big is None else speed[f"speedup_{big}"] >= 3
    met_graph = None if big_g is None else graph[f"graph_speedup_{big_g}"] >= 3
    out["generation"] = dict(target=">= 3x the softmax model's decode tokens/s at batch 8, 32k prompt; memory flat in context",
                             speedups=speed, graph_speedups=graph, graph_speedups_vs_hf_sdpa=graph_hf,
                             read_bytes_ratios=by_prompt("read_bytes_ratio_"), linear_decode_peak_gib_by_prompt=lin_peaks,
                             linear_graph_peak_gib_by_prompt=lin_graph_peaks, met_eager=met_eager, met_graph=met_graph,
                             met=met_graph if met_graph is not None else met_eager,
                             met_note="met: the CUDA-graph harness (vs the faster softmax variant) when both models were "
                                      "captured, else the eager one")  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv):
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="a,b,c,d", help="comma list of a (teacher), b (stage 1), c (LoRA), d (generation)")
    ap.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<device>-8b-<date>.json)")
    ap.add_argument("--budget-s", type=float, default=500.0, help="wall budget: sections (and runs) that would start later are skipped")
    ap.add_argument("--tiny", action="store_true", help="8B-shaped tiny-width config (hidden 64) on CPU, small sizes: a smoke test")
    ap.add_argument("--shape", default="llama3-8b", help="lolcats_lab.scale.MODEL_SHAPES entry (default llama3-8b)")
    ap.add_argument("--num-layers", type=int, default=None, help="override the model's layer count (default: the shape's; --tiny: 4)")
    ap.add_argument("--layers", type=int, default=None, help="stage 1: measure this many layers, extrapolate to all (default 4; --tiny 2)")
    ap.add_argument("--seq", type=int, default=None, help="training sequence length (default 1024; --tiny 64)")
    ap.add_argument("--teacher-batches", type=ints, default=None, help="section a batch sizes (default 1,4)")
    ap.add_argument("--stage1-batch-sizes", type=ints, default=None, help="section b batch sizes, ascending (default 4,8,16,32)")
    ap.add_argument("--stage1-batches-per-layer", type=int, default=2, help="section b: cached batches per layer")
    ap.add_argument("--lora-batch", type=int, default=None, help="section c batch size (default 4)")
    ap.add_argument("--gen-batch", type=int, default=None, help="section d batch size (default 8)")
    ap.add_argument("--gen-prompts", type=ints, default=None, help="section d prompt lengths (default 32768,8192,2048)")
    ap.add_argument("--gen-steps", type=int, default=None, help="section d timed decode steps (default 32)")
    ap.add_argument("--gen-warmup", type=int, default=2, help="section d untimed decode steps first")
    ap.add_argument("--gen-prefill-warmup", type=int, default=None,
                    help="section d: tokens of an untimed prefill before each timed one, same batch (compiles and "
                         "autotunes the kernels; default 1024, --tiny 16; 0: none, the first row then includes "
                         "compilation)")
    ap.add_argument("--no-gen-graph", action="store_true",
                    help="section d: skip the CUDA-graph harness (one decode step captured and replayed after the "
                         "eager steps; always skipped on CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per measurement (default 2; --tiny 1)")
    ap.add_argument("--reps", type=int, default=None, help="timed steps per measurement (default 5; --tiny 2)")
    ap.add_argument("--device", default=None, help="default: cuda when available (cpu with --tiny)")
    a = ap.parse_args(argv)
    tiny = a.tiny
    defaults = dict(layers=(2, 4), seq=(64, 1024), teacher_batches=([1, 2], [1, 4]), stage1_batch_sizes=([1, 2], [4, 8, 16, 32]),
                    lora_batch=(2, 4), gen_batch=(2, 8), gen_prompts=([128], [32768, 8192, 2048]), gen_steps=(4, 32),
                    gen_prefill_warmup=(16, 1024),
                    warmup=(1, 2), reps=(2, 5))  # fmt: skip
    for name, (small, full) in defaults.items():
        if getattr(a, name) is None:
            setattr(a, name, small if tiny else full)
    a.sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in a.sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown sections {bad}; choose from {','.join(SECTIONS)}")
    if a.device is None:
        a.device = "cpu" if tiny or not torch.cuda.is_available() else "cuda"
    return a


def main(argv=None) -> dict:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    ctx = Ctx(args, device, budget)
    env = environment(device)
    date = env["date"][:10]
    name = "cpu" if device.type == "cpu" else env["device"].replace(" ", "_")
    ctx.out = args.out or Path(__file__).parent / "results" / f"{name}-8b{'-tiny' if args.tiny else ''}-{date}.json"
    ctx.results = dict(benchmark="benchmarks/bench_8b.py", note="random weights, 8B-shaped: speed and memory only, never quality",
                       env=env, argv=list(sys.argv[1:] if argv is None else argv), budget_s=args.budget_s,
                       settings=dict(seq=args.seq, warmup=args.warmup, reps=args.reps, timing="median of timed steps after warm-up, "
                                     "device synchronised per step; peaks: torch.cuda.max_memory_allocated (weights included)"),
                       sections={}, skipped=[])  # fmt: skip
    log(ctx, f"bench_8b on {env['device']}: torch {env['torch']}, triton {env['triton']}, transformers {env['transformers']}; "
             f"writing {ctx.out}")
    torch.manual_seed(0)
    try:
        build(ctx)
        log(ctx, f"model: {ctx.results['model']['base_parameters'] / 1e9:.2f}B parameters, weights "
                 f"{ctx.results['model']['weights_gib']} GiB, built in {ctx.results['model']['build_s']} s")
    except Exception as err:  # noqa: BLE001
        ctx.results["setup_error"] = err_str(err)
        traceback.print_exc()
        ctx.write()
        log(ctx, f"setup failed: {ctx.results['setup_error']}")
        return ctx.results
    ctx.write()
    run = dict(a=section_teacher, b=section_stage1, c=section_lora, d=section_generation)
    for key in SECTIONS:
        if key not in args.sections:
            continue
        if budget.left() <= 0:
            ctx.results["skipped"].append(key)
            ctx.results["sections"][key] = dict(name=SECTION_NAMES[key], status="skipped (budget)")
            log(ctx, f"{key}: skipped, budget of {args.budget_s} s spent")
            ctx.write()
            continue
        log(ctx, f"{key}: {SECTION_NAMES[key]} ...")
        ctx.current = key
        t0 = time.perf_counter()
        try:
            res = dict(name=SECTION_NAMES[key], status="ok", **run[key](ctx))
        except Exception as err:  # noqa: BLE001
            done = ctx.results["sections"].get(key, {})  # runs recorded before the error stay
            res = dict(done, name=SECTION_NAMES[key], status="error", error=err_str(err))
            traceback.print_exc()
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        ctx.results["sections"][key] = res
        ctx.free()
        ctx.write()
        log(ctx, f"{key}: {res['status']} in {res['wall_s']} s")
    log(ctx, f"done; wrote {ctx.out}")
    print(json.dumps(ctx.results["targets"], indent=1), flush=True)
    return ctx.results


if __name__ == "__main__":
    main()
    sys.exit(0)
