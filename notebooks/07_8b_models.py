# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · 8B models: the LoLCATs workflow at Llama-3-8B scale
#
# **Goal:** run the whole conversion (load a sharded checkpoint, linearize with the paper's recipe,
# layer-wise attention transfer, LoRA with gradient checkpointing, constant-memory generation) on a
# Llama-3-8B-shaped model, with a memory plan made *before* anything is allocated.
#
# By default this runs on a CPU with an **8B-shaped model of random weights**: the same 32 layers, 32 query
# heads, 8 key/value heads and head dim 128 as Llama-3-8B, but a hidden size of 64 instead of 4096. Every
# number it prints about memory or speed is about that random, narrow model, never about quality.
# Set `REAL_8B = True` in the config cell (and `MODEL_PATH`) to run the real model on a GPU.
#
# CI mode (`LOLCATS_CI=1`): under a minute on a 2-core CPU. Full mode on CPU: about 4 minutes.

# %%
# NBVAL_IGNORE_OUTPUT
import os
import tempfile
import warnings

import torch

from lolcats_lab import linearize, load_model, set_attention_mode, trainable_parameters
from lolcats_lab.scale import (
    MODEL_SHAPES,
    PAPER_RECIPE,
    InsufficientMemory,
    RunShape,
    build_random_model,
    count_parameters,
    enable_gradient_checkpointing,
    estimate_memory,
    format_bytes,
    llama3_8b_config,
    measure_peak,
    model_config,
    require_fit,
)
from lolcats_lab.train import finetune_lora, layer_mse, transfer_layerwise

torch.manual_seed(0)
warnings.filterwarnings("ignore", category=FutureWarning)  # transformers renames gradient checkpointing in v6
# One CPU thread: the matrices of the narrow model are small, and on a busy shared 2-core CPU two threads were
# much slower (see notebook 03). Remove this line on a dedicated machine; the GPU path ignores it.
torch.set_num_threads(1)

# %%
# Config: the only cell to edit. LOLCATS_CI=1 (set by `make test` in CI) shrinks the run.
CI = os.environ.get("LOLCATS_CI") == "1"
REAL_8B = False  # True: the real Llama-3-8B on a GPU (needs the weights: a hub id with access, or a local dir)
MODEL_PATH = "meta-llama/Meta-Llama-3-8B"  # or a local directory with the sharded safetensors
DEVICE = "cuda" if REAL_8B else "cpu"
DTYPE = "bfloat16" if REAL_8B else "float32"  # bf16 weights on the GPU; fp32 on CPU (bf16 matmuls are slow there)
RECIPE = PAPER_RECIPE  # hybrid-tk, window 64, Hedgehog 64 -> 128 features, MSE transfer, LoRA r8 q/k/v/o
if REAL_8B:
    SEQ_LEN, BATCH, TRAIN_SEQS = RECIPE.seq_len, 1, 64  # 64 cached sequences of 1024 tokens: ~3 GiB of cache
    TRANSFER_STEPS, LORA_STEPS = 200, 200  # per layer / in total; the paper spends ~20M tokens per stage
else:
    SEQ_LEN = 160 if CI else 256  # > 2 x window, so the terraced window leaves keys to the linear part
    BATCH, TRAIN_SEQS = 1, 2 if CI else 4
    TRANSFER_STEPS = 2 if CI else 10  # per layer: full mode ~10x the CI cost
    LORA_STEPS = 1 if CI else 5
WIDTH_SCALE = 64  # CPU model: hidden 4096 / 64 = 64, MLP 14336 / 64 = 224; attention shapes unchanged

# %% [markdown]
# ## 1. The 8B shapes
#
# `MODEL_SHAPES` holds the published architecture numbers of Llama-3-8B, Mistral-7B and Qwen2-7B.
# A full-size model built on PyTorch's *meta* device has every parameter's shape but no memory, so we can
# count the 8.03B parameters without allocating 16 GiB.

# %%
# NBVAL_CHECK_OUTPUT
counts = {name: count_parameters(model_config(name)) for name in MODEL_SHAPES}
assert counts["llama3-8b"] == 8_030_261_248  # the published count
{name: f"{n / 1e9:.2f}B" for name, n in counts.items()}

# %% [markdown]
# The CPU stand-in divides only the hidden and MLP widths. `q_proj` still maps to 32 heads x 128 = 4096
# features and `k_proj`/`v_proj` to 8 x 128, so linearization (which touches only attention) sees exactly
# the 8B attention shapes, 32 layers of them.

