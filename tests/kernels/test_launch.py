"""kernels/_launch.py: an autotuned kernel goes through the autotuner once per key, then launches directly
with the config it chose; a new key (compile-time argument or dtype) goes through the autotuner again.
On a GPU the compiled kernel is then kept and launched through CompiledKernel.run while the arguments'
specialisation matches. CPU: Triton's interpreter (one candidate config, as the kernel modules give it
there), and the kept-kernel logic against stand-ins for Triton's objects (the interpreter compiles nothing)."""

from types import SimpleNamespace

import pytest
import torch
import triton
import triton.language as tl

import lolcats_lab.kernels._launch as launch_module
from lolcats_lab.kernels._launch import argument_signature, forget_choices, launch, launch_jit

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.autotune(configs=[triton.Config({}, num_warps=4)], key=["N"])
@triton.jit
def add_one_kernel(x, N: tl.constexpr):
    o = tl.arange(0, N)
    tl.store(x + o, tl.load(x + o) + 1)


def test_autotunes_once_per_key_then_launches_directly(monkeypatch):
    monkeypatch.setattr(launch_module, "DIRECT_LAUNCH", False)  # every launch after the first through fn.run
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


# --------------------------------------------------------------------------- kept compiled kernels (CPU)
class _Compiled:
    """Stands in for triton.compiler.CompiledKernel: records what its launcher is called with."""

    packed_metadata = "packed"
    function = "function-handle"

    def __init__(self, log):
        self.run = lambda *a: log.append(("compiled", a))


class _Jit:
    """Stands in for a JITFunction with parameters (x, n, N, BLOCK): fn[grid](...) records a Triton launch."""

    arg_names = ["x", "n", "N", "BLOCK"]

    def __init__(self, log, constexprs=("N", "BLOCK")):
        self.log = log
        self.params = [SimpleNamespace(name=n, is_constexpr=n in constexprs) for n in self.arg_names]

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append(("triton", grid, args, kwargs))
            return _Compiled(self.log)

        return run


class _Tuned:
    """Stands in for an @triton.autotune kernel whose chosen config is 4 warps."""

    def __init__(self, log, **jit_options):
        self.fn = _Jit(log, **jit_options)
        self.best_config = triton.Config({}, num_warps=4)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.fn.log.append(("autotuner", grid, args, kwargs))


@pytest.fixture
def gpu_like(monkeypatch):
    """_launch as on a GPU: not interpreting, device 0, a fixed stream handle, no launch hooks."""
    monkeypatch.setattr(launch_module, "is_interpreter", lambda: False)
    monkeypatch.setattr(launch_module, "DIRECT_LAUNCH", True)
    monkeypatch.setattr(launch_module, "_raw_stream", lambda device: 1234)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    forget_choices()
    yield
    forget_choices()


def test_kept_kernel_launches_with_arguments_in_signature_order(gpu_like):
    log = []
    kernel = _Tuned(log)
    x = torch.zeros(8)  # a fresh allocation: 16-byte aligned
    for _ in range(3):
        launch(kernel, (2, 3), x, 5, N=16, BLOCK=32)
    assert [entry[0] for entry in log] == ["autotuner", "triton", "compiled"]
    assert log[1][3] == dict(N=16, BLOCK=32, **triton.Config({}, num_warps=4).all_kwargs())
    grid_and_launch_args, args = log[2][1][:9], log[2][1][9:]
    assert grid_and_launch_args[:7] == (2, 3, 1, 1234, "function-handle", "packed", None)
    assert args[0] is x and args[1:] == (5, 16, 32)  # positional, then the rest by parameter name


def test_a_new_specialisation_goes_through_triton_again(gpu_like):
    log = []
    kernel = _Tuned(log)
    x = torch.zeros(8)
    launch(kernel, (1,), x, 5, N=16, BLOCK=32)  # autotuner
    launch(kernel, (1,), x, 5, N=16, BLOCK=32)  # Triton, kept
    launch(kernel, (1,), x[1:], 5, N=16, BLOCK=32)  # 4 bytes past an aligned pointer: Triton again
    launch(kernel, (1,), x, 1, N=16, BLOCK=32)  # an integer equal to 1 (Triton makes it a constant)
    launch(kernel, (1,), x, 32, N=16, BLOCK=32)  # divisible by 16
    launch(kernel, (1,), x, 2**40, N=16, BLOCK=32)  # past int32
    assert [entry[0] for entry in log] == ["autotuner"] + ["triton"] * 5
    launch(kernel, (1,), x[1:], 7, N=16, BLOCK=32)  # same signature as the unaligned call above
    launch(kernel, (1,), x, 3, N=16, BLOCK=32)  # same as 5: odd, not 1, int32
    assert [entry[0] for entry in log[-2:]] == ["compiled", "compiled"]


