"""benchmarks/graphed_vs_eager.py: its SDPA ratios and its exit on a machine without CUDA."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import graphed_vs_eager as probe  # noqa: E402


def test_speedups_pair_rows_with_sdpa_of_the_same_length():
    rows = [
        dict(provider="sdpa", T=4096, eager_ms=1.0, graph_ms=0.9, host_ms=0.1),
        dict(provider="sdpa", T=8192, eager_ms=4.0, graph_ms=3.6, host_ms=0.1),
        dict(provider="ours", T=4096, eager_ms=1.25, graph_ms=0.75, host_ms=0.6),
        dict(provider="ours", T=8192, eager_ms=2.0, graph_error="capture failed", host_ms=0.6),
        dict(provider="ours", T=16384, eager_ms=5.0, graph_ms=4.0, host_ms=0.6),  # no SDPA row: no ratio
        dict(provider="broken", T=4096, error="out of memory"),  # no timing: no ratio
    ]
    got = probe.speedups_vs_sdpa(rows)
    assert got == {
        "ours@4096": dict(sdpa_over_eager=0.8, sdpa_over_graph=1.2),
        "ours@8192": dict(sdpa_over_eager=2.0, sdpa_over_graph=None),
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU exit")
def test_main_without_cuda_says_so_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "g.json"
    assert probe.main(["--out", str(out)]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out and not out.exists()
