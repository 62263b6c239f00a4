"""benchmarks/sweep_hedgehog_configs.py pins one launch config on each linear-attention kernel."""

import sys
from pathlib import Path

import lolcats_lab.kernels.linear_attn as la

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sweep_hedgehog_configs as sweep  # noqa: E402

KERNELS = (la.linear_attn_fwd_kernel, la.linear_attn_bwd_dq_kernel, la.linear_attn_bwd_dkv_kernel)


def test_pin_configs_leaves_one_candidate_per_kernel(monkeypatch):
    for kernel in KERNELS:
        monkeypatch.setattr(kernel, "configs", list(kernel.configs))  # restored afterwards
        monkeypatch.setattr(kernel, "cache", dict(kernel.cache))
    sweep.pin_configs(4, 1)
    for kernel in KERNELS:
        assert [(c.num_warps, c.num_stages) for c in kernel.configs] == [(4, 1)] and kernel.cache == {}
