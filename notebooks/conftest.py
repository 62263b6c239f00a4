"""nbval settings for the tutorial notebooks (run with ``pytest notebooks/*.ipynb --nbval-lax``).

Figures are never compared: a plotly figure's JSON carries the installed plotly's whole theme and its HTML
a random div id, so ``text/html`` and the plotly MIME type are skipped (as in TransformerLens'
demos/conftest.py). Notebooks assert on numbers instead; cells marked ``# NBVAL_CHECK_OUTPUT`` compare
their small ``text/plain`` result.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedded models never need the hub

SKIP_COMPARE = ("text/html", "application/vnd.plotly.v1+json", "application/vnd.jupyter.widget-view+json")


def pytest_collectstart(collector):
    if getattr(collector, "path", None) is not None and collector.path.suffix == ".ipynb":
        collector.skip_compare += SKIP_COMPARE
