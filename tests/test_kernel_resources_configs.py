"""benchmarks/kernel_resources.py's --configs syntax: num_warps x num_stages, optionally a register cap."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from kernel_resources import parse_config  # noqa: E402


@pytest.mark.parametrize("text,expected", [("8x2", (8, 2, None)), ("4x3r128", (4, 3, 128)), ("4x1r168", (4, 1, 168))])
def test_parse_config(text, expected):
    assert parse_config(text) == expected


@pytest.mark.parametrize("text", ["8", "4x3r", "ax2"])
def test_parse_config_rejects_malformed(text):
    with pytest.raises(ValueError, match=r"is not WARPSxSTAGES or WARPSxSTAGESrMAXNREG"):
        parse_config(text)
