"""Small helpers shared by the benchmark scripts (sizes, medians, error strings, per-kernel profiles)."""

from __future__ import annotations

import statistics

GiB = 2**30


class StandInKernel:
    """A kept compiled kernel (kernels/_launch.py's _COMPILED values) whose run returns at once: the launch path
    runs to its last step and no kernel runs. ``StandInKernel.runs`` counts the launches that reached one."""

    function = packed_metadata = None
    runs = 0

    def run(self, *args):
        StandInKernel.runs += 1


def err_str(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:1500]


def gib(n: int | None) -> float | None:
    return None if n is None else round(n / GiB, 2)


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def device_ms_per_op(step, cuda: bool) -> dict[str, float]:
    """One call of ``step`` under torch.profiler -> {kernel name: summed GPU ms}, largest first; on a CPU
    (cuda False) ops by self CPU time instead. Not a timing (the profiler slows the host); it splits the
    device's work."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    ms: dict[str, float] = {}
    for ev in prof.key_averages():
        if cuda:
            t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
            t = t if ev.device_type == torch.autograd.DeviceType.CUDA else 0.0
        else:
            t = ev.self_cpu_time_total
        if t:
            ms[ev.key] = ms.get(ev.key, 0.0) + t / 1e3
    return dict(sorted(ms.items(), key=lambda kv: -kv[1]))