# %%
# NBVAL_CHECK_OUTPUT
full, small = llama3_8b_config(), llama3_8b_config(width_scale=WIDTH_SCALE)
keys = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")
assert all(getattr(full, k) == getattr(small, k) for k in keys)
{k: getattr(small, k) for k in (*keys, "hidden_size", "intermediate_size")}

# %% [markdown]
# ## 2. A memory plan before anything is allocated
#
# `estimate_memory` adds up weights, gradients, AdamW state, activations and (for layer-wise transfer) the
# cache of teacher activations, for the real Llama-3-8B in bf16 at the paper's sequence length of 1024.
# Its constants were measured on CPU with the PyTorch attention path and it errs high (the module docstring
# of `lolcats_lab.scale.memory` lists every term).
#
# * Stage 1, layer-wise: one layer's maps train at a time from cached teacher inputs, so besides the weights
#   it needs one attention module's activations, plus the cache: 3 copies of a layer's hidden states for
#   every cached sequence.
# * Stage 2: LoRA on q/k/v/o over the whole model; gradient checkpointing keeps only each layer's input.

# %%
config_8b = llama3_8b_config()
plans = {
    "stage 1, layer-wise, 64 seqs": RunShape("transfer", batch_size=1, layerwise=True, train_sequences=64),
    "stage 1, joint": RunShape("transfer", batch_size=1),
    "stage 2, batch 4": RunShape("lora", batch_size=4),
    "stage 2, batch 4, checkpointing": RunShape("lora", batch_size=4, grad_checkpointing=True),
}
estimates = {name: estimate_memory(config_8b, run, model="llama3-8b") for name, run in plans.items()}
for est in estimates.values():
    print(est.table(), end="\n\n")

# %%
# NBVAL_CHECK_OUTPUT
gib = {name: round(e.total / 2**30, 1) for name, e in estimates.items()}
assert gib["stage 1, layer-wise, 64 seqs"] < gib["stage 1, joint"]
assert gib["stage 2, batch 4, checkpointing"] < 0.5 * gib["stage 2, batch 4"]
gib

# %% [markdown]
# When a run will not fit, `require_fit` refuses before loading anything and names the flag that fixes it
# (here: a GPU with 24 GiB free, stage 2 at batch 4):

# %%
# NBVAL_CHECK_OUTPUT
try:
    require_fit(config_8b, plans["stage 2, batch 4"], available=24 * 2**30)
    refusal = None
except InsufficientMemory as err:
    refusal = str(err)
assert refusal is not None and "--grad-checkpointing" in refusal
refusal.split("; ")[-1]

# %% [markdown]
# ## 3. Load: a sharded safetensors checkpoint
#
# Real 8B checkpoints are directories of safetensors shards plus an index. On CPU we make one: build the
# narrow random model and save it in 1 MB shards, then load it back through the same `load_model(dir)` call
# the real model uses. With `REAL_8B` the model comes from `MODEL_PATH` in bf16 (a hub id needs network
# access and `HF_HUB_OFFLINE` unset).

# %%
# NBVAL_IGNORE_OUTPUT
if REAL_8B:
    require_fit(config_8b, RunShape("lora", batch_size=BATCH, seq_len=SEQ_LEN, grad_checkpointing=True), device=DEVICE)
    model, tok = load_model(MODEL_PATH, dtype=DTYPE, device=DEVICE)
    n_shards = None
else:
    ckpt_dir = tempfile.mkdtemp(prefix="lolcats-07-")
    build_random_model(llama3_8b_config(width_scale=WIDTH_SCALE), seed=0).save_pretrained(ckpt_dir, max_shard_size="20MB")
    n_shards = len([f for f in os.listdir(ckpt_dir) if f.startswith("model-") and f.endswith(".safetensors")])
    model, tok = load_model(ckpt_dir, dtype=DTYPE, device=DEVICE)  # tok is None: random weights, no tokenizer
cfg = model.config
n_shards, f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"

# %%
# NBVAL_CHECK_OUTPUT
assert REAL_8B or n_shards > 1
(cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)

# %% [markdown]
# ## 4. Linearize with the paper's recipe
#
# Every attention layer gets a terraced window of 64 tokens plus linear attention through untied Hedgehog
# maps with 64 -> 128 features. Only the maps and the window logits train:
# $L \times (2 \cdot H \cdot d \cdot f + H) = 32 \times (2 \cdot 32 \cdot 128 \cdot 64 + 32)$ parameters,
# the same for the narrow model and for the real one.

