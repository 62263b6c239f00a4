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
# # 08 · Reproducing the paper's ablations at small scale
#
# **Goal:** read the recorded CPU ablation of the LoLCATs recipe on SmolLM2-135M (attention type, feature
# map, with and without attention transfer and LoRA), the passkey probe and the MiniLM encoder run, see
# which of the paper's findings hold at this scale and where small scale differs, and rerun one row of the
# table live so you can check a number yourself.
#
# CI mode (`LOLCATS_CI=1`): about 40 s on a 2-core CPU (two live rows of 4 transfer + 2 LoRA steps). Full
# mode: about 6 minutes (the same two rows at the quick preset, ~3 minutes each).

# %%
# NBVAL_IGNORE_OUTPUT
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from lolcats_lab.pipeline import LinearizeSettings, run_linearize
from lolcats_lab.viz import layer_mse_bars

torch.manual_seed(0)
# One CPU thread: these matrices are small, and on a busy shared CPU two threads were up to 15x slower
# (3 transfer steps: 2 s with one thread, 36 s with two). Remove this line on a dedicated machine.
torch.set_num_threads(1)

# %%
# Config: the only cell to edit. LOLCATS_CI=1 (set by `make test` in CI) shrinks the live rows.
CI = os.environ.get("LOLCATS_CI") == "1"
RESULTS = Path("../benchmarks/results") if Path("../benchmarks/results").is_dir() else Path("benchmarks/results")
LIVE_ROWS = [("hybrid-tk", "hedgehog"), ("hybrid-tk", "elu")]  # (attention, feature map) rows rerun below
# CI: 4 transfer + 2 LoRA steps on 64-token sequences, window 16 (~20 s per row);
# full: the quick preset exactly as recorded (150 + 20 steps, seq 128, window 32; ~3 min per row)
LIVE_SIZES = dict(transfer_steps=4, lora_steps=2, train_sequences=24, val_sequences=4, window=16, seq_len=64,
                  sample_tokens=6) if CI else {}
MSE_DROP = 0.9  # check: transfer must cut the Hedgehog row's mean per-layer MSE to below 90% of its start

# %% [markdown]
# ## 1. The recorded runs
#
# Every row of the table below is one `lolcats-lab linearize` run (the quick preset: 150 attention-transfer
# steps and 20 LoRA steps of 2 sequences of 128 tokens, so 38,400 + 5,120 tokens; window 32) on the
# embedded SmolLM2-135M-Instruct with **one** setting changed. Validation perplexity is measured on the same
# 12 held-out sequences of the default corpus each time; the teacher (the unmodified softmax model) scores
# 23.46. "MSE" is the attention-output error between softmax and linearized attention before `o_proj`,
# averaged over heads, one number per layer, measured on 4 validation sequences.
#
# The files were written by `lolcats-lab linearize` (`metrics.json` of each run, gathered into
# `ablation-cpu-smollm2-2026-11-23.json`) and by `benchmarks/ablation_walltime.py` (the same rows again,
# run one at a time in their own process to time them).

# %%
# NBVAL_IGNORE_OUTPUT
ablation = json.loads((RESULTS / "ablation-cpu-smollm2-2026-11-23.json").read_text())
passkey = json.loads((RESULTS / "passkey-cpu-smollm2-2026-11-23.json").read_text())
minilm = json.loads((RESULTS / "minilm-embedding-cpu-2026-11-23.json").read_text())
walltime_files = sorted(RESULTS.glob("ablation-walltime-*.json"))
walltime = json.loads(walltime_files[-1].read_text()) if walltime_files else {"rows": {}}
LABELS = {"hedgehog": "Hedgehog", "elu": "elu+1", "performer": "Performer", "taylor": "Taylor (2nd order)"}


def label(name: str) -> str:
    attention, fmap = name.split("/")
    return f"{attention} · {LABELS.get(fmap, fmap)}"


def mean(xs) -> float:
    return float(np.mean(xs))


