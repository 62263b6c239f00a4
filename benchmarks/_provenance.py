"""Which code a benchmark measured: the git commit and whether the working tree differed from it.

The GPU machine receives a copy of the working tree whose git history may be older than the code it holds,
so the commit alone can name the wrong code: ``worktree_dirty`` (tracked files differ from that commit)
says when to trust it, and ``worktree_diff_sha1`` identifies the difference (sha1 of ``git diff HEAD``).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path


def git_provenance(cwd: Path | None = None) -> dict:
    """{commit, worktree_dirty, worktree_diff_sha1}; None values where git is unavailable."""
    cwd = cwd or Path(__file__).parent

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=cwd).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD")
    except Exception:  # noqa: BLE001 - no git, not a checkout: provenance unknown
        return dict(commit=None, worktree_dirty=None, worktree_diff_sha1=None)
    return dict(
        commit=commit if len(commit) == 40 else None,
        worktree_dirty=bool(diff.strip()),
        worktree_diff_sha1=hashlib.sha1(diff.encode()).hexdigest() if diff.strip() else None,
    )
