"""Small helpers shared by the benchmark scripts (sizes, medians, error strings)."""

from __future__ import annotations

import statistics

GiB = 2**30


def err_str(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:1500]


def gib(n: int | None) -> float | None:
    return None if n is None else round(n / GiB, 2)


def med(xs: list[float]) -> float:
    return statistics.median(xs)