rows = []
for name, m in ablation.items():
    timed = walltime["rows"].get(name, {})
    rows.append(dict(
        row=label(name), mse_before=mean(m["layer_mse_before"]), mse_after=mean(m["layer_mse_after"]),
        ppl_before=m["ppl_before_transfer"], ppl_transfer=m["ppl_after_transfer"], ppl_lora=m["ppl_after_lora"],
        wall_alone=timed.get("wall_seconds"), load=(timed.get("load1_during") or {}).get("mean"),
    ))
teacher_ppl = next(iter(ablation.values()))["teacher_ppl"]
header = f"{'row':34s} {'MSE before -> after':>24s} {'ppl before':>10s} {'transfer':>9s} {'LoRA':>7s} {'wall s':>7s}"
print(header)
for r in rows:
    wall = f"{r['wall_alone']:7.0f}" if r["wall_alone"] else "      -"
    print(f"{r['row']:34s} {r['mse_before']:10.2e} -> {r['mse_after']:.2e} ({r['mse_before'] / r['mse_after']:3.1f}x)"
          f" {r['ppl_before']:10.1f} {r['ppl_transfer']:9.2f} {r['ppl_lora']:7.2f} {wall}")
print(f"teacher (softmax) perplexity {teacher_ppl:.2f}")

# %%
# The same table as a figure (hover for the numbers); wall time is per row, one run at a time.
fmt = lambda xs, f: [f.format(x) if x is not None else "-" for x in xs]  # noqa: E731
fig = go.Figure(go.Table(
    header=dict(values=["row", "MSE before", "MSE after", "ppl before transfer", "after transfer", "after LoRA",
                        "wall s (alone)", "mean load"], align="left"),
    cells=dict(values=[[r["row"] for r in rows], fmt([r["mse_before"] for r in rows], "{:.2e}"),
                       fmt([r["mse_after"] for r in rows], "{:.2e}"), fmt([r["ppl_before"] for r in rows], "{:.1f}"),
                       fmt([r["ppl_transfer"] for r in rows], "{:.2f}"), fmt([r["ppl_lora"] for r in rows], "{:.2f}"),
                       fmt([r["wall_alone"] for r in rows], "{:.0f}"), fmt([r["load"] for r in rows], "{:.2f}")],
               align="left"),
))
fig.update_layout(title=f"Quick-preset ablation on SmolLM2-135M (teacher perplexity {teacher_ppl:.2f})",
                  height=330, margin=dict(t=50, b=10))
fig.show()

# %% [markdown]
# ## 2. Perplexity at each stage
#
# Three bars per row: right after conversion (feature maps untrained), after attention transfer, after
# LoRA. The dashed line is the teacher. The y axis is logarithmic: pure linear attention starts at a
# perplexity in the thousands.

# %%
stages = [("ppl_before", "before transfer"), ("ppl_transfer", "after attention transfer"), ("ppl_lora", "after LoRA")]
fig = go.Figure([go.Bar(x=[r["row"] for r in rows], y=[r[key] for r in rows], name=name,
                        hovertemplate="%{x}<br>perplexity %{y:.2f}") for key, name in stages])
fig.add_hline(y=teacher_ppl, line_dash="dash", annotation_text=f"teacher {teacher_ppl:.2f}")
fig.update_layout(barmode="group", yaxis=dict(type="log", title="validation perplexity"),
                  title="Validation perplexity before transfer, after transfer, after LoRA")
fig.show()

# %% [markdown]
# ## 3. Per-layer attention error
#
# One line per row: the mean-over-heads MSE of each layer after transfer (solid) and before it (dotted).
# Later layers are harder to match in every row. A fixed feature map (elu+1, Taylor) has nothing for
# transfer to train except the per-head window factor, so its two lines lie on top of each other.