def test_what_the_key_cannot_vouch_for_takes_tritons_path(gpu_like, monkeypatch):
    log = []
    kernel = _Tuned(log)
    x = torch.zeros(8)
    launch(kernel, (1,), x, 5, N=16, BLOCK=32)
    launch(kernel, (1,), x, "not an argument kind the key models", N=16, BLOCK=32)
    launch(kernel, (1,), x, "not an argument kind the key models", N=16, BLOCK=32)
    for _ in range(3):  # BLOCK left to a default: the parameter list cannot be built, nothing is kept
        launch(kernel, (1,), x, 5, N=16)
    assert [entry[0] for entry in log] == ["autotuner", "triton", "triton", "autotuner", "triton", "triton"]
    launch(kernel, (1,), x, 5, N=16, BLOCK=32)  # kept now; with a profiler's launch hook, Triton's path
    hook = triton.knobs.runtime.launch_enter_hook
    monkeypatch.setattr(hook, "calls", [lambda metadata: None])
    launch(kernel, (1,), x, 5, N=16, BLOCK=32)
    assert [entry[0] for entry in log[-2:]] == ["triton", "triton"]


def test_a_compile_time_parameter_given_by_position_is_never_kept(gpu_like):
    """Its value decides the compiled code, and the argument signature holds only its divisibility."""
    log = []
    kernel = _Tuned(log, constexprs=("n", "N", "BLOCK"))
    x = torch.zeros(8)
    for n in (3, 5, 5):
        launch(kernel, (1,), x, n, N=16, BLOCK=32)
    assert [entry[0] for entry in log] == ["autotuner", "triton", "triton"]


def test_plain_jit_kernel_is_kept_after_its_first_launch(gpu_like, monkeypatch):
    """launch_jit: Triton's path once per keyword arguments and signature, then the kept kernel, its launch
    options (num_warps) left out of the parameter list; a launch hook sends it back to Triton's path."""
    log = []
    kernel = _Jit(log)
    x = torch.zeros(8)
    for _ in range(3):
        launch_jit(kernel, (4,), x, 5, N=16, BLOCK=32, num_warps=4)
    launch_jit(kernel, (4,), x, 5, N=16, BLOCK=64, num_warps=4)  # another compile-time value: Triton again
    assert [entry[0] for entry in log] == ["triton", "compiled", "compiled", "triton"]
    assert log[0][3] == dict(N=16, BLOCK=32, num_warps=4)
    assert log[1][1][:7] == (4, 1, 1, 1234, "function-handle", "packed", None) and log[1][1][9:] == (x, 5, 16, 32)
    monkeypatch.setattr(triton.knobs.runtime.launch_enter_hook, "calls", [lambda metadata: None])
    launch_jit(kernel, (4,), x, 5, N=16, BLOCK=32, num_warps=4)
    assert log[-1][0] == "triton"


def test_argument_signature():
    x = torch.zeros(8)
    assert argument_signature([x]) == ((torch.float32, True),)
    assert argument_signature([x[1:]]) == ((torch.float32, False),)
    assert argument_signature([True, 1.5]) == (("b", True), ("f",))
    assert argument_signature([16, 1, 7, -1]) == (
        ("i", True, False, True, True),
        ("i", False, True, True, True),
        ("i", False, False, True, True),
        ("i", False, False, True, False),
    )
    assert argument_signature([None]) is None
    # a Parameter is keyed as a tensor; another tensor subclass is not modelled (Triton's own path)
    assert argument_signature([torch.nn.Parameter(x)]) == ((torch.float32, True),)

    class Tagged(torch.Tensor):
        pass

    assert argument_signature([x.as_subclass(Tagged)]) is None


@triton.jit
def add_two_kernel(x, N: tl.constexpr):
    o = tl.arange(0, N)
    tl.store(x + o, tl.load(x + o) + 2)


def test_launch_jit_runs_the_kernel():
    """launch_jit launches (interpreter on CPU, Triton then the kept kernel on a GPU): three calls add 6."""
    forget_choices()
    x = torch.zeros(16, device=DEVICE)
    for _ in range(3):
        launch_jit(add_two_kernel, (1,), x, N=16, num_warps=1)
    assert torch.equal(x, torch.full((16,), 6.0, device=DEVICE))
    forget_choices()


@pytest.mark.gpu
def test_gpu_kept_kernel_matches_tritons_launch():
    """On a GPU: the kept kernel's launches give what Triton's own launches give, for aligned and unaligned
    pointers, and a new specialisation is compiled rather than reused."""
    forget_choices()
    base = torch.zeros(64, device="cuda")
    calls = []
    jit_run = add_one_kernel.fn.run
    add_one_kernel.fn.run = lambda *a, **k: calls.append(1) or jit_run(*a, **k)
    try:  # autotuner, then Triton for each alignment (kept), then the kept kernels twice each
        for view in (base[:16], base[1:17]) * 3:
            launch(add_one_kernel, (1,), view, N=16)
    finally:
        del add_one_kernel.fn.run
    assert torch.equal(base[:1], torch.full((1,), 3.0, device="cuda"))
    assert torch.equal(base[1:16], torch.full((15,), 6.0, device="cuda"))
    assert torch.equal(base[16:17], torch.full((1,), 3.0, device="cuda"))
    assert len(calls) == 3  # the autotuner's own launch and one per alignment; the other three were direct
    assert len(launch_module._COMPILED) == 2  # one per alignment
    forget_choices()
