"""benchmarks/ncu_stage2_kernels.py's GPU-only helpers, run on tiny shapes in Triton's interpreter: each one
builds its inputs and hands every step to ``profiled`` (on the GPU: once to compile, once under ncu)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ncu_stage2_kernels as ncu  # noqa: E402


def _counting():
    calls = []

    def profiled(step):
        step()
        calls.append(step)

    return calls, profiled


def test_hedgehog_and_linear_profiles_both_ops():
    calls, profiled = _counting()
    ncu.hedgehog_and_linear(40, H=2, D=16, f=8, device="cpu", profiled=profiled)
    assert len(calls) == 2


def test_decode_steps_profile_a_mid_block_and_a_block_start_step():
    calls, profiled = _counting()
    ncu.decode_steps(B=1, H=2, D=16, w=4, device="cpu", profiled=profiled)
    assert len(calls) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without a GPU")
def test_main_without_a_gpu_says_so(capsys):
    assert ncu.main(["--hedgehog", "16384"]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out
