"""ipywidgets explorers: :class:`AttentionExplorer` (one head of a linearized model, softmax vs linear) and
:class:`TrainingMonitor` (live MSE-per-layer curves for a training callback).

Both hold their controls in ``.widget`` (display the object itself in a notebook) and keep the latest
``plotly`` figure in ``.figure`` so tests and scripts can read what is shown. Figures are written into
``ipywidgets.Output`` areas as plotly mime bundles (rendered by the jupyterlab-plotly extension that ships
with plotly); ``go.FigureWidget`` is avoided because it needs ``anywidget``.

Errors: every widget callback is wrapped; an exception shows in the widget (a red message and the
traceback in ``.log``) and is kept in ``.last_error`` instead of vanishing into Lab's log console. The
Python methods (``update``) raise as usual, after showing the message.
"""

from __future__ import annotations

import html
import math
import time
import traceback
from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import torch
from torch import nn

from ..feature_maps import FEATURE_MAPS
from ..metrics import attention_entropy, spikiness
from .figures import attention_maps, entropy_comparison, head_metric_grid, training_curves
from .model_maps import MODEL_FEATURE_MAP, ModelMaps, model_attention_maps, model_head_entropy, model_limits

__all__ = ["AttentionExplorer", "TrainingMonitor", "DEFAULT_FIXED_MAPS"]

DEFAULT_FIXED_MAPS = ("elu", "relu", "performer", "taylor")  # fixed maps offered beside the trained one


def _figure_output(fig: go.Figure) -> dict:
    """One ``display_data`` output holding the figure as a plotly mime bundle (JSON-safe)."""
    bundle = pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict())
    bundle["text/plain"] = f"<plotly figure: {fig.layout.title.text or ''}>"
    return {"output_type": "display_data", "data": bundle, "metadata": {}}


def _error_html(err: BaseException) -> str:
    return f'<div style="color:#b00020"><b>{type(err).__name__}:</b> {html.escape(str(err))}</div>'


class _ErrorSurface:
    """Mixin: a red status line, a traceback log, and ``last_error``."""

    status: widgets.HTML
    log: widgets.Output
    last_error: BaseException | None

    def _show_error(self, err: BaseException) -> None:
        self.last_error = err
        self.status.value = _error_html(err)
        self.log.outputs = ()
        self.log.append_stderr("".join(traceback.format_exception(type(err), err, err.__traceback__)))

    def _clear_error(self) -> None:
        self.last_error = None
        self.log.outputs = ()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


