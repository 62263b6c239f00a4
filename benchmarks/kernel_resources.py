"""Shared memory, registers and register spills of every Triton kernel, compiled for an H100 without one.

Triton compiles for a named target without a GPU (``triton.compile`` with ``GPUTarget("cuda", 90, 64)``)
and the ptxas it ships reports registers and spill stores (``ptxas -v``). That is enough to see, on a CPU
machine, whether a kernel fits the H100's 227 KB of shared memory and how much it spills: the two things
that decided tile sizes and warp counts here (see benchmarks/README.md). It does not time anything.

    python benchmarks/kernel_resources.py                    # bf16, K = D = 128, tiles 32 and 64
    python benchmarks/kernel_resources.py --chunks 32 --out resources.json

Shapes: linear (unfused F = 128 / 256, Hedgehog fused f = 64 / 128), hybrid tk (F = 128 / 256; the single-scan
backward and the split one of hybrid_window_split.py), the segment state kernel, and the decode step (tk, window
64, F = D = 128, 64- and 32-key tiles, with and without DECODE_DOTS); each with the num_warps x num_stages
candidates of --configs (the decode step launches with 4 warps). Besides registers, spills and shared memory,
each row counts the PTX's warp shuffles and barriers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

H100_SMEM = 232448  # bytes per block (227 KB)


def _jit_function(kernel):
    import triton

    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn  # unwrap @triton.autotune
    return kernel


def compile_resources(kernel, types: dict, constexprs: dict, num_warps: int, num_stages: int,
                      maxnreg: int | None = None) -> dict:  # fmt: skip
    """Compile ``kernel`` for sm_90 and return shared memory (bytes), registers and spill stores (bytes).
    maxnreg: a cap on registers per thread (Triton's launch option of that name), None for ptxas' choice."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    fn = _jit_function(kernel)
    names = fn.arg_names
    signature = {n: ("constexpr" if n in constexprs else types[n]) for n in names}
    src = ASTSource(fn=fn, signature=signature, constexprs={(names.index(n),): v for n, v in constexprs.items()})
    try:
        compiled = triton.compile(
            src, target=GPUTarget("cuda", 90, 64), options=dict(num_warps=num_warps, num_stages=num_stages, maxnreg=maxnreg)
        )
    except Exception as err:  # e.g. a tile that cannot be laid out
        return dict(error=f"{type(err).__name__}: {str(err)[:200]}")
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        Path(ptx).write_text(compiled.asm["ptx"])
        report = subprocess.run(
            [get_ptxas(90).path, "-v", "--gpu-name=sm_90a", ptx, "-o", os.path.join(tmp, "kernel.o")],
            capture_output=True, text=True, timeout=600,
        ).stderr  # fmt: skip
    regs = re.search(r"Used (\d+) registers", report)
    spill = re.search(r"(\d+) bytes spill stores", report)
    shared = compiled.metadata.shared
    ptx_text = compiled.asm["ptx"]  # warp shuffles and barriers: row reductions across lanes and warps
    return dict(
        shared_bytes=shared, fits_h100=shared <= H100_SMEM, registers=int(regs.group(1)) if regs else None,
        spill_store_bytes=int(spill.group(1)) if spill else None,
        shuffles=len(re.findall(r"\bshfl\.sync\.", ptx_text)),
        barriers=len(re.findall(r"\bbar\.sync\b", ptx_text)),
    )  # fmt: skip


def _types():
    bf, f32, i32 = "*bf16", "*fp32", "i32"
    return dict(
        q=bf, k=bf, v=bf, o=bf, do=bf, dq=bf, dk=bf, dv=bf, fq=bf, fk=bf, dfq=bf, dfk=bf, x=bf, y=bf,
        wq=f32, wk=f32, w=f32, s0=f32, z0=f32, p0=f32, r0=f32, dwq=f32, dwk=f32, den=f32, dd=f32, logit=f32, d_logit=f32,
        mx=f32, dm=f32, u=bf, s_out=f32, z_out=f32, amax="*i32", bounds="*i32",
        T=i32, NSEG=i32, CPS=i32, W=i32, NS=i32, eps="fp32", scale="fp32",
        SOB=i32, SOH=i32, SOT=i32, SYB=i32, SYH=i32, SYT=i32,
        S=f32, z=f32, kb=bf, vb=bf, fkb=bf, ks=bf, vs=bf, pos="*i64",
        dz=bf, dx=bf, x2=bf, w2=f32, dz2=bf, dx2=bf, dw_part=f32, TPP=i32, PART_OFFSET2=i32,
    )  # fmt: skip


def cases(chunk: int):
    """(label, kernel, constexprs) for the shapes in the module docstring."""
    import lolcats_lab.kernels.decode as dec
    import lolcats_lab.kernels.hybrid_attn as ha
    import lolcats_lab.kernels.hybrid_window_split as hs
    import lolcats_lab.kernels.linear_attn as la
    import lolcats_lab.kernels.segments as sg
    from lolcats_lab.kernels._utils import FOLD_NONE, FOLD_PREFIX, FOLD_SUFFIX_INCLUSIVE

    for label, f, F in (("linear F=128", 0, 128), ("linear F=256", 0, 256), ("hedgehog f=64", 64, 128),
                        ("hedgehog f=128", 128, 256)):  # fmt: skip
        K = F if f == 0 else 128
        ce = dict(H=32, GK=1, GV=1, K=K, V=128, FH=f, BT=chunk, BK=K, BF=F, BV=128, HEDGEHOG=f > 0,
                  PREC="tf32", LOWP=True, FOLD=FOLD_NONE)  # fmt: skip
        yield f"{label} fwd", la.linear_attn_fwd_kernel, dict(ce, BVS=128)
        if f == 0 and F == 128:  # a short sequence's plan: the kernel adds up the earlier segments' sums itself
            yield f"{label} fwd fold", la.linear_attn_fwd_kernel, dict(ce, BVS=128, FOLD=FOLD_PREFIX)
        bwd = dict(ce, GW=f if f else K, FZ=0, BFZ=16)  # as linear_attn_bwd: dz rows (f) fused, dfq rows (K = F) unfused
        yield f"{label} bwd dq", la.linear_attn_bwd_dq_kernel, bwd
        yield f"{label} bwd dk/dv", la.linear_attn_bwd_dkv_kernel, bwd
        if f == 0:  # the staged Hedgehog op (f = F / 2): dz rows taken from phi in the unfused kernels
            staged = dict(bwd, GW=F // 2, FZ=F // 2, BFZ=F // 2)
            yield f"staged hedgehog f={F // 2} bwd dq", la.linear_attn_bwd_dq_kernel, staged
            yield f"staged hedgehog f={F // 2} bwd dk/dv", la.linear_attn_bwd_dkv_kernel, staged
        yield f"{label} segment state", sg.segment_state_kernel, dict(
            H=32, GX=1, GY=1, K=K, V=128, FH=f, BT=chunk, BK=K, BF=F, BV=128, HEDGEHOG=f > 0, REVERSE=False,
            PREC="tf32", LOWP=True,
        )  # fmt: skip
    for F in (128, 256):
        ce = dict(H=32, GK=1, GV=1, K=128, F=F, V=128, BT=chunk, BK=128, BF=F, BV=128, TK=True, PREC="tf32",
                  LOWP=True, WIN_ONLY=True, FOLD=FOLD_NONE)  # fmt: skip (tk, window 64: tiles of 32 and 64 divide it)
        yield f"hybrid F={F} fwd", ha.hybrid_attn_fwd_kernel, dict(ce, STATS=False)
        yield f"hybrid F={F} fwd + row stats", ha.hybrid_attn_fwd_kernel, dict(ce, STATS=True)
        yield f"hybrid F={F} bwd dq", ha.hybrid_attn_bwd_dq_kernel, ce
        yield f"hybrid F={F} bwd dk/dv", ha.hybrid_attn_bwd_dkv_kernel, ce
        win = {n: ce[n] for n in ("H", "GK", "GV", "K", "V", "BT", "BK", "BV", "PREC", "LOWP")}
        lin = {n: ce[n] for n in ("H", "GV", "F", "V", "BT", "BF", "BV", "PREC", "LOWP", "FOLD")}
        yield f"hybrid F={F} split window dq", hs.window_dq_kernel, win
        yield f"hybrid F={F} split window dk/dv", hs.window_dkv_kernel, win
        yield f"hybrid F={F} split linear dk/dv", hs.linear_dkv_kernel, lin
        yield f"hybrid F={F} split linear dq", hs.linear_dq_kernel, lin
        if F == 128:
            yield f"hybrid F={F} split linear dk/dv fold", hs.linear_dkv_kernel, dict(lin, FOLD=FOLD_SUFFIX_INCLUSIVE)
    if chunk == 32:  # the maps' projection backward (64-token tiles of its own): q's map and k's, G = 1 and 4
        import lolcats_lab.kernels.hedgehog_project as hp

        for G in (1, 4):
            yield f"project back K=128 f=64 G={G}", hp.project_back_kernel, dict(
                H=32, G=1, G2=G, K=128, FH=64, BT=hp._BT, BK=128, BF=64, PREC="tf32", LOWP=True, NEED_DX=True,
                NEED_DW=True, NEED_DX2=True, NEED_DW2=True,
            )  # fmt: skip
    if chunk == 32:  # the decode step has no token tiles: once, per key tile of its window loop (DECODE_TILE)
        for BC, dots in ((64, False), (32, False), (64, True), (32, True)):  # DECODE_TILE x DECODE_DOTS
            yield f"decode tk BC={BC}{' dots' if dots else ''}", dec.hybrid_decode_kernel, dict(
                H=32, K=128, V=128, F=128, WC=128, NSC=1, BK=128, BV=128, BF=128, BC=BC, BS=16, TK=True,
                LIN=False, PREC="tf32", DOTS=dots, NB=2, RPS=2, BR=16,
            )  # fmt: skip


def parse_config(text: str) -> tuple[int, int, int | None]:
    """'4x3' -> (4, 3, None), '4x3r128' -> (4, 3, 128): num_warps, num_stages, maxnreg."""
    m = re.fullmatch(r"(\d+)x(\d+)(?:r(\d+))?", text)
    if m is None:
        raise ValueError(f"config {text!r} is not WARPSxSTAGES or WARPSxSTAGESrMAXNREG (e.g. 8x2, 4x3r128)")
    return int(m[1]), int(m[2]), int(m[3]) if m[3] else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, nargs="*", default=[32, 64], help="token tiles (chunk_size) to compile")
    ap.add_argument("--configs", default="8x2,4x2", help="num_warps x num_stages candidates, comma separated; "
                    "a register cap as a suffix: 4x3r128 (maxnreg)")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    ap.add_argument("--only", nargs="*", default=[], help="compile only the kernels whose label contains one of these")
    args = ap.parse_args(argv)
    configs = [parse_config(c) for c in args.configs.split(",")]
    rows = []
    for chunk in args.chunks:
        for label, kernel, ce in cases(chunk):
            if args.only and not any(part in label for part in args.only):
                continue
            for warps, stages, maxnreg in configs:
                r = compile_resources(kernel, _types(), ce, warps, stages, maxnreg)
                rows.append(dict(kernel=label, chunk=chunk, num_warps=warps, num_stages=stages, maxnreg=maxnreg, **r))
                layout = "shared {:>4} KB{}  registers {:>3}  spills {:>6} B  shfl {:>4}  bar {:>3}"
                shown = r.get("error") or layout.format(
                    r["shared_bytes"] // 1024, "" if r["fits_h100"] else " (> 227 KB)", r["registers"],
                    r["spill_store_bytes"], r["shuffles"], r["barriers"],
                )
                cap = f" r{maxnreg}" if maxnreg else ""
                print(f"{label:<28} chunk {chunk:>3}  {warps} warps x {stages} stages{cap}  {shown}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(dict(target="sm_90 (H100)", dtype="bf16", rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU target, not the interpreter
    sys.exit(main())
