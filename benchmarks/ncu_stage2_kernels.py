"""One call of each Triton kernel of a linearized 8B layer's training step, for Nsight Compute.

Runs the Hedgehog maps and the hybrid forward+backward at the 8B stage-2 shape (batch 4, 32 heads, 1k
tokens, head dim 128, f = 64, tk window 64, bf16) once to compile, then once more between
cudaProfilerStart/Stop, so that ``ncu --profile-from-start off`` reports exactly one launch per kernel:

    ncu --clock-control none --profile-from-start off --section SpeedOfLight --section Occupancy \
        --section LaunchStats --section WarpStateStats python3 benchmarks/ncu_stage2_kernels.py

(``benchmarks/gpu_session.sh ncu`` runs that and keeps the text report.) What the report answers: whether
each kernel is limited by memory bandwidth, issue, latency or occupancy (registers / shared memory per
program), so that the next change is aimed, not guessed.

``--decode``: instead, two decode steps at bench_attention.py's decode shape (batch 16, 32 heads, D = F = 128,
tk window 64, bf16 ring): one mid-block (65 window keys) and one at a block start (64 keys fold into the
state); ``gpu_session.sh ncu-decode``.

``--hedgehog T``: instead, one forward+backward of the fused Hedgehog linear op (f = 64, so F = 128 features
computed in-kernel) and one of the linear op on precomputed features (F = 128), at bench_attention.py's
shape (batch 1, 32 heads, head dim 128, bf16) and T tokens: the same kernels with and without the map, side
by side (``gpu_session.sh ncu-hedgehog``, T = 16384).
"""

from __future__ import annotations

import sys

import torch


def _profiled(step) -> None:
    """Run ``step`` once to compile (and autotune), then once between cudaProfilerStart/Stop."""
    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


def decode_steps(B=16, H=32, D=128, w=64, device="cuda", profiled=_profiled) -> None:
    """A mid-block decode step and a block-start one, each profiled once (see the module docstring)."""
    from lolcats_lab.kernels.decode import RingHybridCache, hybrid_decode_step

    g = torch.Generator(device=device).manual_seed(0)
    q, k, v, fq, fk = (torch.rand(B, H, 1, D, device=device, generator=g).bfloat16() for _ in range(5))
    logit = torch.full((H,), -2.0, device=device)
    cache = RingHybridCache.empty(B, H, D, D, D, window=w, kind="tk", device=device, dtype=torch.bfloat16)
    for t in (cache.k_buf, cache.v_buf, cache.fk_buf, cache.S_buf, cache.z_buf):
        t.copy_(torch.rand(t.shape, device=device, generator=g))
    for pos in (512 * w + 1, 512 * w):  # mid-block, block start (at 32k context for w = 64)
        def step(pos=pos):
            cache.pos = pos
            hybrid_decode_step(q, k, v, fq, fk, logit, cache)

        profiled(step)
    print("profiled a mid-block and a block-start decode step")


def hedgehog_and_linear(T: int, B=1, H=32, D=128, f=64, device="cuda", profiled=_profiled) -> None:
    """One forward+backward of the fused Hedgehog op and one of the linear op on precomputed features, each
    profiled once (see the module docstring)."""
    from lolcats_lab.kernels import triton_hedgehog_linear_attn, triton_linear_attn

    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device=device, generator=g).bfloat16().requires_grad_() for _ in range(3))
    wq, wk = (torch.randn(H, D, f, device=device, generator=g) / D**0.5 for _ in range(2))  # frozen maps
    fq, fk = (torch.rand(B, H, T, 2 * f, device=device, generator=g).bfloat16().requires_grad_() for _ in range(2))
    dy = torch.randn(B, H, T, D, device=device, generator=g).bfloat16()

    def fused():
        triton_hedgehog_linear_attn(q, k, v, wq, wk, fuse_map=True).backward(dy)

    def linear():
        triton_linear_attn(fq, fk, v).backward(dy)

    profiled(fused)
    profiled(linear)
    print(f"profiled one forward+backward of the fused Hedgehog op and of the linear op at T = {T}")


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not torch.cuda.is_available():
        print("ncu_stage2_kernels.py needs a CUDA GPU; nothing to do here.")
        return 0
    if "--decode" in args:
        decode_steps()
        return 0
    if "--hedgehog" in args:
        hedgehog_and_linear(int(args[args.index("--hedgehog") + 1]))
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

    _profiled(step)  # compiled (and autotuned) outside the profiled range
    print("profiled one forward+backward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
