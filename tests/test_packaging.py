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


def _installed_kernels_origin(tmp_path) -> str:
    """Where a top-level ``kernels`` comes from outside the repository: Hugging Face's package (transformers 5.25
    and later require it) or "None"."""
    r = _run("import importlib.util as u; s = u.find_spec('kernels'); print(s.origin if s else None)", tmp_path)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_kernels_is_a_subpackage_outside_the_repo(tmp_path):
    r = _run("import lolcats_lab.kernels as k; print(k.__name__); print(k.__file__)", tmp_path)
    assert r.returncode == 0, r.stderr
    name, path = r.stdout.splitlines()
    assert name == "lolcats_lab.kernels" and pathlib.Path(path) == ROOT / "kernels" / "__init__.py"
    origin = _installed_kernels_origin(tmp_path)
    assert origin == "None" or pathlib.Path(origin).parent != ROOT / "kernels", origin  # never this folder


def test_top_level_kernels_from_the_repo_root_is_never_this_folder(tmp_path):
    """From the repo root the folder is on sys.path ahead of site-packages. With Hugging Face's ``kernels``
    installed, importing the top-level name must give that package (transformers imports names from it, and
    the GGUF loader of the default model goes through transformers); without it, transformers' probe must
    answer False (the folder does not look like that package). Either way transformers' modules import."""
    origin = _installed_kernels_origin(tmp_path)
    code = ("import kernels, transformers.activations\n"
            "from transformers.utils.import_utils import is_kernels_available as f\n"
            "print(kernels.__file__); print(f())")  # fmt: skip
    r = _run(code, ROOT)
    assert r.returncode == 0, r.stderr
    path, available = r.stdout.splitlines()
    if origin == "None":
        assert available == "False"
    else:
        assert pathlib.Path(path) == pathlib.Path(origin) and pathlib.Path(path).parent != ROOT / "kernels"
        assert available == "True"


def test_console_script_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lolcats-lab"] == "lolcats_lab.cli:main"
