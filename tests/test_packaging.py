"""The install layout: kernels/ is lolcats_lab.kernels and never a usable top-level `kernels`."""

import os
import pathlib
import subprocess
import sys
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("lolcats_lab",) + p.parent.relative_to(ROOT / "lolcats_lab").parts)
             for p in (ROOT / "lolcats_lab").rglob("__init__.py")} | {"lolcats_lab.kernels"}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def _run(code: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_kernels_is_a_subpackage_outside_the_repo(tmp_path):
    r = _run("import lolcats_lab.kernels as k, importlib.util as u; print(k.__name__); print(u.find_spec('kernels'))", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["lolcats_lab.kernels", "None"]


def test_transformers_does_not_mistake_the_folder_for_hf_kernels_from_the_repo_root():
    """From the repo root the folder is on sys.path; transformers' probe imports it and must answer False
    (the GGUF loader calls this probe, so an exception here would break loading the default model)."""
    r = _run("from transformers.utils.import_utils import is_kernels_available as f; print(f())", ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_console_script_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lolcats-lab"] == "lolcats_lab.cli:main"
