"""Plotly figures comparing softmax attention with its linearized counterparts.

Every function is a pure function of tensors/arrays and returns a plain ``plotly.graph_objects.Figure``
(render it in JupyterLab, export it with :func:`lolcats_lab.viz.write_report`, or assert on
``fig.data`` in tests). Nothing here prints or shows.

Conventions: attention maps are [T, T] with rows = queries (top to bottom) and columns = keys; the causal
upper triangle (key after query) is NaN and shows as the grey plot background. Per-head grids are
[L, H] (rows = layers, columns = heads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from ..metrics import mse
from ._data import block_average, block_factor, block_labels, causal_nan, check_map_dict, check_tokens, log10_floor, to_numpy

__all__ = [
    "attention_maps",
    "error_maps",
    "head_metric_grid",
    "entropy_comparison",
    "layer_mse_bars",
    "mse_curves",
    "training_curves",
]

MASK_COLOR = "#d9d9d9"  # plot background = colour of masked (NaN) cells
MAX_TICKS = 32  # at most this many labelled ticks per map axis


def _categories(labels: list[str]) -> list[str]:
    """Unique category names "i: label" for the map axes (repeated tokens must not merge into one row)."""
    return [f"{i}: {lab}" for i, lab in enumerate(labels)]


def _ticks(labels: list[str]) -> dict:
    """Category axis showing the plain labels, at most MAX_TICKS of them."""
    step = max(1, -(-len(labels) // MAX_TICKS))
    idx = list(range(0, len(labels), step))
    cats = _categories(labels)
    return dict(type="category", tickmode="array", tickvals=[cats[i] for i in idx], ticktext=[labels[i] for i in idx])


def colorbar_after(fig: go.Figure, col: int, title: str) -> dict:
    """Colour-bar settings placing it just right of subplot column ``col`` (1-based) of a one-row figure."""
    key = "xaxis" if col == 1 else f"xaxis{col}"
    return dict(title=dict(text=title, side="right"), x=fig.layout[key].domain[1] + 0.005, xanchor="left",
                thickness=12, len=0.85)


def _map_heatmap(z: np.ndarray, labels: list[str], name: str, coloraxis: str, value_name: str) -> go.Heatmap:
    """One map panel: z [n, n] on category axes "i: label"; hover names the query, the key and the value."""
    cats = _categories(labels)
    return go.Heatmap(
        z=z, x=cats, y=cats, coloraxis=coloraxis, name=name,
        hovertemplate=f"query %{{y}}<br>key %{{x}}<br>{value_name} = %{{z:.4g}}<extra>{name}</extra>",
    )


def _difference_pair(difference, labels: list[str]) -> tuple[str, str] | None:
    if difference is None:
        return None
    if difference == "auto":
        return (labels[0], labels[-1]) if len(labels) >= 2 else None
    if (isinstance(difference, (tuple, list)) and len(difference) == 2
            and all(d in labels for d in difference) and difference[0] != difference[1]):
        return str(difference[0]), str(difference[1])
    raise ValueError(f"difference must be None, 'auto' or a pair of two different map names from {labels}, got {difference!r}")


def attention_maps(
    maps: Mapping[str, object],
    tokens: Sequence[str] | None = None,
    *,
    log_scale: bool = False,
    max_tokens: int = 128,
    causal: bool = True,
    difference: str | tuple[str, str] | None = "auto",
    floor: float = 1e-6,
    title: str = "Attention maps",
    colorscale: str = "Viridis",
) -> go.Figure:
    """Attention maps side by side with one shared colour scale, plus an absolute-difference panel.

    Args:
        maps: ``{label: A [T, T]}`` in display order, e.g. ``{"softmax": a_soft[0, h], "linear": a_lin[0, h],
            "hybrid": a_hyb[0, h]}``; tensors or arrays, one shape.
        tokens: T labels for the axes (e.g. ``tokenizer.convert_ids_to_tokens(ids)``); positions if None.
        log_scale: colour log10(max(A, floor)), for spiky maps whose small weights vanish on a linear scale.
        max_tokens: maps longer than this are block-averaged (f x f blocks, f = ceil(T / max_tokens)); the
            title says so and ``fig.layout.meta["block"]`` holds f.
        causal: show the strict upper triangle as masked (NaN, grey).
        difference: ``"auto"`` adds ``|first - last|``, a pair ``(a, b)`` adds ``|a - b|``, None adds nothing.
            The difference has its own colour scale (``coloraxis2``); it is averaged after taking |a - b|.
        floor: smallest weight shown in log scale.

    Returns:
        A figure with one ``go.Heatmap`` per panel; map panels share ``coloraxis`` (range [0, max] or
        [log10(floor), log10(max)]), the difference panel uses ``coloraxis2``.
    """
    arrs = check_map_dict(maps)
    T = next(iter(arrs.values())).shape[0]
    tokens = check_tokens(tokens, T)
    if not (isinstance(floor, (int, float)) and floor > 0):
        raise ValueError(f"floor must be a positive number (the smallest weight shown in log scale), got {floor!r}")
    pair = _difference_pair(difference, list(arrs))
    panels = dict(arrs)
    diff_label = None
    if pair is not None:
        diff_label = f"|{pair[0]} - {pair[1]}|"
        panels[diff_label] = np.abs(arrs[pair[0]] - arrs[pair[1]])
    f = block_factor(T, max_tokens)
    panels = {k: block_average(causal_nan(v) if causal else v, f) for k, v in panels.items()}  # [n, n] each
    if log_scale:
        panels = {k: log10_floor(v, floor) for k, v in panels.items()}
    labels = block_labels(tokens, T, f)

    spacing = 0.075 if diff_label is not None else 0.04  # room for the maps' colour bar before the difference
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels), horizontal_spacing=spacing)
    value_name = "log10 A" if log_scale else "A"
    for col, (label, z) in enumerate(panels.items(), start=1):
        axis = "coloraxis2" if label == diff_label else "coloraxis"
        shown = ("log10 " if log_scale else "") + (label if label == diff_label else "A")
        fig.add_trace(_map_heatmap(z, labels, label, axis, shown), row=1, col=col)
        fig.update_xaxes(**_ticks(labels), tickangle=-60, title_text="key", row=1, col=col)
        fig.update_yaxes(**_ticks(labels), autorange="reversed", showticklabels=col == 1, row=1, col=col)
    fig.update_yaxes(title_text="query", row=1, col=1)

    def _range(values: list[np.ndarray]) -> tuple[float, float]:
        finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
        lo = float(np.log10(floor)) if log_scale else 0.0
        hi = float(finite.max()) if finite.size else lo + 1.0
        return lo, max(hi, lo + 1e-12)

    map_lo, map_hi = _range([z for k, z in panels.items() if k != diff_label])
    n_maps = len(panels) - (diff_label is not None)
    fig.update_layout(coloraxis=dict(colorscale=colorscale, cmin=map_lo, cmax=map_hi,
                                     colorbar=colorbar_after(fig, n_maps, value_name)))
    if diff_label is not None:
        d_lo, d_hi = _range([panels[diff_label]])
        fig.update_layout(coloraxis2=dict(colorscale="Reds", cmin=d_lo, cmax=d_hi,
                                          colorbar=colorbar_after(fig, len(panels), "|diff|")))
    n = len(labels)
    note = f"<br><sup>{T} tokens block-averaged {f}x{f} to {n}x{n}</sup>" if f > 1 else ""
    fig.update_layout(
        title=dict(text=title + note), plot_bgcolor=MASK_COLOR, height=460,  # width: follows the container
        meta={"num_tokens": T, "block": f, "log_scale": bool(log_scale), "panels": list(panels)},
    )
    return fig


def error_maps(
    maps_a,
    maps_b,
    *,
    names: tuple[str, str] = ("softmax", "linear"),
    max_tokens: int = 64,
    causal: bool = True,
    cols: int = 4,
    title: str | None = None,
) -> go.Figure:
    """Per-head absolute error |A_a - A_b| for one layer, one panel per head, one shared colour scale.

    Args:
        maps_a, maps_b: [H, T, T] (e.g. one batch element of [B, H, T, T]); ``names`` label them.
        max_tokens, causal: as in :func:`attention_maps`.
        cols: panels per row.

    Panel titles give each head's MSE over the whole map (``lolcats_lab.metrics.mse``), listed in
    ``fig.layout.meta["mse"]``.
    """
    a = to_numpy(maps_a, "maps_a", ndim=3)
    b = to_numpy(maps_b, "maps_b", ndim=3)
    if a.shape != b.shape or a.shape[1] != a.shape[2]:
        raise ValueError(f"maps_a and maps_b must both be [H, T, T], got {tuple(a.shape)} and {tuple(b.shape)}")
    if isinstance(cols, bool) or not isinstance(cols, int) or cols < 1:
        raise ValueError(f"cols must be a positive int, got {cols!r}")
    H, T = a.shape[0], a.shape[-1]
    head_mse = [float(mse(torch.from_numpy(a[h]), torch.from_numpy(b[h]))) for h in range(H)]  # whole-map MSE
    f = block_factor(T, max_tokens)
    err = np.abs(a - b)
    err = block_average(causal_nan(err) if causal else err, f)  # [H, n, n]
    labels = block_labels(None, T, f)
    cols = min(cols, H)
    rows = -(-H // cols)
    fig = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.03, vertical_spacing=0.08,
                        subplot_titles=[f"head {h} (MSE {m:.2e})" for h, m in enumerate(head_mse)])
    label = f"|{names[0]} - {names[1]}|"
    for h in range(H):
        r, c = divmod(h, cols)
        fig.add_trace(_map_heatmap(err[h], labels, f"head {h}", "coloraxis", label), row=r + 1, col=c + 1)
        fig.update_xaxes(**_ticks(labels), row=r + 1, col=c + 1)
        fig.update_yaxes(**_ticks(labels), autorange="reversed", row=r + 1, col=c + 1)
    hi = float(np.nanmax(err)) if np.isfinite(err).any() else 1.0
    note = f"<br><sup>{T} tokens block-averaged {f}x{f}</sup>" if f > 1 else ""
    fig.update_layout(
        title=dict(text=(title or f"Per-head error {label}") + note), plot_bgcolor=MASK_COLOR,
        coloraxis=dict(colorscale="Reds", cmin=0.0, cmax=max(hi, 1e-12), colorbar=dict(title="|diff|")),
        height=260 * rows + 100,
        meta={"num_tokens": T, "block": f, "mse": head_mse},
    )
    return fig


# ---------------------------------------------------------------------------------------------------
# Per-head grids (layers x heads)


def _grid_traces(values: np.ndarray, name: str, metric: str, coloraxis: str, low: np.ndarray | None):
    """Heatmap [L, H] with layer/head/value hover, plus open squares on the cells where ``low`` is True."""
    L, H = values.shape
    traces = [go.Heatmap(
        z=values, x=np.arange(H), y=np.arange(L), coloraxis=coloraxis, name=name,
        hovertemplate=f"layer %{{y}}<br>head %{{x}}<br>{metric}: %{{z:.4g}}<extra>{name}</extra>",
    )]
    if low is not None:
        ly, lx = np.nonzero(low)
        traces.append(go.Scatter(
            x=lx, y=ly, mode="markers", name="highlighted", showlegend=False,
            marker=dict(symbol="square-open", size=14, color="red", line=dict(width=2)),
            hovertemplate=f"layer %{{y}}<br>head %{{x}}<extra>{name}: highlighted</extra>",
        ))
    return traces


def _check_grid(values, name: str) -> np.ndarray:
    arr = to_numpy(values, name, ndim=(1, 2))
    if arr.ndim == 1:  # one layer
        arr = arr[None]
    if arr.size == 0:
        raise ValueError(f"{name} is empty; pass per-head values [L, H]")
    return arr


def _check_threshold(highlight_below) -> float | None:
    if highlight_below is None:
        return None
    if isinstance(highlight_below, bool) or not isinstance(highlight_below, (int, float)):
        raise ValueError(f"highlight_below must be a number or None, got {highlight_below!r}")
    return float(highlight_below)


def head_metric_grid(
    values,
    title: str = "Per-head metric",
    *,
    highlight_below: float | None = None,
    metric: str = "value",
    colorscale: str = "Viridis",
) -> go.Figure:
    """Layers x heads heat grid of one per-head metric (entropy, spikiness, MSE, ...).

    Args:
        values: [L, H] (or [H] for one layer), e.g. mean row entropy per head.
        highlight_below: mark cells whose value is below this (e.g. low-entropy heads) with open squares.
        metric: the value's name in the hover text.
    """
    v = _check_grid(values, "values")
    thr = _check_threshold(highlight_below)
    fig = go.Figure(_grid_traces(v, title, metric, "coloraxis", None if thr is None else v < thr))
    _grid_layout(fig, v.shape, 1)
    fig.update_layout(title=title, coloraxis=dict(colorscale=colorscale, colorbar=dict(title=metric)))
    return fig


def _grid_layout(fig: go.Figure, shape: tuple[int, int], panels: int) -> None:
    L, H = shape
    fig.update_xaxes(title_text="head", dtick=1 if H <= 32 else None)
    fig.update_yaxes(autorange="reversed", dtick=1 if L <= 40 else None)
    fig.update_yaxes(title_text="layer", col=1) if panels > 1 else fig.update_yaxes(title_text="layer")
    fig.update_layout(height=max(300, 18 * L + 160))


def entropy_comparison(
    teacher,
    student,
    *,
    names: tuple[str, str] = ("softmax (teacher)", "linearized"),
    metric: str = "entropy (nats)",
    highlight_below: float | None = None,
    title: str = "Per-head attention entropy",
) -> go.Figure:
    """Teacher vs linearized per-head grids side by side (one shared colour scale) and their difference.

    Args:
        teacher, student: [L, H] per-head values of one metric (e.g. mean row entropy).
        highlight_below: mark the heads whose *teacher* value is below this (low-entropy, spiky heads,
            the ones a linear map struggles with) in all three panels.
    Returns:
        Panels teacher | student (``coloraxis``) | student - teacher (``coloraxis2``, diverging, centred at 0).
    """
    t = _check_grid(teacher, "teacher")
    s = _check_grid(student, "student")
    if t.shape != s.shape:
        raise ValueError(f"teacher and student must have the same [L, H] shape, got {t.shape} and {s.shape}")
    thr = _check_threshold(highlight_below)
    low = None if thr is None else t < thr
    diff = s - t
    fig = make_subplots(rows=1, cols=3, subplot_titles=[names[0], names[1], f"{names[1]} - {names[0]}"],
                        horizontal_spacing=0.1)
    for col, (vals, name, axis) in enumerate(((t, names[0], "coloraxis"), (s, names[1], "coloraxis"),
                                              (diff, "difference", "coloraxis2")), start=1):
        for tr in _grid_traces(vals, name, metric, axis, low):
            fig.add_trace(tr, row=1, col=col)
    both = np.concatenate([t[np.isfinite(t)], s[np.isfinite(s)]])
    lim = float(np.abs(diff[np.isfinite(diff)]).max()) if np.isfinite(diff).any() else 1.0
    _grid_layout(fig, t.shape, 3)
    fig.update_layout(
        title=title,
        coloraxis=dict(colorscale="Viridis", cmin=float(both.min()) if both.size else 0.0,
                       cmax=float(both.max()) if both.size else 1.0, colorbar=colorbar_after(fig, 2, metric)),
        coloraxis2=dict(colorscale="RdBu", cmid=0.0, cmin=-max(lim, 1e-12), cmax=max(lim, 1e-12),
                        colorbar=colorbar_after(fig, 3, "diff")),
    )
    return fig


# ---------------------------------------------------------------------------------------------------
# Conversion error


def layer_mse_bars(
    before,
    after,
    *,
    names: tuple[str, str] = ("before transfer", "after transfer"),
    log_y: bool = True,
    title: str = "Attention-output MSE per layer",
) -> go.Figure:
    """Per-layer MSE before and after attention transfer as grouped bars.

    Args:
        before, after: [L] (or [L, H], averaged over heads) from ``collect_transfer_mse``.
    """
    b = _per_layer(before, "before")
    a = _per_layer(after, "after")
    if a.shape != b.shape:
        raise ValueError(f"before and after must have the same number of layers, got {b.size} and {a.size}")
    layers = np.arange(b.size)
    fig = go.Figure([
        go.Bar(x=layers, y=b, name=names[0], hovertemplate="layer %{x}<br>MSE %{y:.3e}"),
        go.Bar(x=layers, y=a, name=names[1], hovertemplate="layer %{x}<br>MSE %{y:.3e}"),
    ])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = float(np.nanmean(b) / np.nanmean(a)) if np.nanmean(a) > 0 else float("inf")
    fig.update_layout(
        title=dict(text=f"{title}<br><sup>mean MSE {np.nanmean(b):.3e} -> {np.nanmean(a):.3e} ({ratio:.3g}x lower)</sup>"),
        barmode="group", xaxis=dict(title="layer", dtick=1 if b.size <= 40 else None),
        yaxis=dict(title="MSE", type="log" if log_y else "linear"), meta={"reduction": ratio},
    )
    return fig


def _per_layer(x, name: str) -> np.ndarray:
    arr = to_numpy(x, name, ndim=(1, 2))
    return arr.mean(axis=1) if arr.ndim == 2 else arr


def _history_series(history, steps) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray | None]:
    """Normalise ``history`` to {label: (steps [S_l], values [S_l])}; also the mean curve when steps are shared."""
    if isinstance(history, Mapping):
        if steps is not None:
            raise ValueError("steps is only used with an array history [S, L]; a dict history carries its own steps")
        series = {}
        for layer, pairs in history.items():
            arr = to_numpy(pairs, f"history[{layer!r}]", ndim=2)
            if arr.shape[1] != 2:
                raise ValueError(f"history[{layer!r}] must be a list of (step, mse) pairs, got shape {arr.shape}")
            series[f"layer {layer}"] = (arr[:, 0], arr[:, 1])
        if not series:
            raise ValueError("history is empty; pass {layer: [(step, mse), ...]} or an array [steps, L]")
        return series, None
    arr = to_numpy(history, "history", ndim=(1, 2))
    if arr.ndim == 1:
        arr = arr[:, None]
    S, L = arr.shape
    x = np.arange(S, dtype=np.float64) if steps is None else to_numpy(steps, "steps", ndim=1)
    if x.shape[0] != S:
        raise ValueError(f"steps has {x.shape[0]} entries but history has {S} rows [steps, L]")
    return {f"layer {l}": (x, arr[:, l]) for l in range(L)}, np.nanmean(arr, axis=1) if S else None


def _curve_traces(series, mean, steps_for_mean, colorscale: str):
    colors = sample_colorscale(colorscale, [i / max(1, len(series) - 1) for i in range(len(series))])
    traces = [go.Scatter(x=x, y=y, mode="lines", name=label, line=dict(color=c, width=1.5),
                         hovertemplate=f"{label}<br>step %{{x}}<br>MSE %{{y:.3e}}<extra></extra>")
              for (label, (x, y)), c in zip(series.items(), colors)]
    if mean is not None and len(series) > 1:
        traces.append(go.Scatter(x=steps_for_mean, y=mean, mode="lines", name="mean over layers",
                                 line=dict(color="black", width=3, dash="dash")))
    return traces


def mse_curves(
    history,
    *,
    steps=None,
    log_y: bool = True,
    title: str = "Transfer MSE per layer",
    colorscale: str = "Viridis",
) -> go.Figure:
    """MSE per layer over training steps, one line per layer (plus the mean when steps are shared).

    Args:
        history: ``{layer: [(step, mse), ...]}``, or an array [S, L] (rows = logged steps).
        steps: [S] step numbers for an array history (default 0..S-1).
    """
    series, mean = _history_series(history, steps)
    x_mean = next(iter(series.values()))[0]
    fig = go.Figure(_curve_traces(series, mean, x_mean, colorscale))
    fig.update_layout(title=title, xaxis_title="step", yaxis=dict(title="MSE", type="log" if log_y else "linear"))
    return fig


def training_curves(
    layer_mse,
    loss=None,
    *,
    steps=None,
    loss_steps=None,
    log_y: bool = True,
    title: str = "Attention transfer",
) -> go.Figure:
    """Two panels for a live training view: MSE per layer (left) and the loss (right).

    Args:
        layer_mse: [S, L] with ``steps`` [S] (default 0..S-1), or ``{layer: [(step, mse), ...]}`` (e.g. layer-wise
            training, where each layer has its own steps); None for a loss-only view.
        loss: [S'] or None; plotted against ``loss_steps`` (default: ``steps``, else 0..S'-1).
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=["MSE per layer", "loss"], horizontal_spacing=0.1)
    if layer_mse is not None:
        series, mean = _history_series(layer_mse, steps)
        for tr in _curve_traces(series, mean, next(iter(series.values()))[0], "Viridis"):
            fig.add_trace(tr, row=1, col=1)
    if loss is not None:
        y = to_numpy(loss, "loss", ndim=1)
        x = loss_steps if loss_steps is not None else steps if steps is not None else np.arange(y.size)
        x = to_numpy(x, "loss_steps", ndim=1)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"loss has {y.shape[0]} entries but its steps have {x.shape[0]}")
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers" if y.size < 50 else "lines", name="loss",
                                 line=dict(color="crimson", width=2)), row=1, col=2)
    kind = "log" if log_y else "linear"
    fig.update_yaxes(type=kind, title_text="MSE", row=1, col=1)
    fig.update_yaxes(type=kind, title_text="loss", row=1, col=2)
    fig.update_xaxes(title_text="step")
    fig.update_layout(title=title, height=380)
    return fig
