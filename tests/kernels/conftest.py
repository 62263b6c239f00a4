"""Fixtures shared by the kernel tests."""

import math

import pytest
import torch


@pytest.fixture
def poison_empty(monkeypatch):
    """Fill torch.empty / empty_like / new_empty with NaN (ints with -7) so that a value a kernel forgot to
    write shows up (fla's tests/conftest.py does the same)."""
    real_empty, real_like, real_new = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def poison(x):
        return x.fill_(math.nan) if x.is_floating_point() else x.fill_(-7)

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(real_like(*a, **kw)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **kw: poison(real_new(self, *a, **kw)))
