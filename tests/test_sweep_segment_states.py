"""benchmarks/sweep_segment_states.py in the interpreter: every load tile gives the state sums of the default
launch (fp32, so only summation order differs) and those equal an einsum over each segment's tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_every_tile_matches_the_default_launch(tmp_path):
    out = tmp_path / "sweep.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sweep_segment_states.py"), "--device", "cpu", "--T", "256",
           "--heads", "1", "--segments", "2", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    assert {(r["mode"], r["tile"]) for r in rows} == {(m, t) for m in ("forward", "reverse") for t in (32, 64, 128)}
    assert all("error" not in r and r["max_rel_err"] < 1e-5 for r in rows), rows


@pytest.mark.parametrize("tile", [32, 128])
def test_states_equal_an_einsum_per_segment(tile):
    """run_states at a load tile (32 or 128) against an fp64 einsum per segment, and it leaves the module's
    default load tile as it found it (the sweep sets it per call)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import sweep_segment_states as sweep
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import lolcats_lab.kernels.segments as seg

    default_tile = seg._STATE_TILE
    phi, v, den, dd, bounds = sweep.make_inputs(1, 2, 256, 128, 2, "cpu")
    S = sweep.run_states(phi, v, bounds, tile)  # [B*H, NSEG, F, D]
    assert seg._STATE_TILE == default_tile
    for s in range(2):
        lo, hi = bounds[s].tolist()
        ref = torch.einsum("hjf,hjd->hfd", phi[0, :, lo:hi].double(), v[0, :, lo:hi].double())
        torch.testing.assert_close(S[:, s].double(), ref, rtol=1e-5, atol=1e-4)  # tf32x3 dots: ~1e-6 relative
