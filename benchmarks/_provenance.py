"""Which code a benchmark measured: the git commit, whether the working tree differed from it, and a hash of
the library's source as imported.

The GPU machine receives a copy of the working tree whose git history may be older than the code it holds,
so the commit alone can name the wrong code: ``worktree_dirty`` (tracked files differ from that commit)
says when to trust it, and ``worktree_diff_sha1`` identifies the difference (sha1 of ``git diff HEAD``).
Neither sees a baseline tree put first on PYTHONPATH (``baseline_tree.sh``). ``source_sha1`` does: a hash
of the ``.py`` files of the ``lolcats_lab`` package that Python imported (``lolcats_lab/kernels`` included,
wherever it was imported from), which this script recomputes for any git revision here:

    python benchmarks/_provenance.py                 # the imported package's hash
    python benchmarks/_provenance.py --rev 2f46f4f   # the hash that revision's code gives
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_sha1(files: dict[str, bytes]) -> str:
    """sha1 over {package-relative path: bytes} in path order (each path and its length, then the bytes)."""
    h = hashlib.sha1()
    for name in sorted(files):
        data = files[name]
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def imported_files() -> tuple[dict[str, bytes], str]:
    """The .py files of the imported lolcats_lab and lolcats_lab.kernels, keyed as lolcats_lab/... and
    lolcats_lab/kernels/..., and the folder lolcats_lab was imported from."""
    import lolcats_lab
    import lolcats_lab.kernels

    top, kern = Path(lolcats_lab.__file__).parent, Path(lolcats_lab.kernels.__file__).parent
    files = {}
    for prefix, folder in (("lolcats_lab", top), ("lolcats_lab/kernels", kern)):
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder)
            if "__pycache__" in rel.parts or (folder == top and rel.parts[0] == "kernels"):
                continue  # a kernels/ folder inside the package is keyed by its own walk
            files[f"{prefix}/{rel.as_posix()}"] = path.read_bytes()
    return files, str(top)


def files_at(rev: str, repo: Path = ROOT) -> dict[str, bytes]:
    """The same keys and bytes for git revision ``rev`` of this repository (kernels/ as lolcats_lab/kernels/)."""
    def git(*args, text=True):
        return subprocess.run(["git", *args], capture_output=True, text=text, check=True, cwd=repo).stdout

    files = {}
    for name in git("ls-tree", "-r", "--name-only", rev, "lolcats_lab", "kernels").split("\n"):
        if name.endswith(".py"):
            key = "lolcats_lab/" + name if name.startswith("kernels/") else name
            files[key] = git("show", f"{rev}:{name}", text=False)
    return files


def git_provenance(cwd: Path | None = None) -> dict:
    """{commit, worktree_dirty, worktree_diff_sha1, source_sha1, source_root}; None where unknown."""
    cwd = cwd or Path(__file__).parent

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=cwd).stdout

    try:
        files, root = imported_files()
        source = dict(source_sha1=source_sha1(files), source_root=root)
    except Exception:  # noqa: BLE001 - the package is not importable here
        source = dict(source_sha1=None, source_root=None)
    try:
        commit = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD")
    except Exception:  # noqa: BLE001 - no git, not a checkout: provenance unknown
        return dict(commit=None, worktree_dirty=None, worktree_diff_sha1=None, **source)
    return dict(
        commit=commit if len(commit) == 40 else None,
        worktree_dirty=bool(diff.strip()),
        worktree_diff_sha1=hashlib.sha1(diff.encode()).hexdigest() if diff.strip() else None,
        **source,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", help="a git revision of this repository (default: the imported package)")
    args = ap.parse_args(argv)
    if args.rev:
        print(source_sha1(files_at(args.rev)))
    else:
        files, root = imported_files()
        print(source_sha1(files), root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
