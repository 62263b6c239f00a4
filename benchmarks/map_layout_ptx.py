"""Two layouts of the Hedgehog map in a Triton tile, compiled for sm_90 on a CPU machine: what each costs in warp
shuffles and barriers (no GPU needed).

The fused linear kernels (kernels/linear_attn.py) compute phi(x) = (softmax(x W), softmax(-x W)) for a tile of BT
rows as one [BT, 2f] tile z2 = x W2 with the two softmaxes interleaved (W2 = (w_0, -w_0, w_1, -w_1, ...)), each
softmax a masked reduction over one column parity of the full 2f columns (_tl_helpers.hedgehog_fwd). The other
layout keeps z = x W as one [BT, f] tile and takes both softmaxes from it: max and min, then two sums, each over
f columns. Same values (checked here against PyTorch under the interpreter); the question is the compiled cost,
since the fused kernels' time over the unfused ones sits in the map work (benchmarks/README.md, "Not done"):

    python benchmarks/map_layout_ptx.py --out benchmarks/results/map-layout-ptx-sm90-2026-12-01.json

Counts are per map evaluation of one [BT, K] tile (bf16, K = 128, f = 64, BT = 32), read from the PTX that
Triton emits for sm_90, at 8 and 4 warps. Alone, the second layout takes fewer shuffles and barriers at 8
warps; inside the fused linear kernels, joined back to the interleaved features, it did not
(benchmarks/README.md, "Not done"): a kernel built on it would have to keep the halves apart through every
[F, *] operand and the [F, D] state.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

import triton
import triton.language as tl

COUNTED = r"\b(shfl\.sync\.bfly\.b32|bar\.sync|ex2\.approx\.f32|div\.full\.f32)"


@triton.jit
def interleaved_map_kernel(x, w2, out, BT: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr):
    """out [BT, BF] = the two softmaxes interleaved (even columns softmax(z), odd softmax(-z)) from
    z2 = x W2 [BT, BF], as _tl_helpers.hedgehog_fwd computes them."""
    o_t, o_k, o_c = tl.arange(0, BT), tl.arange(0, BK), tl.arange(0, BF)
    b_z = tl.dot(tl.load(x + o_t[:, None] * BK + o_k[None, :]), tl.load(w2 + o_k[:, None] * BF + o_c[None, :]))
    m_even = (o_c % 2 == 0)[None, :]
    mx_e = tl.max(tl.where(m_even, b_z, float("-inf")), 1)
    mx_o = tl.max(tl.where(m_even, float("-inf"), b_z), 1)
    b_e = tl.exp(b_z - tl.where(m_even, mx_e[:, None], mx_o[:, None]))
    s_e = tl.sum(tl.where(m_even, b_e, 0.0), 1)
    s_o = tl.sum(tl.where(m_even, 0.0, b_e), 1)
    b_p = b_e / tl.where(m_even, s_e[:, None], s_o[:, None])  # [BT, BF]
    tl.store(out + o_t[:, None] * BF + o_c[None, :], b_p.to(out.dtype.element_ty))


@triton.jit
def halves_map_kernel(x, w, out, BT: tl.constexpr, BK: tl.constexpr, FH: tl.constexpr):
    """out [BT, 2 FH] = (softmax(z), softmax(-z)) concatenated, both from z = x W [BT, FH]: exp(z - max z) and
    exp(min z - z), each normalised over FH columns."""
    o_t, o_k, o_f = tl.arange(0, BT), tl.arange(0, BK), tl.arange(0, FH)
    b_z = tl.dot(tl.load(x + o_t[:, None] * BK + o_k[None, :]), tl.load(w + o_k[:, None] * FH + o_f[None, :]))
    b_ep = tl.exp(b_z - tl.max(b_z, 1)[:, None])  # [BT, FH]
    b_en = tl.exp(tl.min(b_z, 1)[:, None] - b_z)
    p_out = out + o_t[:, None] * 2 * FH + o_f[None, :]
    tl.store(p_out, (b_ep / tl.sum(b_ep, 1)[:, None]).to(out.dtype.element_ty))
    tl.store(p_out + FH, (b_en / tl.sum(b_en, 1)[:, None]).to(out.dtype.element_ty))


def run_both(x, w):
    """Both kernels on x [BT, K], w [K, f] (one tile; powers of two >= 16) -> (interleaved, halves) outputs,
    each [BT, 2f] in x's dtype, reordered to (softmax(z), softmax(-z)) concatenated."""
    import torch

    BT, K = x.shape
    f = w.shape[1]
    w2 = torch.stack([w, -w], dim=2).reshape(K, 2 * f).contiguous()  # (w_0, -w_0, w_1, -w_1, ...)
    inter = x.new_empty(BT, 2 * f)
    halves = x.new_empty(BT, 2 * f)
    interleaved_map_kernel[(1,)](x.contiguous(), w2, inter, BT=BT, BK=K, BF=2 * f)
    halves_map_kernel[(1,)](x.contiguous(), w.contiguous(), halves, BT=BT, BK=K, FH=f)
    return torch.cat([inter[:, 0::2], inter[:, 1::2]], dim=1), halves


def ptx_counts(kernel, signature, constexprs, num_warps):
    """Counts of the COUNTED instructions in the PTX Triton emits for sm_90."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    sig = {n: ("constexpr" if n in constexprs else signature[n]) for n in names}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(n),): v for n, v in constexprs.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 64), options=dict(num_warps=num_warps, num_stages=1))
    return dict(Counter(re.findall(COUNTED, compiled.asm["ptx"])))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the counts as JSON here")
    args = ap.parse_args(argv)
    bf = "*bf16"
    rows = []
    for warps in (8, 4):
        for layout, kernel, signature, ce in (
            ("interleaved [BT, 2f]", interleaved_map_kernel, dict(x=bf, w2=bf, out=bf), dict(BT=32, BK=128, BF=128)),
            ("halves [BT, f]", halves_map_kernel, dict(x=bf, w=bf, out=bf), dict(BT=32, BK=128, FH=64)),
        ):
            counts = ptx_counts(kernel, signature, ce, warps)
            rows.append(dict(layout=layout, num_warps=warps, **counts))
            print(f"{layout:<22} {warps} warps  " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if args.out:
        args.out.write_text(json.dumps(dict(target="sm_90", triton=triton.__version__, dtype="bf16", BT=32, K=128, f=64,
                                            rows=rows), indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU target, not the interpreter
    sys.exit(main())
