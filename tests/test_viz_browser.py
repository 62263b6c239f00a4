"""Opt-in: the explorer works in a real JupyterLab opened by headless Chromium.

Starts JupyterLab on 127.0.0.1 (temporary HOME, no token), opens tests/browser/explorer.ipynb, runs all cells
in the browser's kernel, moves the explorer's layer slider with the keyboard, and asserts that the plot
in the page changed (read from the plotly element's ``layout``/``data`` through JavaScript). Saves a
screenshot to tests/browser/screenshots/explorer.png.

Run: ``LOLCATS_BROWSER=1 .venv/bin/pytest tests/test_viz_browser.py -q -s`` (needs Debian's ``chromium`` at
/usr/bin/chromium and the ``playwright`` Python package; never ``playwright install``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "tests" / "browser" / "explorer.ipynb"
SCREENSHOT = ROOT / "tests" / "browser" / "screenshots" / "explorer.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _skip_reason() -> str | None:
    if os.environ.get("LOLCATS_BROWSER") != "1":
        return "opt-in browser check: set LOLCATS_BROWSER=1 to run it"
    if not Path(CHROMIUM).exists():
        return f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs the playwright Python package (pip install playwright; never `playwright install`)"
    return None


pytestmark = [pytest.mark.browser, pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout} s")


@pytest.fixture()
def lab(tmp_path):
    """A JupyterLab server serving a copy of the notebook; yields its base URL; stopped by PID."""
    home, work = tmp_path / "home", tmp_path / "work"
    settings = home / ".jupyter" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    port = _free_port()
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
               JUPYTERLAB_SETTINGS_DIR=str(home / ".jupyter" / "lab" / "user-settings"))
    env.pop("JUPYTER_CONFIG_DIR", None)
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
         "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={work}",
         "--LabApp.expose_app_in_browser=True"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/api/status", timeout=60)
        yield base
    finally:
        try:  # shut kernels down cleanly, then the server itself
            urllib.request.urlopen(urllib.request.Request(f"{base}/api/shutdown", method="POST"), timeout=5)
        except OSError:
            proc.terminate()  # SIGTERM to our own server's PID: it stops its kernels on the way out
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


PLOTS_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(p => ({
    title: p.layout && p.layout.title ? p.layout.title.text : null,
    ntraces: p.data ? p.data.length : 0,
    zsig: p.data && p.data[0] ? JSON.stringify(p.data[0].z) : null,
    z10: p._fullData && p._fullData[0] && p._fullData[0].z ? Number(p._fullData[0].z[1][0]) : null,
}))"""  # zsig: the trace's z as sent (plotly's base64 typed array); z10: the decoded map value A[1, 0]


def test_explorer_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    timings = {}
    t0 = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2300})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{lab}/lab/tree/{NOTEBOOK.name}")
        # the status bar, not the toolbar, says when the kernel is really ready
        page.wait_for_selector(".jp-StatusBar-TextItem:has-text('| Idle')", timeout=90_000)
        timings["open_s"] = time.monotonic() - t0
        page.evaluate("() => window.jupyterapp.commands.execute('runmenu:run-all')")
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=90_000)
        timings["run_all_s"] = time.monotonic() - t0
        plots = page.evaluate(PLOTS_JS)
        assert plots[0]["title"] == "layer 0, head 0", plots
        assert plots[0]["ntraces"] == 3  # softmax | linear | |difference|
        assert any(p["title"] and "Attention transfer" in p["title"] for p in plots), plots

        # move the layer slider one step with the keyboard, as a user would
        handle = page.locator(".widget-slider:has(label:text-is('layer')) .noUi-handle").first
        handle.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "() => { const p = document.querySelector('.js-plotly-plot'); return p && p.layout.title.text === 'layer 1, head 0'; }",
            timeout=30_000)
        timings["slider_redraw_s"] = time.monotonic() - t0
        after = page.evaluate(PLOTS_JS)
        assert after[0]["zsig"] != plots[0]["zsig"], "the map data did not change after moving the slider"
        assert 0 < after[0]["z10"] < 1 and after[0]["z10"] != plots[0]["z10"], (plots[0], after[0])
        status = page.locator(".widget-html").first.inner_text()
        assert "Error" not in status and "entropy" in status, status
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.locator(".jp-Cell").nth(2).screenshot(path=str(SCREENSHOT))
        browser.close()
        assert not errors, errors
    timings["total_s"] = time.monotonic() - t0
    print("browser check timings:", {k: round(v, 1) for k, v in timings.items()})