# %%
# NBVAL_CHECK_OUTPUT
linearize(model, **RECIPE.linearize_kwargs())
L, H, D, f = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim, RECIPE.feature_dim
n_maps = sum(p.numel() for p in trainable_parameters(model).values())
assert n_maps == L * (2 * H * D * f + H)
n_maps

# %% [markdown]
# ## 5. Data
#
# The real model trains on the default corpus, tokenised and packed into rows of 1024 tokens. The random
# model has no tokenizer, and text would teach it nothing: it gets random token ids of the same shape.

# %%
# NBVAL_CHECK_OUTPUT
if REAL_8B:
    from lolcats_lab.data import prepare_data

    data = prepare_data("default", tok, SEQ_LEN, train_sequences=TRAIN_SEQS, val_sequences=4, progress=False)
    train_ids, val_ids = data.train.to(DEVICE), data.val.to(DEVICE)
else:
    g = torch.Generator().manual_seed(0)
    train_ids = torch.randint(0, cfg.vocab_size, (TRAIN_SEQS, SEQ_LEN), generator=g)
    val_ids = torch.randint(0, cfg.vocab_size, (1, SEQ_LEN), generator=g)
assert train_ids.shape == (TRAIN_SEQS, SEQ_LEN) and SEQ_LEN > 2 * RECIPE.window
train_ids.dtype, SEQ_LEN > 2 * RECIPE.window  # every row reaches past the terraced window

# %% [markdown]
# ## 6. Stage 1: layer-wise attention transfer, with its peak memory
#
# `transfer_layerwise` caches layer 0's inputs for every training sequence, then for each layer runs the
# block once in softmax mode (the teacher), trains that layer's maps for `TRANSFER_STEPS` steps on the
# cached attention inputs, and passes the teacher's outputs on. `measure_peak` records the peak: CUDA's
# allocator on a GPU, a tensor tracker on CPU (which slows the CPU run, so CPU seconds are not throughput).

# %%
# NBVAL_IGNORE_OUTPUT
mse_before = layer_mse(model, val_ids, batch_size=1).mean(-1)  # [L]
stage1_run = RunShape("transfer", batch_size=BATCH, seq_len=SEQ_LEN, dtype=DTYPE, layerwise=True,
                      train_sequences=TRAIN_SEQS)
stage1_est = estimate_memory(cfg, stage1_run)
results, stage1_peak, stage1_s = measure_peak(
    lambda: transfer_layerwise(model, train_ids, RECIPE.transfer_config(steps=TRANSFER_STEPS, batch_size=BATCH, progress=False)),
    device=DEVICE, resident=model.parameters(),
)
mse_after = layer_mse(model, val_ids, batch_size=1).mean(-1)  # [L]
tokens = TRANSFER_STEPS * BATCH * SEQ_LEN  # training tokens seen by every layer
print(f"stage 1 ({'Llama-3-8B' if REAL_8B else '8B-shaped, random weights, hidden 64'}): peak {format_bytes(stage1_peak)}, "
      f"estimate {format_bytes(stage1_est.total)}, {stage1_s:.1f} s"
      + (f", {tokens / stage1_s:,.0f} tokens/s" if DEVICE == "cuda" else " (CPU with tracker: not a throughput figure)"))

# %% [markdown]
# The estimate should bound the measured peak from above without being far off, and the transfer loss
# should fall in most layers even in CI's two steps per layer:

# %%
# NBVAL_CHECK_OUTPUT
ratio = stage1_est.total / stage1_peak
improved = int((mse_after < mse_before).sum())
assert len(results) == L and all(r.steps_done == TRANSFER_STEPS for r in results)
assert 0.9 <= ratio <= 2.0, ratio
assert improved >= 0.75 * L, (improved, L)
"estimate within 0.9-2x of the measured peak", improved >= 0.75 * L

# %% [markdown]
# ## 7. Stage 2: LoRA with gradient checkpointing
#
# peft injects rank-8 adapters into q/k/v/o (inside the linearized wrappers), and
# `enable_gradient_checkpointing` turns on Hugging Face's non-reentrant checkpointing: each decoder layer's
# activations are rebuilt in backward, so only the layer inputs stay alive between forward and backward
# (`tests/test_scale_memory.py` checks that loss and gradients are unchanged).

# %%
# NBVAL_IGNORE_OUTPUT
enable_gradient_checkpointing(model)
lora = RECIPE.lora_settings(steps=LORA_STEPS, batch_size=BATCH, progress=False)
stage2_est = estimate_memory(cfg, RunShape("lora", batch_size=BATCH, seq_len=SEQ_LEN, dtype=DTYPE, grad_checkpointing=True))
lora_result, stage2_peak, stage2_s = measure_peak(lambda: finetune_lora(model, train_ids, lora),
                                                  device=DEVICE, resident=model.parameters())
