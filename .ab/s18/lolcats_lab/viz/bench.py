"""Figures of recorded benchmark results (``benchmarks/results/*.json`` written by bench_attention.py)."""

from __future__ import annotations

import plotly.graph_objects as go


def benchmark_figure(results: dict, *, mode: str = "fwd+bwd", metric: str = "ms") -> go.Figure:
    """One line per provider: ``metric`` ("ms" or "peak_MiB") against sequence length, log-log.

    results: the JSON of a benchmark run ({"env", "shape", "rows": [{"provider", "T", "mode", metric}]}).
    """
    if metric not in ("ms", "peak_MiB", "tokens_per_s"):
        raise ValueError(f"metric must be 'ms', 'peak_MiB' or 'tokens_per_s', got {metric!r}")
    rows = [r for r in results.get("rows", []) if r.get("mode") == mode and r.get(metric)]
    if not rows:
        modes = sorted({r.get("mode") for r in results.get("rows", [])})
        raise ValueError(f"no rows with mode {mode!r} and a {metric!r} value; modes present: {modes}")
    fig = go.Figure()
    for name in dict.fromkeys(r["provider"] for r in rows):  # first-seen order
        pts = sorted((r["T"], r[metric]) for r in rows if r["provider"] == name)
        fig.add_trace(go.Scatter(x=[t for t, _ in pts], y=[m for _, m in pts], mode="lines+markers", name=name))
    env, shape = results.get("env", {}), results.get("shape", {})
    label = {"ms": "ms (median)", "peak_MiB": "peak memory above inputs (MiB)", "tokens_per_s": "tokens / s"}[metric]
    fig.update_layout(
        title=f"{mode}, {shape.get('dtype', '')} B{shape.get('batch', '?')} H{shape.get('heads', '?')} "
              f"D{shape.get('head_dim', '?')} F{shape.get('features', '?')}: {env.get('device', '?')}, "
              f"torch {env.get('torch', '?')}, triton {env.get('triton', '?')}",
        xaxis=dict(type="log", title="sequence length"), yaxis=dict(type="log", title=label),
    )
    return fig