# %%
fig = go.Figure()
palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
for color, (name, m) in zip(palette, ablation.items()):
    layers = np.arange(len(m["layer_mse_after"]))
    fig.add_scatter(x=layers, y=m["layer_mse_before"], mode="lines", line=dict(color=color, dash="dot"),
                    name=f"{label(name)}, before", legendgroup=name, showlegend=False)
    fig.add_scatter(x=layers, y=m["layer_mse_after"], mode="lines+markers", line=dict(color=color),
                    name=label(name), legendgroup=name)
fig.update_layout(xaxis_title="layer", yaxis=dict(type="log", title="attention-output MSE"),
                  title="Per-layer MSE after transfer (solid) and before (dotted)")
fig.show()

# %% [markdown]
# ## 4. Which of the paper's findings hold here
#
# The LoLCATs paper (Zhang et al. 2024) reports, on Llama 3 8B with 20M transfer tokens at sequence length
# 1024: (a) the sliding window + linear hybrid beats pure linear attention; (b) the learnable Hedgehog map
# beats fixed maps; (c) attention transfer followed by LoRA beats either alone. The cell below reads the
# same orderings off the recorded numbers; its output is compared by the notebook test, so a change in the
# recorded results shows up there.

# %%
# NBVAL_CHECK_OUTPUT
after_lora = {name: m["ppl_after_lora"] for name, m in ablation.items()}
mse_after = {name: mean(m["layer_mse_after"]) for name, m in ablation.items()}
findings = {
    "window beats pure linear (ppl after LoRA)": max(after_lora["hybrid-tk/hedgehog"],
                                                     after_lora["hybrid-sw/hedgehog"]) < after_lora["linear/hedgehog"],
    "Hedgehog beats every fixed map (ppl after LoRA)": all(
        after_lora["hybrid-tk/hedgehog"] < after_lora[f"hybrid-tk/{f}"] for f in ("elu", "performer", "taylor")),
    "Hedgehog beats every fixed map (MSE after transfer)": all(
        mse_after["hybrid-tk/hedgehog"] < mse_after[f"hybrid-tk/{f}"] for f in ("elu", "performer", "taylor")),
    "transfer lowers perplexity in every Hedgehog row": all(
        m["ppl_after_transfer"] < m["ppl_before_transfer"] for n, m in ablation.items() if n.endswith("hedgehog")),
    "LoRA lowers perplexity further in every row": all(
        m["ppl_after_lora"] < m["ppl_after_transfer"] for m in ablation.values()),
}
findings

# %% [markdown]
# **Where small scale differs from the paper.**
#
# * The orderings hold, the absolute numbers do not carry over: 150 transfer steps of 256 tokens leave every
#   run far from convergence (the paper trains on 20M tokens at sequence length 1024), so the best row
#   still sits at 1.07x the teacher's perplexity after LoRA.
# * tk beats sw here partly because with w = 32 a tk window holds 32-63 keys and an sw window exactly 32:
#   the tk row simply sees more exact keys. The paper compares them at its own window size.
# * Fixed maps have nothing for attention transfer to train except the window factor, so their MSE barely
#   moves (1.0-1.1x); Performer starts closest of the fixed maps because its random features estimate
#   $\exp(q \cdot k)$ from the start, and LoRA recovers part of the gap for each of them.
# * The Taylor map's 4161 features make it by far the slowest row on a CPU.

# %% [markdown]
# ## 5. Wall time, one row at a time
#
# `benchmarks/ablation_walltime.py` reruns every row in its own process, one after another, with
# `OMP_NUM_THREADS=2`, and records wall seconds, the process's CPU seconds and the 1-minute load average
# sampled while it ran. The development machine is shared: a mean load well above 2 means other jobs
# competed for its 2 cores, and that row's time is an upper bound.

