"""benchmarks/_provenance.py: the hash of the imported library's source, which names the code a GPU result
measured even when the machine's git history is stale or a baseline tree is first on PYTHONPATH."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _provenance  # noqa: E402

needs_git = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                               reason="needs a git checkout")


@needs_git
def test_a_baseline_tree_imports_with_the_hash_of_its_revision(tmp_path):
    """baseline_tree.sh's layout of HEAD (kernels/ moved into lolcats_lab/), imported first on PYTHONPATH by
    another process, hashes as files_at("HEAD") does; and the key set is the package's .py files."""
    script = ROOT / "benchmarks" / "baseline_tree.sh"
    subprocess.run(["bash", str(script), "HEAD", str(tmp_path / "tree")], check=True, capture_output=True, cwd=ROOT)
    env = {"PYTHONPATH": str(tmp_path / "tree"), "PATH": ""}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "_provenance.py")], check=True,
                         capture_output=True, text=True, env=env)
    digest, root = out.stdout.split()
    assert Path(root) == tmp_path / "tree" / "lolcats_lab"
    files = _provenance.files_at("HEAD")
    assert digest == _provenance.source_sha1(files)
    assert "lolcats_lab/__init__.py" in files and "lolcats_lab/kernels/linear_attn.py" in files
    assert not any(name.startswith("kernels/") or not name.endswith(".py") for name in files)


def test_the_hash_sees_one_byte_and_a_rename():
    files = {"lolcats_lab/a.py": b"x = 1\n", "lolcats_lab/kernels/b.py": b"y = 2\n"}
    base = _provenance.source_sha1(files)
    assert base == _provenance.source_sha1(dict(reversed(list(files.items()))))  # order of the dict: no effect
    assert base != _provenance.source_sha1({**files, "lolcats_lab/a.py": b"x = 2\n"})
    renamed = {"lolcats_lab/c.py": b"x = 1\n", "lolcats_lab/kernels/b.py": b"y = 2\n"}
    assert base != _provenance.source_sha1(renamed)
    # a byte moved across the boundary of two files changes it too (lengths are hashed)
    assert _provenance.source_sha1({"a": b"xy", "b": b""}) != _provenance.source_sha1({"a": b"x", "b": b"y"})


def test_environment_records_the_imported_source():
    env = _provenance.git_provenance()
    files, root = _provenance.imported_files()
    assert env["source_sha1"] == _provenance.source_sha1(files) and env["source_root"] == root