tokens = LORA_STEPS * BATCH * SEQ_LEN
print(f"stage 2 ({'Llama-3-8B' if REAL_8B else '8B-shaped, random weights, hidden 64'}): peak {format_bytes(stage2_peak)}, "
      f"estimate {format_bytes(stage2_est.total)}, {stage2_s:.1f} s"
      + (f", {tokens / stage2_s:,.0f} tokens/s" if DEVICE == "cuda" else " (CPU with tracker: not a throughput figure)"))

# %%
# NBVAL_CHECK_OUTPUT
n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
r, h, kv = RECIPE.lora_rank, cfg.hidden_size, cfg.num_key_value_heads
assert n_lora == L * r * (2 * (h + H * D) + 2 * (h + kv * D))  # q, o: h <-> H*D; k, v: h -> Hkv*D
assert all(torch.isfinite(torch.tensor(rec["loss"])) for rec in lora_result.history)
assert 0.9 <= stage2_est.total / stage2_peak <= 2.0, stage2_est.total / stage2_peak
n_lora

# %% [markdown]
# ## 8. Generation with constant memory
#
# In linear mode the cache holds, per layer, the recurrent state $S = \sum_j \phi(k_j) v_j^\top$, its
# normaliser and the last window of keys and values, so its size does not grow with the context:

# %%
# NBVAL_CHECK_OUTPUT
model.eval()
set_attention_mode(model, "linear")
prompt = val_ids[:, : 2 * RECIPE.window + 8]
NEW_TOKENS = 4 if CI else 16
with torch.no_grad():
    out = model.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
out.shape[1] == prompt.shape[1] + NEW_TOKENS

# %% [markdown]
# At full size the constant-size cache is also what makes decoding fast: a softmax step must read the whole
# KV cache (32 GiB at batch 8 after a 32k-token prompt), a linearized step only its state (1.3 GiB). On a
# GPU the linearized cache steps through a Triton kernel with positions kept on the device, so one greedy
# step of the whole model can be captured in a CUDA graph and replayed without Python in the loop. Recorded
# on an H100 (`benchmarks/bench_8b.py --sections d`, random 8B-shaped weights, batch 8; the softmax model's
# KV cache in a transformers `StaticCache`, the faster of its two SDPA variants):

# %%
import json
import pathlib

import plotly.graph_objects as go

GEN = pathlib.Path("..") / "benchmarks" / "results" / "NVIDIA_H100_80GB_HBM3-8b-generation-2026-11-23.json"
runs = json.loads(GEN.read_text())["sections"]["d"]["runs"]
step_ms = {(r["mode"], r["prompt"], harness): (r["graph"]["ms_per_step"] if harness == "graph" else r["decode_ms_per_step"])
           for r in runs for harness in ("eager", "graph")}  # fmt: skip
labels = [f"{harness}, {p // 1024}k prompt" for harness in ("eager", "graph") for p in (2048, 32768)]
fig = go.Figure([
    go.Bar(name=mode, x=labels, y=[step_ms[mode, p, h] for h in ("eager", "graph") for p in (2048, 32768)])
    for mode in ("softmax", "linear")
])  # fmt: skip
fig.update_layout(barmode="group", yaxis_title="ms per decode step (batch 8)", height=360,
                  title="8B-shaped model on an H100: softmax vs linearized decoding")  # fmt: skip
fig.show()

# %%
# NBVAL_CHECK_OUTPUT
ratio_32k = step_ms["softmax", 32768, "graph"] / step_ms["linear", 32768, "graph"]
linear_peaks = [r["decode_peak_gib"] for r in runs if r["mode"] == "linear"]
softmax_peaks = [r["decode_peak_gib"] for r in runs if r["mode"] == "softmax"]
assert ratio_32k > 3 and max(linear_peaks) - min(linear_peaks) < 0.5 < max(softmax_peaks) - min(softmax_peaks)
round(ratio_32k, 1), round(max(linear_peaks), 1), round(max(softmax_peaks), 1)

# %% [markdown]
# Prefill, one forward over the whole prompt, gains too at long prompts: the linearized attention is
# linear in the prompt's length, softmax quadratic, while the MLPs cost both models the same. Recorded on
# an H200 (session 12, batch 8). Each timed prefill follows an untimed 1024-token one: the first call of
# the Triton kernels compiles and autotunes them, seconds that an earlier run had counted in its first
# linearized prefill.

