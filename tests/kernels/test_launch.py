"""kernels/_launch.py: an autotuned kernel goes through the autotuner once per key, then launches directly
with the config it chose; a new key (compile-time argument or dtype) goes through the autotuner again.
CPU: Triton's interpreter (one candidate config, as the kernel modules give it there)."""

import torch
import triton
import triton.language as tl

from lolcats_lab.kernels._launch import forget_choices, launch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.autotune(configs=[triton.Config({}, num_warps=4)], key=["N"])
@triton.jit
def add_one_kernel(x, N: tl.constexpr):
    o = tl.arange(0, N)
    tl.store(x + o, tl.load(x + o) + 1)


def test_autotunes_once_per_key_then_launches_directly(monkeypatch):
    calls = {"autotuner": 0, "direct": 0}
    tuner_run, jit_run = add_one_kernel.run, add_one_kernel.fn.run

    def counted_tuner(*args, **kwargs):
        calls["autotuner"] += 1
        return tuner_run(*args, **kwargs)

    def counted_jit(*args, **kwargs):
        calls["direct"] += 1
        return jit_run(*args, **kwargs)

    monkeypatch.setattr(add_one_kernel, "run", counted_tuner)
    monkeypatch.setattr(add_one_kernel.fn, "run", counted_jit)
    forget_choices()
    x = torch.zeros(16, device=DEVICE)
    launch(add_one_kernel, (1,), x, N=16)
    launch(add_one_kernel, (1,), x, N=16)
    launch(add_one_kernel, (1,), x, N=16)
    assert torch.equal(x, torch.full((16,), 3.0, device=DEVICE))  # every launch ran, whichever path
    assert calls == {"autotuner": 1, "direct": 3}  # the autotuner's own launch, then two direct ones
    y = torch.zeros(32, device=DEVICE)
    launch(add_one_kernel, (1,), y, N=32)  # new compile-time argument
    launch(add_one_kernel, (1,), torch.zeros(16, dtype=torch.float64, device=DEVICE), N=16)  # new dtype
    assert calls["autotuner"] == 3 and torch.equal(y, torch.ones(32, device=DEVICE))
    forget_choices()
    launch(add_one_kernel, (1,), x, N=16)
    assert calls["autotuner"] == 4 and torch.equal(x, torch.full((16,), 4.0, device=DEVICE))
