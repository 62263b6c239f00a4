"""Measure peak tensor memory on any device, CPU included.

``torch.cuda.max_memory_allocated`` has no CPU counterpart, so :class:`PeakMemory` counts it itself: a
``TorchDispatchMode`` sees every tensor an operator returns, records its storage (once, by identity) and
subtracts it again when the storage is freed (a weak reference's callback). Outputs that share an input's
storage (views, in-place results) are not new memory and are skipped. ``peak_bytes`` is the most that
was alive at once among storages created inside the ``with`` block; tensors that existed before (weights)
are not counted, so add them yourself. Views share their storage and count once. Allocator caching and
fragmentation are not included (CUDA's reserved memory is larger than what this reports).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["PeakMemory", "measure_peak", "tensor_bytes"]


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (an iterable of tensors, e.g. ``model.parameters()``)."""
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        key = (st.data_ptr(), st.device)
        if key not in seen:
            seen.add(key)
            total += st.nbytes()
    return total


class PeakMemory(TorchDispatchMode):
    """Context manager tracking live and peak bytes of storages created inside it.

    Example::

        with PeakMemory() as mem:
            loss = model(ids, labels=ids).loss
            loss.backward()
        mem.peak_bytes  # activations + gradients + temporaries, at their peak
    """

    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._refs: dict[int, weakref.ref] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        if self._refs.pop(key, None) is not None:
            self.live_bytes -= nbytes

    def _track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = id(st)
        ref = self._refs.get(key)
        if ref is not None and ref() is st:
            return
        nbytes = st.nbytes()
        self._refs[key] = weakref.ref(st, lambda _r, key=key, n=nbytes: self._freed(key, n))
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # views and in-place results share an input's storage: that memory is not new
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
                  and t.device.type != "meta"}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta" and id(t.untyped_storage()) not in inputs:
                self._track(t)
        return out


def measure_peak(fn, *, device: str | torch.device = "cpu", resident=()) -> tuple[object, int, float]:
    """Run ``fn()`` and return (its result, peak bytes, seconds).

    On CUDA the peak is ``torch.cuda.max_memory_allocated`` (everything allocated on the device, weights
    included). On CPU it is ``tensor_bytes(resident)`` (pass the model's parameters) plus the peak of what
    ``fn`` allocates, tracked by :class:`PeakMemory`, which slows CPU runs (a Python hook per operator): CPU
    seconds measured here are not throughput figures.
    """
    import time

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(device)
        return out, int(torch.cuda.max_memory_allocated(device)), time.perf_counter() - t0
    base = tensor_bytes(resident)
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        out = fn()
    return out, base + mem.peak_bytes, time.perf_counter() - t0
