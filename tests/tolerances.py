"""One table of comparison tolerances (STYLE.md section 3), used by every test that compares a fast or
alternative form with its reference computed in fp32 (or fp64).

ratio = relative RMS error allowed, atol = absolute floor (a check passes on either). Measured
(2026-11-23) as the worst relative RMS of chunked / recurrent linear and chunked hybrid attention in each
dtype vs the fp64 quadratic reference, over 5 seeds x T in {1, 63, 65, 129} x D in {4, 8, 16}, B=2, H=3,
Hedgehog F=12, window 16 (fp32 accumulation; the error is the inputs' and outputs' rounding):
  fp32: measured 1.3e-7 -> 1e-5
  fp16: measured 4.0e-4 -> 3e-3   (10-bit mantissa)
  bf16: measured 3.2e-3 -> 2e-2   (7-bit mantissa)
Identities between naive forms run in float64 with torch.testing.assert_close defaults.
"""

import torch

TOLERANCES = {
    torch.float32: dict(ratio=1e-5, atol=1e-6),
    torch.float16: dict(ratio=3e-3, atol=1e-4),
    torch.bfloat16: dict(ratio=2e-2, atol=1e-3),
}


def check_close(name: str, ref: torch.Tensor, out: torch.Tensor, ratio: float, atol: float = 1e-6) -> None:
    """Pass when max-abs error <= atol OR relative RMS error <= ratio (ratio alone blows up near zero)."""
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    diff = out.double() - ref.double()
    max_abs = diff.abs().max().item() if diff.numel() else 0.0
    rel = (diff.norm() / ref.double().norm().clamp_min(1e-12)).item()
    assert max_abs <= atol or rel <= ratio, f"{name}: max_abs={max_abs:.1e} rel_rms={rel:.1e} > {ratio:.0e}"


def rel_rms(ref: torch.Tensor, out: torch.Tensor) -> float:
    diff = out.double() - ref.double()
    return (diff.norm() / ref.double().norm().clamp_min(1e-12)).item()
