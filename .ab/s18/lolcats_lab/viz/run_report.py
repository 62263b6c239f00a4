"""The report of one ``lolcats-lab linearize`` run: the figures of report.html, built from metrics.json
plus the attention maps the pipeline kept."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from .figures import attention_maps, entropy_comparison, layer_mse_bars, training_curves
from .report import write_report


def _table(header: list[str], rows: list[list], title: str) -> go.Figure:
    cols = [list(c) for c in zip(*rows)] if rows else [[] for _ in header]
    fig = go.Figure(go.Table(header=dict(values=header, align="left"), cells=dict(values=cols, align="left")))
    fig.update_layout(title=title, height=120 + 40 * max(1, len(rows)), margin=dict(l=10, r=10, t=40, b=10))
    return fig


def run_figures(metrics: dict, maps: dict | None = None, tokens: list[str] | None = None) -> list[tuple[str, go.Figure]]:
    """(heading, figure) pairs for a run. ``maps``: {"worst"/"best": (layer, head, softmax [T, T], linear [T, T])}."""
    ppl_rows = [[name, f"{metrics[key]:.2f}"] for name, key in (
        ("teacher (softmax)", "teacher_ppl"), ("linearized, before transfer", "ppl_before_transfer"),
        ("after attention transfer", "ppl_after_transfer"), ("after LoRA", "ppl_after_lora"))]
    figs = [
        ("Perplexity on the validation split", _table(["model", "perplexity"], ppl_rows, "Perplexity (lower is better)")),
        ("Attention-output MSE per layer", layer_mse_bars(metrics["layer_mse_before"], metrics["layer_mse_after"])),
    ]
    curve, loss = metrics.get("transfer_layer_mse"), metrics.get("transfer_loss")
    if curve and len(curve) == len(loss or curve):
        figs.append(("Attention transfer: MSE per layer and the loss over training",
                     training_curves(curve, loss, title="Attention transfer")))
    figs.append(("Per-head entropy: teacher vs linearized (after transfer)",
                 entropy_comparison(metrics["head_entropy_teacher"], metrics["head_entropy_after"])))
    for label, (layer, head, a_soft, a_lin) in (maps or {}).items():
        fig = attention_maps({"softmax": a_soft, "linearized": a_lin}, tokens, log_scale=True,  # maps are spiky
                             title=f"{label} head after transfer: layer {layer}, head {head} (log scale)")
        figs.append((f"Attention maps, {label} head (layer {layer}, head {head})", fig))
    samples = metrics.get("samples") or []
    if samples:
        rows = [[s["prompt"], s["teacher"], s["linearized"]] for s in samples]
        figs.append(("Sample generations (greedy)", _table(["prompt", "teacher", "linearized + LoRA"], rows, "Samples")))
    return figs


def write_run_report(path: str | Path, metrics: dict, maps: dict | None = None, tokens: list[str] | None = None) -> Path:
    s = metrics.get("settings", {})
    description = (
        f"{s.get('model')} converted to {s.get('attention')} attention with {s.get('feature_map')} feature maps "
        f"(window {s.get('window')}), {metrics.get('transfer_tokens')} transfer tokens and "
        f"{metrics.get('lora_tokens')} LoRA tokens in {metrics.get('wall_seconds', 0):.0f} s."
    )
    return write_report(run_figures(metrics, maps, tokens), path, title="lolcats-lab linearize report", description=description)