class AttentionExplorer(_ErrorSurface):
    """Softmax vs linearized attention of one head of a linearized model, for a text you type.

    Controls: layer and head sliders, a feature-map picker (the model's trained maps, or a fixed map such as
    elu swapped into the shown layer for comparison), a log-scale switch and a text box
    (all ``continuous_update=False``). Shows the maps side by side with their absolute difference, the
    entropy / spikiness of both maps, the per-head output MSE of every layer, and (``entropy_grid``) the
    per-head entropy of teacher vs linearized attention for all layers, low-entropy teacher heads marked.

    Args:
        model: a model converted with :func:`lolcats_lab.models.linearize`; tokenizer: its tokenizer.
        text: the first text. layer, head: the first head shown.
        fixed_maps: fixed feature-map names offered in the picker.
        max_tokens: longer texts are block-averaged in the map figure.
        entropy_grid: also show the all-heads entropy comparison (one more forward pass per new text).
        low_entropy_fraction: mark heads whose teacher entropy is below this fraction of the uniform
            distribution's (mean over rows of log(#visible keys)).

    Attributes:
        figure: the current map figure; grid_figure: the per-head MSE grid; entropy_figure: the entropy
        comparison (or None); stats: the numbers shown; maps: the current
        :class:`~lolcats_lab.viz.model_maps.ModelMaps`; last_error: the last error or None;
        widget: the ``ipywidgets.VBox`` to display.

    Raises:
        ValueError: (from the constructor and :meth:`update`) layer/head out of range, empty text, or a text
        longer than the model's ``max_position_embeddings``.
    """

    def __init__(self, model: nn.Module, tokenizer, text: str, *, layer: int = 0, head: int = 0,
                 fixed_maps: Sequence[str] = DEFAULT_FIXED_MAPS, max_tokens: int = 128, log_scale: bool = False,
                 entropy_grid: bool = True, low_entropy_fraction: float = 0.3):
        self.model, self.tokenizer, self.max_tokens = model, tokenizer, max_tokens
        self.entropy_grid, self.low_entropy_fraction = bool(entropy_grid), float(low_entropy_fraction)
        self.trained_name = getattr(model, "lolcats_config", {}).get("feature_map", "trained")
        self.num_layers, self.num_heads, self.max_positions = model_limits(model)
        unknown = [m for m in fixed_maps if m not in FEATURE_MAPS]
        if unknown:
            raise ValueError(f"fixed_maps has unknown feature maps {unknown}; choose from {sorted(FEATURE_MAPS)}")
        self.last_error = None
        self.figure: go.Figure | None = None
        self.grid_figure: go.Figure | None = None
        self.entropy_figure: go.Figure | None = None
        self._entropy_text: str | None = None
        self.maps: ModelMaps | None = None
        self.stats: dict[str, float] = {}
        self._syncing = False
        self._text: str | None = None

        common = dict(continuous_update=False, style={"description_width": "initial"})
        self.layer_slider = widgets.IntSlider(value=0, min=0, max=self.num_layers - 1, description="layer", **common)
        self.head_slider = widgets.IntSlider(value=0, min=0, max=self.num_heads - 1, description="head", **common)
        self.feature_map_picker = widgets.Dropdown(
            options=[(f"model ({self.trained_name})", MODEL_FEATURE_MAP)] + [(m, m) for m in fixed_maps],
            value=MODEL_FEATURE_MAP, description="feature map", style=common["style"])
        self.log_scale_box = widgets.Checkbox(value=bool(log_scale), description="log scale", indent=False)
        self.text_box = widgets.Textarea(value="", description="text", continuous_update=False,
                                         layout=widgets.Layout(width="95%", height="4em"))
        self.status = widgets.HTML()
        self.plot = widgets.Output()
        self.grid_plot = widgets.Output()
        self.entropy_plot = widgets.Output()
        self.log = widgets.Output()
        self.widget = widgets.VBox([
            widgets.HBox([self.layer_slider, self.head_slider, self.feature_map_picker, self.log_scale_box]),
            self.text_box, self.status, self.plot, self.grid_plot, self.entropy_plot, self.log,
        ])
        for control in (self.layer_slider, self.head_slider, self.feature_map_picker, self.log_scale_box, self.text_box):
            control.observe(self._on_control, names="value")
        self.update(text=text, layer=layer, head=head)

    # --------------------------------------------------------------------------------------------
    def _on_control(self, change) -> None:
        """Widget callback: never raises (the error is shown in the widget and kept in last_error)."""
        if self._syncing:
            return
        try:
            self.update(text=self.text_box.value, layer=self.layer_slider.value, head=self.head_slider.value,
                        feature_map=self.feature_map_picker.value, log_scale=self.log_scale_box.value)
        except Exception:  # noqa: BLE001 - already shown by update(); a callback must not raise
            pass

    def update(self, *, text: str | None = None, layer: int | None = None, head: int | None = None,
               feature_map: str | None = None, log_scale: bool | None = None, refresh: bool = False) -> go.Figure:
        """Redraw with new settings; arguments left as None keep their current value. Returns the map figure.

        Maps are recomputed when text, layer, head or feature map change, the entropy grid when the text
        changes; ``refresh=True`` recomputes both (e.g. after training the model further). On bad input the
        message is shown in the widget, kept in ``last_error``, the previous figure stays, and the ValueError
        is raised.
        """
        cur = self.maps
        text = self.text_box.value if text is None else text
        layer = (cur.layer if cur else 0) if layer is None else layer
        head = (cur.head if cur else 0) if head is None else head
        feature_map = (cur.feature_map if cur else MODEL_FEATURE_MAP) if feature_map is None else feature_map
        log_scale = self.log_scale_box.value if log_scale is None else bool(log_scale)
        try:
            key = (text, layer, head, feature_map)
            if refresh or cur is None or key != (self._text, cur.layer, cur.head, cur.feature_map):
                maps = model_attention_maps(self.model, self.tokenizer, text, layer, head, feature_map)
            else:
                maps = cur  # only the colour scale changed
            fig, grid, stats = self._figures(maps, log_scale)
            entropy_fig = self.entropy_figure
            if self.entropy_grid and (refresh or text != self._entropy_text):
                entropy_fig = self._entropy_figure(text, maps)
        except Exception as err:
            self._show_error(err)
            raise
        self.maps, self._text, self.figure, self.grid_figure, self.stats = maps, text, fig, grid, stats
        self._sync_controls(text, maps, log_scale)
        self._clear_error()
        self.status.value = self._stats_html(stats, fig.data[1].name)
        self.plot.outputs = (_figure_output(fig),)
        self.grid_plot.outputs = (_figure_output(grid),)
        if entropy_fig is not None and entropy_fig is not self.entropy_figure:
            self.entropy_figure, self._entropy_text = entropy_fig, text
            self.entropy_plot.outputs = (_figure_output(entropy_fig),)
        return fig

    def _entropy_figure(self, text: str, m: ModelMaps) -> go.Figure:
        teacher, linear = model_head_entropy(self.model, self.tokenizer, text)  # [L, H] each
        T = len(m.tokens)
        uniform = float(np.mean(np.log(np.arange(1, T + 1)))) if m.causal else math.log(T)
        return entropy_comparison(
            teacher, linear, names=("softmax (teacher)", f"linearized ({self.trained_name})"),
            highlight_below=self.low_entropy_fraction * uniform,
            title=f"Per-head mean row entropy (nats) for this text; marked: teacher below "
                  f"{self.low_entropy_fraction:g} x uniform ({self.low_entropy_fraction * uniform:.2f})",
        )

    def _sync_controls(self, text: str, maps: ModelMaps, log_scale: bool) -> None:
        self._syncing = True
        try:
            self.text_box.value, self.layer_slider.value, self.head_slider.value = text, maps.layer, maps.head
            self.feature_map_picker.value, self.log_scale_box.value = maps.feature_map, log_scale
        finally:
            self._syncing = False

    def _figures(self, m: ModelMaps, log_scale: bool):
        label = "linear" if m.feature_map == MODEL_FEATURE_MAP else f"linear ({m.feature_map})"
        fig = attention_maps(
            {"softmax": m.softmax, label: m.linear}, m.tokens, log_scale=log_scale, max_tokens=self.max_tokens,
            causal=m.causal, title=f"layer {m.layer}, head {m.head}",
        )
        grid = head_metric_grid(m.transfer_mse, title="attention-output MSE per head (this text)", metric="MSE")
        grid.add_trace(go.Scatter(x=[m.head], y=[m.layer], mode="markers", name="shown",
                                  marker=dict(symbol="square-open", size=16, color="white", line=dict(width=3))))
        soft, lin = torch.from_numpy(m.softmax), torch.from_numpy(m.linear)
        sp_s, sp_l = spikiness(soft), spikiness(lin)
        stats = {
            "entropy_softmax": float(attention_entropy(soft).mean()),
            "entropy_linear": float(attention_entropy(lin).mean()),
            "max_weight_softmax": float(sp_s.max_weight.mean()),
            "max_weight_linear": float(sp_l.max_weight.mean()),
            "eff_len_softmax": float(sp_s.eff_len.mean()),
            "eff_len_linear": float(sp_l.eff_len.mean()),
            "output_mse": float(m.transfer_mse[m.layer, m.head]),
        }
        return fig, grid, stats

    @staticmethod
    def _stats_html(s: dict[str, float], linear_label: str) -> str:
        rows = "".join(
            f"<tr><td>{name}</td><td>{s[f'{key}_softmax']:.3f}</td><td>{s[f'{key}_linear']:.3f}</td></tr>"
            for name, key in (("mean row entropy (nats)", "entropy"), ("mean max weight", "max_weight"),
                              ("mean effective length", "eff_len"))
        )
        return (f"<table><tr><th></th><th>softmax</th><th>{html.escape(linear_label)}</th></tr>" + rows + "</table>"
                f"<div>attention-output MSE of this head: {s['output_mse']:.3e}</div>")


