"""One call of each Triton kernel of a linearized 8B layer's training step, for Nsight Compute.

Runs the Hedgehog maps and the hybrid forward+backward at the 8B stage-2 shape (batch 4, 32 heads, 1k
tokens, head dim 128, f = 64, tk window 64, bf16) once to compile, then once more between
cudaProfilerStart/Stop, so that ``ncu --profile-from-start off`` reports exactly one launch per kernel:

    ncu --clock-control none --profile-from-start off --section SpeedOfLight --section Occupancy \
        --section LaunchStats --section WarpStateStats python3 benchmarks/ncu_stage2_kernels.py

(``benchmarks/gpu_session.sh ncu`` runs that and keeps the text report.) What the report answers: whether
each kernel is limited by memory bandwidth, issue, latency or occupancy (registers / shared memory per
program), so that the next change is aimed, not guessed.
"""

from __future__ import annotations

import sys

import torch


def main() -> int:
    if not torch.cuda.is_available():
        print("ncu_stage2_kernels.py needs a CUDA GPU; nothing to do here.")
        return 0
    from lolcats_lab.kernels import triton_hedgehog_hybrid_attn

    B, H, T, D, f = 4, 32, 1024, 128, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device="cuda", generator=g).bfloat16().requires_grad_() for _ in range(3))
    wq, wk = (torch.randn(H, D, f, device="cuda", generator=g) / D**0.5 for _ in range(2))  # frozen maps
    logit = torch.full((H,), -2.197, device="cuda")
    dy = torch.randn(B, H, T, D, device="cuda", generator=g).bfloat16()

    def step():
        y = triton_hedgehog_hybrid_attn(q, k, v, wq, wk, logit, window=64, kind="tk")
        y.backward(dy)

    step()  # compile (and autotune) outside the profiled range
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print("profiled one forward+backward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
