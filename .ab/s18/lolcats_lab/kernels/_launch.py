"""Launching autotuned kernels without going through the autotuner, or Triton's dispatcher, on every call.

``@triton.autotune`` runs Python on each launch before Triton's own launcher: it zips the arguments into
dicts, builds its cache key (with ``str(dtype)`` for every tensor argument) and merges the chosen config's
options. Below 8k tokens our forward+backward is bound by host time, not the GPU (benchmarks/README.md,
profile_kernels.py), with seven autotuned launches per linear-attention call. :func:`launch` sends the first
call for each (kernel, compile-time arguments, tensor dtypes) through the autotuner, which times its
candidates then, and launches the config it chose directly afterwards: the same kernel and options
Autotuner.run would pass, one dict lookup instead of its bookkeeping.

Past the autotuner, Triton's ``JITFunction.run`` still binds every argument, specialises each one (dtype,
16-byte alignment of pointers, integers divisible by 16 or equal to 1), builds a cache key, reads its
knobs and checks the kernel's globals on every launch: about 70 us per launch under cProfile on the H200
machine's host, of which the launch itself is about a third. With ``DIRECT_LAUNCH`` (on a GPU, not in the
interpreter) :func:`launch` keeps the compiled kernel Triton returns, keyed by the kernel, its keyword
arguments and a specialisation of the runtime arguments at least as fine as Triton's
(:func:`argument_signature`, which holds the dtypes, so the choice key follows from it), and later calls
with the same key launch it through ``CompiledKernel.run`` with the arguments in signature order, exactly
as the last lines of ``JITFunction.run`` do; that lookup comes first, before the choice key is built.
:func:`launch_jit` does the same for plain ``@triton.jit`` kernels (the Hedgehog map, the segment scan,
the decode step). Anything the key cannot vouch for (an argument of another kind, a compile-time parameter
given by position, a registered launch hook, a parameter left to its default) takes Triton's own path.
"""

from __future__ import annotations

import torch

from ._utils import is_interpreter

# Launch a kernel compiled for an identical specialisation through CompiledKernel.run (see the module
# docstring). False: every launch goes through JITFunction.run (benchmarks compare both).
DIRECT_LAUNCH = True

_CHOSEN: dict[tuple, dict] = {}  # (kernel id, keyword arguments, dtypes) -> the chosen config's launch options
# ((kernel id, keyword arguments), argument signature, device) -> (CompiledKernel, the parameters after the
# positional ones)
_COMPILED: dict[tuple, tuple] = {}
_INT32 = (-(2**31), 2**31)
_INT_SIGNATURES: dict[int, tuple] = {}  # integer argument -> its argument_signature entry
_FLOAT = ("f",)
_PLAIN_TENSORS = frozenset({torch.Tensor, torch.nn.Parameter})  # exact types argument_signature keys


try:  # the current CUDA stream's handle, read as Triton's GPU driver reads it
    from torch._C import _cuda_getCurrentRawStream as _raw_stream
except ImportError:  # a CPU-only torch build; Triton's driver falls back the same way

    def _raw_stream(device: int) -> int:
        return torch.cuda.current_stream(device).cuda_stream

try:
    from triton import knobs as _knobs
except ImportError:  # a Triton without knobs: no direct launches
    _knobs = None


def _scalar_signature(a):
    """argument_signature's entry for a non-tensor argument, None for a kind it does not model (an exact
    type test: a subclass of int, such as bool, is not an int here)."""
    t = type(a)
    if t is int:
        sig = _INT_SIGNATURES.get(a)
        if sig is None:
            if len(_INT_SIGNATURES) > 4096:  # e.g. many distinct sequence lengths: start over
                _INT_SIGNATURES.clear()
            sig = _INT_SIGNATURES[a] = ("i", a % 16 == 0, a == 1, _INT32[0] <= a < _INT32[1], 0 <= a < 2**63)
        return sig
    if t is bool:
        return ("b", a)
    if t is float:
        return _FLOAT
    return None


def argument_signature(args) -> tuple | None:
    """What Triton specialises a compiled kernel on, per runtime argument, or None when an argument is of a
    kind this does not model. Tensors: dtype and whether the pointer is 16-byte aligned. Integers: the
    value's divisibility by 16, whether it is 1, and its integer type's range (i32, i64, u64); floats:
    their type only; booleans: their value. At least as fine as Triton's own key, so two calls with equal
    signatures (and equal compile-time arguments) run the same compiled kernel. This runs on every launch:
    one list comprehension with remembered integer entries took 0.66-0.95x the time of a loop with an
    isinstance chain per argument (20 arguments, three rounds in one run on the CPU machine), and an exact
    type test for tensors 0.69x the isinstance form's (25 arguments, 2.9-3.4 against 4.3-4.9 us). A tensor
    subclass other than Parameter gets None: Triton's own path."""
    sig = tuple([(a.dtype, a.data_ptr() & 15 == 0) if type(a) in _PLAIN_TENSORS else _scalar_signature(a)
                 for a in args])  # fmt: skip
    return None if None in sig else sig