# %%
timed = [(label(n), t) for n, t in walltime["rows"].items() if t.get("returncode") == 0]
if timed:
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_bar(x=[n for n, _ in timed], y=[t["wall_seconds"] for _, t in timed], name="wall s",
                hovertemplate="%{x}<br>%{y:.0f} s wall")
    fig.add_bar(x=[n for n, _ in timed], y=[t["cpu_seconds"] for _, t in timed], name="CPU s (process)",
                hovertemplate="%{x}<br>%{y:.0f} CPU s")
    fig.add_scatter(x=[n for n, _ in timed], y=[t["load1_during"]["mean"] for _, t in timed], mode="markers",
                    marker=dict(size=12, symbol="diamond"), name="mean 1-min load", secondary_y=True)
    fig.update_yaxes(title_text="seconds", secondary_y=False)
    fig.update_yaxes(title_text="load average", secondary_y=True, rangemode="tozero")
    fig.update_layout(barmode="group", title=f"Wall time per ablation row (OMP_NUM_THREADS={walltime['omp_num_threads']})")
    fig.show()
else:
    print("no ablation-walltime-*.json in", RESULTS, "- run benchmarks/ablation_walltime.py to make one")

# %% [markdown]
# ## 6. Beyond perplexity: passkey retrieval and a bidirectional encoder
#
# **Passkey** (the `make demo` checkpoint, hybrid-tk window 32): a 5-digit key hidden in filler text, 5
# trials per context length. The teacher always finds it; the linearized model only sometimes at 128 tokens
# and never beyond, where the key lies outside the window and only the linear state remembers it. This is
# linear attention's known weakness, shown as it is.
#
# **MiniLM** (all-MiniLM-L6-v2, bidirectional; 120 transfer steps, no LoRA): the mean cosine similarity of
# the linearized model's sentence embeddings to the teacher's on 64 held-out texts.

# %%
fig = make_subplots(rows=1, cols=2, subplot_titles=("Passkey found (of 5 trials)", "MiniLM embedding cosine to teacher"))
lengths = [str(n) for n in passkey["lengths"]]
for who, key in (("teacher (softmax)", "teacher_softmax"), ("linearized (hybrid-tk)", "linearized")):
    fig.add_bar(x=lengths, y=[r["correct"] for r in passkey[key]], name=who, row=1, col=1)
runs = minilm["runs"]
fig.add_bar(x=list(runs), y=[r["cosine_before"] for r in runs.values()], name="before transfer", row=1, col=2)
fig.add_bar(x=list(runs), y=[r["cosine_after"] for r in runs.values()], name="after transfer", row=1, col=2)
fig.add_scatter(x=list(runs), y=[r["cosine_after_min"] for r in runs.values()], mode="markers",
                marker=dict(symbol="line-ew-open", size=30), name="worst text after", row=1, col=2)
fig.update_xaxes(title_text="context tokens", type="category", row=1, col=1)
fig.update_yaxes(range=[0, 1], row=1, col=2)
fig.update_layout(barmode="group", title="Where linearization stands beyond perplexity")
fig.show()

# %%
assert all(r["correct"] == r["trials"] for r in passkey["teacher_softmax"])
assert all(r["cosine_after"] > r["cosine_before"] for r in runs.values())

# %% [markdown]
# ## 7. Rerun a row yourself
#
# `run_linearize` is what `lolcats-lab linearize` runs: load, linearize, attention transfer, LoRA, evaluate,
# save. We run two rows of the table, Hedgehog and elu+1 (both hybrid-tk), with the sizes of the config
# cell. In full mode (`LOLCATS_CI=` empty) these are exactly the recorded quick-preset runs with seed 0;
# on the same machine and versions they give the recorded perplexities. In CI mode the runs are tiny, so
# only the direction is checked.

# %%
# NBVAL_IGNORE_OUTPUT
live = {}
with tempfile.TemporaryDirectory() as tmp:
    for attention, fmap in LIVE_ROWS:
        name = f"{attention}/{fmap}"
        settings = LinearizeSettings(out=f"{tmp}/{attention}-{fmap}", attention=attention, feature_map=fmap,
                                     preset="quick", progress=False, **LIVE_SIZES)
        live[name] = run_linearize(settings, log=lambda msg: None)
        m = live[name]
        print(f"{label(name):26s} MSE {mean(m['layer_mse_before']):.2e} -> {mean(m['layer_mse_after']):.2e}   "
              f"ppl {m['ppl_before_transfer']:.1f} -> {m['ppl_after_transfer']:.2f} -> {m['ppl_after_lora']:.2f}   "
              f"({m['wall_seconds']:.0f} s)")

