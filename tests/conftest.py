"""Test-wide set-up. Runs before any lolcats_lab import."""

import os

import torch

if not torch.cuda.is_available():
    # Triton reads this when @triton.jit decorates a function, so it must be set before the kernel
    # modules are imported: without a GPU, kernels run in Triton's interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    import pytest

    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine with -m gpu)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)