def _hooks_registered() -> bool:
    """Whether a launch hook (a profiler such as proton) is registered."""
    hook = _knobs.runtime.launch_enter_hook
    return hook is not None and bool(getattr(hook, "calls", True))


def _direct_ok() -> bool:
    """Whether launches may go through kept compiled kernels now: DIRECT_LAUNCH, a GPU rather than the
    interpreter, and no launch hook registered (a profiler such as proton reads the metadata that Triton's
    path builds)."""
    return DIRECT_LAUNCH and _knobs is not None and not is_interpreter() and not _hooks_registered()


def _launch_kept(base, grid, args) -> tuple[tuple | None, bool]:
    """Launch the CompiledKernel kept for ``base`` (kernel id, keyword arguments) and these arguments'
    signature on the current device, as the last lines of JITFunction.run do. Returns (spec, launched):
    spec is the key to keep a compiled kernel under, None when launches may not be kept now (_direct_ok)
    or the arguments cannot be keyed."""
    signature = argument_signature(args) if _direct_ok() else None
    if signature is None:
        return None, False
    device = torch.cuda.current_device()
    spec = (base, signature, device)
    kept = _COMPILED.get(spec)
    if kept is None:
        return spec, False
    compiled, tail = kept
    g0, g1, g2 = (tuple(grid) + (1, 1))[:3]
    compiled.run(g0, g1, g2, _raw_stream(device), compiled.function, compiled.packed_metadata, None,
                 _knobs.runtime.launch_enter_hook, _knobs.runtime.launch_exit_hook, *args, *tail)  # fmt: skip
    return spec, True


def _compile_and_keep(spec, fn, grid, args, kwargs, options) -> None:
    """Launch through Triton's JITFunction ``fn`` and keep the CompiledKernel it returns under ``spec``, with
    the parameters after the positional ones in signature order, when that list is complete."""
    compiled = fn[grid](*args, **kwargs, **options)  # JITFunction.run returns the CompiledKernel
    merged = {**kwargs, **options}
    names = fn.arg_names[len(args):]
    # a compile-time parameter given by position would be keyed by its signature, not its value
    positional_constexpr = any(p.is_constexpr for p in fn.params[: len(args)])
    if (compiled is not None and hasattr(compiled, "packed_metadata") and not positional_constexpr
            and all(n in merged for n in names)):  # fmt: skip
        _COMPILED[spec] = (compiled, tuple(merged[n] for n in names))


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` for an ``@triton.autotune`` kernel, autotuning once per key.

    The key holds every keyword argument (the compile-time ones here, a superset of the autotuner's key)
    and the dtypes of the tensor arguments, so a new shape class or dtype goes through the autotuner
    again; integer arguments such as the sequence length are not part of it (the kernels do not
    specialise on them, and the autotuner does not key on them either). ``grid``: a tuple. Once a config
    is chosen, a kept compiled kernel serves every later call whose argument signature it was compiled
    for (the signature holds the dtypes, so the choice key follows from it)."""
    base = (id(kernel), tuple(kwargs.items()))
    spec, launched = _launch_kept(base, grid, args)
    if launched:
        return
    key = base + (tuple(a.dtype for a in args if isinstance(a, torch.Tensor)),)
    options = _CHOSEN.get(key)
    if options is None:
        kernel[grid](*args, **kwargs)
        _CHOSEN[key] = kernel.best_config.all_kwargs()
    elif spec is not None:
        _compile_and_keep(spec, kernel.fn, grid, args, kwargs, options)
    else:
        kernel.fn[grid](*args, **kwargs, **options)


def launch_jit(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` for a plain ``@triton.jit`` kernel (launch options such as
    ``num_warps`` among the keyword arguments): the first call per keyword arguments and argument signature
    goes through Triton, later ones through the CompiledKernel it returned (as :func:`launch` does after
    autotuning)."""
    spec, launched = _launch_kept((id(kernel), tuple(kwargs.items())), grid, args)
    if launched:
        return
    if spec is not None:
        _compile_and_keep(spec, kernel, grid, args, kwargs, {})
    else:
        kernel[grid](*args, **kwargs)


def forget_choices() -> None:
    """Drop every remembered choice and kept kernel (the next launch of each key autotunes again), e.g. after
    changing a kernel's candidate configs in a tuning sweep."""
    _CHOSEN.clear()
    _COMPILED.clear()
