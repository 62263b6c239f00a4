"""Visualisation: plotly figures (pure functions of tensors) and ipywidgets explorers.

Figures return plain ``plotly.graph_objects.Figure`` objects: render them in JupyterLab, write them into
one offline HTML file with :func:`write_report`, or assert on their data in tests.
"""

from .bench import benchmark_figure
from .figures import (
    attention_maps,
    entropy_comparison,
    error_maps,
    head_metric_grid,
    layer_mse_bars,
    mse_curves,
    training_curves,
)
from .kernel_figures import kernel_grid, kernel_vs_exp, weight_histogram
from .report import report_html, write_report
from .stats import map_statistics

# the model-level pieces import lolcats_lab.models (and transformers): load them on first use
_LAZY = {
    "AttentionExplorer": ".widgets",
    "TrainingMonitor": ".widgets",
    "ModelMaps": ".model_maps",
    "model_attention_maps": ".model_maps",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "benchmark_figure",
    "AttentionExplorer",
    "ModelMaps",
    "TrainingMonitor",
    "model_attention_maps",
    "attention_maps",
    "entropy_comparison",
    "error_maps",
    "head_metric_grid",
    "map_statistics",
    "kernel_grid",
    "kernel_vs_exp",
    "layer_mse_bars",
    "mse_curves",
    "report_html",
    "training_curves",
    "weight_histogram",
    "write_report",
]
