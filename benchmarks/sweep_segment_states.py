"""The segment-state sums at one shape, by load tile x warps x stages, beside a copy of the same bytes.

``segments.segment_state_kernel`` sums each segment's keys into its state, S_s = sum_j phi_j y_j^T [F, D]
(forward; reverse mode: phi(q) and do / den, with dd), one program per (segment, batch x head). At 4k tokens
and 32 heads (8 segments of 512 tokens, 256 programs) the default Hedgehog op's two calls took 0.116 ms of
its 1.071 ms of kernels on an H100 (session 17, ``...-hedgehog-profile-4k-session17.json``): 67 MB read per
call at about 1.2 TB/s, against the 3.0 TB/s the device copies at. The kernel's loop tile (``BT``, the tokens
loaded per step) was the caller's chunk size (32), and its autotuner had two candidates (8 x 2, 4 x 2 warps
x stages); neither the tile nor deeper pipelines had been timed for it (this sweep led to
segments._STATE_TILE). This pins each (tile, warps, stages) in turn, times both modes with
``triton.testing.do_bench`` (medians), checks each result against the default launch's, and times
``torch.Tensor.copy_`` of the bytes a call reads as the bound.

    python benchmarks/sweep_segment_states.py --T 4096 --out results/<device>-sweep-segment-states.json
    TRITON_INTERPRET=1 python benchmarks/sweep_segment_states.py --device cpu --T 256 --heads 2 --segments 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

TILES = (32, 64, 128)
CONFIGS = [(4, 2), (4, 3), (4, 4), (8, 2), (8, 3), (8, 4)]


def pin(warps: int, stages: int) -> None:
    """Give segment_state_kernel's autotuner the one candidate (warps, stages) and forget every choice."""
    import triton

    import lolcats_lab.kernels.segments as seg
    from lolcats_lab.kernels._launch import forget_choices

    seg.segment_state_kernel.configs = [triton.Config({}, num_warps=warps, num_stages=stages)]
    seg.segment_state_kernel.cache.clear()
    forget_choices()


def make_inputs(B: int, H: int, T: int, D: int, n_seg: int, device: str):
    """Key features (positive, as phi is), values, the reverse mode's do / den / dd, and bounds for n_seg
    equal segments of T tokens (bf16 on CUDA, fp32 on the CPU interpreter)."""
    from lolcats_lab.kernels.segments import bounds_tensor

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    phi = torch.rand(B, H, T, D, generator=g).to(device, dtype)
    v = torch.randn(B, H, T, D, generator=g).to(device, dtype)
    den = (1.0 + torch.rand(B, H, T, generator=g)).to(device)
    dd = torch.randn(B, H, T, generator=g).to(device)
    seg = T // n_seg
    bounds = bounds_tensor([(s * seg, T if s == n_seg - 1 else (s + 1) * seg) for s in range(n_seg)], device)
    return phi, v, den, dd, bounds


def run_states(phi, v, bounds, tile: int, den=None, dd=None):
    """One call of the sums (unscanned when the plan folds, as the 4k plan does): the state buffer's S part."""
    import lolcats_lab.kernels.segments as seg
    from lolcats_lab.kernels._utils import dot_precision
    from lolcats_lab.kernels.segments import segment_states

    D = phi.shape[-1]
    default_tile, seg._STATE_TILE = seg._STATE_TILE, tile  # segment_states steps by max(BT, _STATE_TILE)
    try:
        S, _ = segment_states(phi, None, v, bounds, H=phi.shape[1], GX=1, GY=1, FH=0, BT=tile, BK=D, BF=D,
                              BV=D, prec=dot_precision(phi.dtype), lowp=phi.dtype != torch.float32, den=den,
                              dd=dd)  # fmt: skip
    finally:
        seg._STATE_TILE = default_tile
    return S


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--segments", type=int, default=8, help="8: the plan of 4k tokens at 32 heads on an H100")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("sweep_segment_states.py needs a CUDA GPU (or --device cpu under TRITON_INTERPRET=1); nothing to do.")
        return 0
    phi, v, den, dd, bounds = make_inputs(1, args.heads, args.T, 128, args.segments, args.device)
    cuda = args.device == "cuda"
    modes = {"forward": {}, "reverse": dict(den=den, dd=dd)}
    refs = {m: run_states(phi, v, bounds, 32, **kw).clone() for m, kw in modes.items()}  # the default launch
    bytes_read = 2 * phi.numel() * phi.element_size()
    rows = []
    if cuda:
        from triton.testing import do_bench

        src = torch.empty(bytes_read // 4, device="cuda")
        dst = torch.empty_like(src)
        copy_ms = do_bench(lambda: dst.copy_(src), return_mode="median")  # reads and writes bytes_read
        rate = 2 * bytes_read / (copy_ms * 1e-3) / 1e9
        print(f"copy of {bytes_read / 1e6:.1f} MB: {copy_ms * 1e3:.1f} us ({rate:.0f} GB/s read + written)")
    else:
        copy_ms = None
    configs = CONFIGS if cuda else CONFIGS[:1]
    for tile, (warps, stages), (mode, kw) in itertools.product(TILES, configs, modes.items()):
        pin(warps, stages)
        row = dict(mode=mode, tile=tile, num_warps=warps, num_stages=stages)
        try:
            S = run_states(phi, v, bounds, tile, **kw)
            row["max_rel_err"] = float((S - refs[mode]).abs().max() / refs[mode].abs().max())
            if cuda:
                row["us"] = 1e3 * do_bench(lambda: run_states(phi, v, bounds, tile, **kw), return_mode="median")
                row["GBps_read"] = bytes_read / (row["us"] * 1e3)
        except Exception as err:  # e.g. out of shared memory or registers at this config
            row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        rows.append(row)
        shown = f"{row['us']:7.1f} us {row['GBps_read']:6.0f} GB/s" if "us" in row else row.get("error", "")
        print(f"{mode:<8} tile {tile:>3}  {warps} warps x {stages} stages  {shown}  "
              f"rel err {row.get('max_rel_err', float('nan')):.1e}", flush=True)  # fmt: skip
    if args.out:
        env = {}
        if cuda:
            from bench_attention import environment

            env = environment()
        shape = dict(batch=1, heads=args.heads, T=args.T, F=128, D=128, segments=args.segments, dtype=str(phi.dtype))
        args.out.write_text(json.dumps(dict(env=env, shape=shape, copy_us=copy_ms and copy_ms * 1e3,
                                            bytes_read_per_call=bytes_read, rows=rows), indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
