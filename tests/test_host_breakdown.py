"""benchmarks/host_breakdown.py: its exit on a machine without CUDA, and its host timer's call counting."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import host_breakdown  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU exit")
def test_main_without_cuda_says_so_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "hb.json"
    assert host_breakdown.main(["--out", str(out)]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out and not out.exists()


def test_host_us_runs_samples_times_calls_and_reports_microseconds(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    calls = []
    us = host_breakdown.host_us(lambda: calls.append(1), samples=3, calls=4)
    assert len(calls) == 12
    assert 0 < us < 1e4  # an empty call: well under 10 ms


def test_variants_restore_the_launch_path(monkeypatch):
    """After timing with stand-ins and with launches removed, the kept kernels and every module's launch
    functions are the real ones again."""
    import lolcats_lab.kernels.hybrid_attn  # noqa: F401  (the kernel modules with launch functions)
    import lolcats_lab.kernels._launch as L

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(L, "_COMPILED", {("k",): ("compiled", ())})
    before = {(m.__name__, n): getattr(m, n) for m in host_breakdown._kernel_modules()
              for n in ("launch", "launch_jit") if hasattr(m, n)}  # fmt: skip
    out = host_breakdown.variants(lambda: None)
    assert set(out) == {"full_us", "kept_launches_per_call", "stand_in_us", "no_launch_us"}
    assert L._COMPILED == {("k",): ("compiled", ())}
    after = {(m.__name__, n): getattr(m, n) for m in host_breakdown._kernel_modules()
             for n in ("launch", "launch_jit") if hasattr(m, n)}  # fmt: skip
    assert after == before and before
