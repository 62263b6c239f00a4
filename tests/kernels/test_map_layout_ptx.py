"""benchmarks/map_layout_ptx.py: its two layouts of the Hedgehog map compute the same softmaxes as PyTorch (so
the script compares the compiled cost of equal work). CPU runs use Triton's interpreter, fp32 inputs."""

import importlib.util
from pathlib import Path

import torch

from tests.tolerances import check_close

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _script():
    spec = importlib.util.spec_from_file_location("map_layout_ptx", ROOT / "benchmarks" / "map_layout_ptx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_map_layouts_equal_the_softmaxes():
    """Interleaved [BT, 2f] and halves [BT, f] give (softmax(x W), softmax(-x W)) within fp32 rounding; a
    layout that swapped the two halves would be 100% off (the check can fail)."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(16, 32, generator=g), torch.randn(32, 16, generator=g)
    z = x @ w
    ref = torch.cat([z.softmax(-1), (-z).softmax(-1)], dim=1)  # [16, 32]
    inter, halves = _script().run_both(x.to(DEVICE), w.to(DEVICE))
    check_close("interleaved", ref, inter.cpu(), ratio=1e-4, atol=1e-6)
    check_close("halves", ref, halves.cpu(), ratio=1e-4, atol=1e-6)
    assert (ref - torch.cat([ref[:, 16:], ref[:, :16]], dim=1)).abs().max() > 1e-2