# %%
GEN12 = pathlib.Path("..") / "benchmarks" / "results" / "NVIDIA_H200-8b-gen-2026-12-02-session12.json"
runs12 = json.loads(GEN12.read_text())["sections"]["d"]["runs"]
prefill_s = {(r["mode"], r["prompt"]): r["prefill_s"] for r in runs12}
prompts = sorted({p for _, p in prefill_s})
fig = go.Figure([go.Bar(name=mode, x=[f"{p // 1024}k prompt" for p in prompts], y=[prefill_s[mode, p] for p in prompts])
                 for mode in ("softmax", "linear")])  # fmt: skip
fig.update_layout(barmode="group", yaxis_title="prefill seconds (batch 8)", height=340,
                  title="8B-shaped model on an H200: prefill, softmax vs linearized")  # fmt: skip
fig.show()

# %%
# NBVAL_CHECK_OUTPUT
prefill_ratio_32k = prefill_s["softmax", 32768] / prefill_s["linear", 32768]
assert prefill_ratio_32k > 1 and all(r["prefill_warmup_tokens"] == 1024 for r in runs12)
round(prefill_ratio_32k, 2)

# %% [markdown]
# ## Scale it up
#
# * **The real model on one GPU:** `REAL_8B = True` above, `MODEL_PATH` a local directory with the sharded
#   safetensors (or a hub id with access). The memory plan refuses before loading when the GPU is too small.
# * **Past one GPU** (`lolcats_lab.scale.distributed`), two ways to split stage 1:
#   * `--shard data`: every rank trains every layer on its own rows and the map gradients are averaged
#     after each backward (the same maps as one process whose batch joins the ranks' batches);
#   * `--shard layers`: each rank trains a block of layers, recomputing the teacher forward through the
#     layers before its block; the trained maps are broadcast at the end, bit-for-bit one process's.
#
#   Stage 2 runs with FSDP2. Recorded on two H200s (random 8B-shaped weights, seq 1024, batch 4 per rank,
#   40 steps per layer; `bash benchmarks/gpu_session.sh dist`):

# %%
DIST = pathlib.Path("..") / "benchmarks" / "results" / "NVIDIA_H200x2-8b-distributed-2026-11-23.json"
dist = json.loads(DIST.read_text())
names = ["1 GPU"] + [f"2 GPUs, --shard {r['shard']}" for r in dist["runs"]]
rates = [dist["one_gpu"]["trained_tokens_per_s"]] + [r["trained_tokens_per_s"] for r in dist["runs"]]
fig = go.Figure(go.Bar(x=names, y=[r / 1e3 for r in rates],
                       text=["1.00x"] + [f"{r['throughput_ratio']:.2f}x" for r in dist["runs"]]))
fig.update_layout(yaxis_title="stage 1: trained k tokens/s", height=340,
                  title="Layer-wise attention transfer on 2 H200s (target: 1.8x one GPU)")  # fmt: skip
fig.show()

# %% [markdown]
# Data parallelism scales (each rank does the one-GPU job on its own rows); layer sharding stops short
# because the second rank repeats the teacher forward through the first rank's layers. The commands (they
# need two GPUs and the weights):

# %%
# NBVAL_SKIP
# needs 2 GPUs and the weights: run it from a shell, not from this notebook
print("torchrun --nproc-per-node 2 -m lolcats_lab.scale.distributed transfer --model /path/to/Meta-Llama-3-8B "
      "--data default --out runs/llama3-8b --train-sequences 64 --steps 200 --shard data")
print("torchrun --nproc-per-node 2 -m lolcats_lab.scale.distributed lora --model /path/to/Meta-Llama-3-8B "
      "--checkpoint runs/llama3-8b/checkpoint --data default --out runs/llama3-8b-lora --grad-checkpointing")

# %% [markdown]
# ## Recap
#
# * `lolcats_lab.scale` knows the 8B shapes (`MODEL_SHAPES`, `llama3_8b_config`) and the paper's recipe
#   (`PAPER_RECIPE`), and builds 8B-shaped narrow models with random weights for CPU work.
# * `estimate_memory` / `require_fit` plan a run before it allocates and name the flag that makes it fit;
#   `measure_peak` checks the plan against reality.
# * Stage 1 runs layer by layer from cached teacher inputs; stage 2 uses gradient checkpointing; decoding
#   keeps a constant-size cache.
# * What this notebook did **not** show: quality or speed of a real 8B conversion. Those need the GPU path.
