"""Static checks of the tutorial notebooks (fast: nothing is executed; nbval runs them, see the Makefile).

Every ``notebooks/*.ipynb`` must
* be committed without stale outputs: only cells marked ``# NBVAL_CHECK_OUTPUT`` keep outputs (nbval compares
  them), every other code cell has none and no execution count;
* have a paired jupytext percent-format ``.py`` with the same cells (``jupytext --sync notebooks/NN_x.ipynb``);
* start with a markdown cell holding a ``# title`` and a goal sentence;
* read ``LOLCATS_CI`` in a code cell (CI mode shrinks its sizes) and give every ``# NBVAL_SKIP`` cell a reason.

Each check is a function returning a list of problems, tested on small synthetic notebooks first (so a
check that can never fail is caught).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

jupytext = pytest.importorskip("jupytext")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CI_FLAG = 'os.environ.get("LOLCATS_CI") == "1"'


def stale_outputs(nb) -> list[str]:
    """Code cells that carry outputs or an execution count without being checked by nbval."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        checked = "NBVAL_CHECK_OUTPUT" in cell.source
        if checked and (not cell.outputs or cell.execution_count is None):
            # nbval treats a cell with no stored execution_count as never run and skips the comparison,
            # so the check would be silently off
            problems.append(f"cell {i} is marked NBVAL_CHECK_OUTPUT but has no stored output/execution_count "
                            "(nbval would not compare it): execute with LOLCATS_CI=1 and keep this cell's output")
        if not checked and (cell.outputs or cell.execution_count is not None):
            problems.append(f"cell {i} keeps outputs/execution_count but is not marked NBVAL_CHECK_OUTPUT")
    return problems


def cell_signature(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def pairing_problems(nb, py_text: str | None) -> list[str]:
    """The paired percent-format .py must exist and hold the same cells in the same order."""
    if py_text is None:
        return ["no paired .py file (run `jupytext --set-formats ipynb,py:percent` on the notebook)"]
    formats = nb.metadata.get("jupytext", {}).get("formats", "")
    problems = [] if "py:percent" in formats else [f"jupytext formats metadata is {formats!r}, expected 'ipynb,py:percent'"]
    py_nb = jupytext.reads(py_text, fmt="py:percent")
    a, b = cell_signature(nb), cell_signature(py_nb)
    if a != b:
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        problems.append(f".py and .ipynb differ (first at cell {first}; {len(a)} vs {len(b)} cells): run jupytext --sync")
    return problems


def header_problems(nb) -> list[str]:
    """First cell: markdown with a '# ' title line and at least one non-empty line (the goal) after it."""
    if not nb.cells or nb.cells[0].cell_type != "markdown":
        return ["the first cell must be a markdown cell with the title and the goal"]
    lines = [line for line in nb.cells[0].source.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        return ["the first cell must start with a '# ' title"]
    if len(lines) < 2:
        return ["the first cell must state the goal in a sentence after the title"]
    return []


def flag_problems(nb) -> list[str]:
    """A code cell reads LOLCATS_CI; every NBVAL_SKIP cell says why in a comment."""
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    problems = [] if any(CI_FLAG in src for src in code) else [f"no code cell reads the CI flag ({CI_FLAG})"]
    for src in code:
        if "NBVAL_SKIP" in src:
            comments = [line for line in src.splitlines() if line.lstrip().startswith("#") and "NBVAL_SKIP" not in line]
            if not comments:
                problems.append("an NBVAL_SKIP cell has no comment saying why it is skipped")
    return problems


# ---------------------------------------------------------------------------------------------------
# the checks themselves can fail (negative controls on synthetic notebooks)


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    nb.metadata["jupytext"] = {"formats": "ipynb,py:percent"}
    return nb


GOOD = _nb(
    nbformat.v4.new_markdown_cell("# 00 · Title\n\n**Goal:** learn one thing."),
    nbformat.v4.new_code_cell('import os\nCI = os.environ.get("LOLCATS_CI") == "1"'),
    nbformat.v4.new_code_cell("# NBVAL_SKIP\n# (too slow for CI)\npass"),
)


def test_checks_accept_a_good_notebook():
    py = jupytext.writes(GOOD, fmt="py:percent")
    assert stale_outputs(GOOD) == [] and header_problems(GOOD) == [] and flag_problems(GOOD) == []
    assert pairing_problems(GOOD, py) == []


def test_checks_reject_stale_outputs():
    nb = _nb(nbformat.v4.new_code_cell("1 + 1", execution_count=3,
                                       outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=3)]))
    assert any("not marked NBVAL_CHECK_OUTPUT" in p for p in stale_outputs(nb))
    nb.cells[0].source = "# NBVAL_CHECK_OUTPUT\n1 + 1"
    assert stale_outputs(nb) == []
    nb.cells[0].execution_count = None  # nbval would skip the comparison
    assert any("would not compare" in p for p in stale_outputs(nb))
    nb.cells[0].execution_count, nb.cells[0].outputs = 3, []
    assert any("would not compare" in p for p in stale_outputs(nb))


def test_checks_reject_unsynced_pair_and_missing_parts():
    py = jupytext.writes(GOOD, fmt="py:percent").replace("pass", "print('edited only in the .py')")
    assert any("run jupytext --sync" in p for p in pairing_problems(GOOD, py))
    assert pairing_problems(GOOD, None)
    no_goal = _nb(nbformat.v4.new_markdown_cell("# Title only"))
    assert any("goal" in p for p in header_problems(no_goal))
    assert header_problems(_nb(nbformat.v4.new_code_cell("x = 1")))
    no_flag = _nb(nbformat.v4.new_code_cell("# NBVAL_SKIP\npass"))
    problems = flag_problems(no_flag)
    assert any("CI flag" in p for p in problems) and any("saying why" in p for p in problems)


# ---------------------------------------------------------------------------------------------------
# the committed notebooks


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_clean_paired_and_flagged(path):
    nb = nbformat.read(path, as_version=4)
    py = path.with_suffix(".py")
    problems = (stale_outputs(nb) + pairing_problems(nb, py.read_text() if py.is_file() else None)
                + header_problems(nb) + flag_problems(nb))
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)