# %%
hh = live["hybrid-tk/hedgehog"]
fig = layer_mse_bars(hh["layer_mse_before"], hh["layer_mse_after"],
                     title=f"Live row: hybrid-tk + Hedgehog, {hh['settings']['transfer_steps']} transfer steps")
fig.show()

# %% [markdown]
# The check: transfer must lower the Hedgehog row's mean per-layer MSE to below `MSE_DROP` (90%) of where it
# started (the recorded quick-preset run reaches 19%, CI's 4 steps reach well under 90%), and after transfer
# Hedgehog must be below elu+1, which has nothing to learn but the window factor. In full mode the live rows
# are the recorded runs, so their perplexities are also compared with the recorded ones (relative 2%: the
# same seed with another thread count, CPU or torch version may differ in the last digits).

# %%
mse = {name: (mean(m["layer_mse_before"]), mean(m["layer_mse_after"])) for name, m in live.items()}
assert mse["hybrid-tk/hedgehog"][1] < MSE_DROP * mse["hybrid-tk/hedgehog"][0], mse
assert mse["hybrid-tk/hedgehog"][1] < mse["hybrid-tk/elu"][1], mse
if not CI:
    for name, m in live.items():
        rec = ablation[name]
        for key in ("teacher_ppl", "ppl_before_transfer", "ppl_after_transfer", "ppl_after_lora"):
            assert abs(m[key] - rec[key]) <= 0.02 * rec[key], (name, key, m[key], rec[key])
{name: f"{b:.2e} -> {a:.2e} ({b / a:.2f}x)" for name, (b, a) in mse.items()}

# %% [markdown]
# ## Exercise
#
# Add `("hybrid-sw", "hedgehog")` to `LIVE_ROWS` and predict, before running, whether its MSE after transfer
# lands above or below the tk row's. Then explain the result with the window sizes of section 4.

# %%
# Solution (hidden in JupyterLab: collapse this cell to try the exercise first)
# sw sees exactly w keys exactly, tk between w and 2w - 1, so at equal w the tk row keeps more of softmax
# exact and its MSE after transfer is lower; compare the tk and sw lines of section 3 (5.3x vs 5.4x drops,
# but from a lower start for tk).
sw_vs_tk = mean(ablation["hybrid-sw/hedgehog"]["layer_mse_after"]) > mean(ablation["hybrid-tk/hedgehog"]["layer_mse_after"])
assert sw_vs_tk

# %% [markdown]
# ## Scale it up
#
# The paper's recipe is `--preset paper` (seq 1024, window 64, Hedgehog 64 -> 128 features, 2000 transfer and
# 2000 LoRA steps); on a GPU:
#
# ```bash
# lolcats-lab linearize --out runs/paper-tk --preset paper --device cuda --dtype bfloat16
# ```

# %%
# NBVAL_SKIP
# (GPU-sized: hours on a CPU) one ablation row at the paper's settings
metrics = run_linearize(LinearizeSettings(out="runs/paper-tk", preset="paper", device="cuda", dtype="bfloat16"))

# %% [markdown]
# ## Recap
#
# * At 150 transfer steps on a 135M model, the paper's orderings hold: a window beats pure linear attention by
#   a wide margin, a trained Hedgehog map beats elu+1, Performer and Taylor, and LoRA after transfer helps
#   every row.
# * The absolute numbers are small-scale numbers: far from convergence, and tk vs sw is confounded by window
#   size at w = 32.
# * Retrieval beyond the window is where linear attention still fails (passkey), shown as measured.
# * One call, `run_linearize`, reproduces a row; the JSON files in `benchmarks/results` hold every number.
