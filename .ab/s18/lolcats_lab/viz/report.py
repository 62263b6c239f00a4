"""One self-contained HTML report from several figures (plotly.js embedded once, works from file://)."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from ..io import atomic_write_text

__all__ = ["write_report", "report_html"]


def _check_figures(figures) -> list[tuple[str, go.Figure]]:
    if isinstance(figures, (str, bytes)) or not isinstance(figures, Sequence) or not figures:
        raise ValueError("figures must be a non-empty list of (title, plotly Figure) pairs")
    out = []
    for i, item in enumerate(figures):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], go.Figure)):
            raise ValueError(f"figures[{i}] must be a (title: str, figure: go.Figure) pair, got {type(item).__name__}")
        out.append(item)
    return out


def report_html(figures: Sequence[tuple[str, go.Figure]], title: str = "lolcats-lab report", description: str | None = None) -> str:
    """The report as one HTML string: a heading, an optional paragraph, then each figure under an <h2>."""
    figures = _check_figures(figures)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1500px} h2{margin-top:2em}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',  # plotly.js once, no network needed
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if description:
        parts.append(f"<p>{html.escape(description)}</p>")
    for i, (heading, fig) in enumerate(figures):
        parts.append(f'<section id="figure-{i}"><h2>{html.escape(heading)}</h2>')
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{i}"))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    figures: Sequence[tuple[str, go.Figure]],
    path: str | os.PathLike,
    title: str = "lolcats-lab report",
    description: str | None = None,
) -> Path:
    """Write :func:`report_html` to ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``), creating the parent folder. Returns the path. About 5 MB, mostly plotly.js."""
    text = report_html(figures, title, description)
    path = Path(path)
    if path.exists() and path.is_dir():
        raise ValueError(f"path must be a file path ending in .html, got the directory {path}")
    atomic_write_text(path, text)
    return path
