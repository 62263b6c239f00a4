"""Launching autotuned kernels without going through the autotuner on every call.

``@triton.autotune`` runs Python on each launch before Triton's own launcher: it zips the arguments into
dicts, builds its cache key (with ``str(dtype)`` for every tensor argument) and merges the chosen config's
options. Below 8k tokens our forward+backward is bound by host time, not the GPU (benchmarks/README.md,
profile_kernels.py), with seven autotuned launches per linear-attention call. :func:`launch` sends the first
call for each (kernel, compile-time arguments, tensor dtypes) through the autotuner, which times its
candidates then, and launches the config it chose directly afterwards: the same kernel and options
Autotuner.run would pass, one dict lookup instead of its bookkeeping.
"""

from __future__ import annotations

import torch

_CHOSEN: dict[tuple, dict] = {}  # (kernel id, constexprs, dtypes) -> the chosen config's launch options


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` for an ``@triton.autotune`` kernel, autotuning once per key.

    The key holds every keyword argument (the compile-time ones here, a superset of the autotuner's key)
    and the dtypes of the tensor arguments, so a new shape class or dtype goes through the autotuner
    again; integer arguments such as the sequence length are not part of it (the kernels do not
    specialise on them, and the autotuner does not key on them either)."""
    key = (id(kernel), tuple(kwargs.items()), tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
    options = _CHOSEN.get(key)
    if options is None:
        kernel[grid](*args, **kwargs)
        _CHOSEN[key] = kernel.best_config.all_kwargs()
    else:
        kernel.fn[grid](*args, **kwargs, **options)


def forget_choices() -> None:
    """Drop every remembered choice (the next launch of each key autotunes again), e.g. after changing a
    kernel's candidate configs in a tuning sweep."""
    _CHOSEN.clear()