class TrainingMonitor(_ErrorSurface):
    """Live MSE-per-layer (and loss) curves during training.

    Use ``monitor.update(step, layer_mse, loss)`` or pass the monitor as a training callback: it is callable
    with the loop's record dict. Two kinds of record (one kind per monitor):

    * whole-model transfer, ``{"step": s, "layer_mse": [...], "loss": x}`` (``lolcats_lab.train.transfer``):
      ``layer_mse`` is [L] or [L, H] (averaged over heads); either it or ``loss`` may be missing;
    * layer-wise transfer, ``{"step": s, "layer": l, "mse": m, "loss": x}`` (``transfer_layerwise``): each
      layer gets its own curve over its own steps; the loss is plotted against the record count.

    Other keys (``lr``, ...) are ignored.

    Args:
        log_y: log-scale y axes. title: figure title.
        min_interval_s: redraw at most this often (training is not slowed by plotting); :meth:`flush` forces
            a redraw, and ``figure`` is always current.
    """

    def __init__(self, *, log_y: bool = True, title: str = "Attention transfer", min_interval_s: float = 0.5):
        self.log_y, self.title, self.min_interval_s = log_y, title, float(min_interval_s)
        self.steps: list[float] = []
        self.layer_mse: list[np.ndarray | None] = []  # whole-model records: one [L] row (or None) per step
        self.layer_history: dict[int, list[tuple[float, float]]] = {}  # layer-wise records: layer -> (step, mse)
        self.losses: list[float] = []
        self.num_layers: int | None = None
        self.kind: str | None = None  # "model" or "layerwise", fixed by the first record
        self.last_error = None
        self._last_draw = -math.inf
        self.status = widgets.HTML("waiting for the first step")
        self.plot = widgets.Output()
        self.log = widgets.Output()
        self.widget = widgets.VBox([self.status, self.plot, self.log])

    def __call__(self, metrics: Mapping) -> None:
        """Training-callback form of :meth:`update`."""
        if not isinstance(metrics, Mapping) or "step" not in metrics:
            err = ValueError(f"the monitor takes a dict with at least 'step' (and 'layer_mse' and/or 'loss'), got {metrics!r}")
            self._show_error(err)
            raise err
        if "layer" in metrics and "layer_mse" not in metrics:
            self.update(metrics["step"], loss=metrics.get("loss"), layer=metrics["layer"], mse=metrics.get("mse"))
        else:
            self.update(metrics["step"], metrics.get("layer_mse"), metrics.get("loss"))

    def update(self, step, layer_mse=None, loss=None, *, layer: int | None = None, mse: float | None = None) -> None:
        """Record one step and redraw (at most every ``min_interval_s``).

        Whole-model: ``layer_mse`` [L] or [L, H] and/or ``loss``. Layer-wise: ``layer`` and ``mse`` (a number),
        optional ``loss``. Non-finite values are recorded and flagged in the status line. Raises ValueError for
        a wrong shape, a non-number, or a record of the other kind than the first one.
        """
        try:
            kind = "layerwise" if layer is not None else "model"
            row = self._check(step, layer_mse, loss, layer, mse, kind)
        except Exception as err:
            self._show_error(err)
            raise
        self.kind = kind
        self.steps.append(float(step))
        self.losses.append(float("nan") if loss is None else float(loss))
        if kind == "layerwise":
            self.layer_history.setdefault(int(layer), []).append((float(step), float(mse)))
            values = [float(mse)]
        else:
            self.layer_mse.append(row)
            values = [] if row is None else row.tolist()
        bad = not all(math.isfinite(v) for v in values) or (loss is not None and not math.isfinite(float(loss)))
        where = f"layer {layer}, step {step:g}" if kind == "layerwise" else f"step {step:g}"
        self.status.value = (_error_html(ValueError(f"non-finite MSE or loss at {where}")) if bad else
                             where + ("" if loss is None else f", loss {float(loss):.4g}")
                             + ("" if not values else f", mean MSE {np.mean(values):.3e}"))
        if time.monotonic() - self._last_draw >= self.min_interval_s:
            self.flush()

    @staticmethod
    def _number(name: str, value) -> float:
        if isinstance(value, bool) or isinstance(value, str):
            raise ValueError(f"{name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be a number, got {value!r}") from e

    def _check(self, step, layer_mse, loss, layer, mse, kind: str) -> np.ndarray | None:
        self._number("step", step)
        if self.kind is not None and kind != self.kind:
            raise ValueError(f"this monitor holds {self.kind} records; use a new TrainingMonitor for {kind} records")
        if loss is not None:
            self._number("loss", loss)
        if kind == "layerwise":
            if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
                raise ValueError(f"layer must be a non-negative int, got {layer!r}")
            if layer_mse is not None or mse is None:
                raise ValueError("a layer-wise record takes layer= and mse= (a number), not layer_mse")
            self._number("mse", mse)
            return None
        if layer_mse is None and loss is None:
            raise ValueError("pass layer_mse [L] (or [L, H]) and/or loss for each step")
        if layer_mse is None:
            return None
        row = (layer_mse.detach().double().cpu().numpy() if isinstance(layer_mse, torch.Tensor)
               else np.asarray(layer_mse, dtype=np.float64))
        if row.ndim == 2:
            row = row.mean(axis=1)  # [L, H] -> [L]
        if row.ndim != 1 or row.size == 0:
            raise ValueError(f"layer_mse must be [L] or [L, H], got shape {tuple(row.shape)}")
        if self.num_layers is None:
            self.num_layers = row.size
        elif row.size != self.num_layers:
            raise ValueError(f"layer_mse has {row.size} layers but earlier steps had {self.num_layers}")
        return row

    @property
    def figure(self) -> go.Figure:
        """The curves for everything recorded so far."""
        loss = np.asarray(self.losses) if any(math.isfinite(x) for x in self.losses) else None
        if self.kind == "layerwise":
            return training_curves(self.layer_history, loss, loss_steps=np.arange(len(self.losses)),
                                   log_y=self.log_y, title=self.title)
        mse = None
        if self.num_layers is not None:
            mse = np.stack([np.full(self.num_layers, np.nan) if r is None else r for r in self.layer_mse])
        return training_curves(mse, loss, steps=np.asarray(self.steps), log_y=self.log_y, title=self.title)

    def flush(self) -> None:
        """Redraw now."""
        try:
            fig = self.figure
        except Exception as err:  # noqa: BLE001 - a plotting problem must not stop training
            self._show_error(err)
            return
        self.plot.outputs = (_figure_output(fig),)
        self._last_draw = time.monotonic()
