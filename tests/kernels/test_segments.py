"""The segment machinery of the chunked kernels (kernels/segments.py): the in-place scan kernel against its
PyTorch references, and the auto segment plan's limits. Runs under the Triton interpreter on CPU."""

import pytest
import torch

from lolcats_lab.kernels.segments import (
    _MIN_SEGMENT_TOKENS,
    exclusive_prefix,
    plan_segments,
    scan_segments_,
    suffix_sum,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def naive_scan(t, reverse, inclusive):
    """Written out with a Python loop over segments (independent of both implementations)."""
    out = torch.zeros_like(t)
    n = t.shape[1]
    for s in range(n):
        idx = [j for j in range(n) if (j > s if reverse else j < s) or (inclusive and j == s)]
        if idx:
            out[:, s] = t[:, idx].sum(1)
    return out


@pytest.mark.parametrize(
    "shape", [(3, 1, 5, 7), (2, 4, 16), (1, 5, 3, 40), (2, 3, 1100), (2, 37, 9)], ids=str
)  # fmt: skip
@pytest.mark.parametrize("reverse", [False, True], ids=["prefix", "suffix"])
@pytest.mark.parametrize("inclusive", [False, True], ids=["exclusive", "inclusive"])
def test_scan_kernel_matches_references(shape, reverse, inclusive):
    """fp32 sums of up to 37 terms in different orders: the kernel, the PyTorch reference and the loop agree
    to 1e-5 (a few ulps of a sum of ~6; a wrong direction, an off-by-one or a skipped element is off by O(1)); (2, 3, 1100) covers several column blocks with a
    partial last one, (2, 37, 9) three blocks of 16 segments with a partial last one."""
    g = torch.Generator().manual_seed(sum(shape))
    t = torch.randn(*shape, generator=g).to(DEVICE)
    want = naive_scan(t, reverse, inclusive)
    ref = suffix_sum(t, inclusive=inclusive) if reverse else (t.cumsum(1) if inclusive else exclusive_prefix(t))
    torch.testing.assert_close(ref, want, rtol=0, atol=1e-5)
    got = scan_segments_(t.clone(), reverse=reverse, inclusive=inclusive)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_segment_states_reject_a_strided_last_dim():
    from lolcats_lab.kernels.segments import bounds_tensor, segment_states

    x = torch.rand(1, 2, 8, 4, device=DEVICE)
    y = torch.rand(1, 2, 8, 6, device=DEVICE)[..., ::2]  # last-dim stride 2
    with pytest.raises(ValueError, match=r"^y must have a contiguous last dim, got strides \(96, 48, 6, 2\)"):
        segment_states(x, None, y, bounds_tensor([(0, 8)], DEVICE), H=2, GX=1, GY=1, FH=0, BT=16, BK=4, BF=4,
                       BV=4, prec="ieee", lowp=False)  # fmt: skip


def test_scan_is_in_place():
    t = torch.arange(12, dtype=torch.float32, device=DEVICE).reshape(1, 3, 4)
    out = scan_segments_(t, reverse=False, inclusive=False)
    assert out.data_ptr() == t.data_ptr()
    torch.testing.assert_close(t[0, 2], torch.tensor([4.0, 6.0, 8.0, 10.0], device=DEVICE))


def test_plan_respects_explicit_segment_chunks():
    assert plan_segments(1000, 32, 4, torch.device("cpu"), segment_chunks=5) == (5, 7)  # 32 chunks in 7 segments
    with pytest.raises(ValueError, match="segment_chunks"):
        plan_segments(1000, 32, 4, torch.device("cpu"), segment_chunks=0)


@pytest.mark.parametrize(
    "n_chunks,n_seg,n_bh,want",
    [(32, 2, 128, True),  # B = 4 x 32 heads, 1k tokens on 132 SMs: one wave either way
     (32, 2, 1024, True),  # stage 1 at batch 32: 8 waves of 32 chunks = 16 waves of 16
     (32, 2, 140, False),  # just over one wave: 2 waves x 32 chunks > 3 waves x 16
     (256, 16, 32, False)],  # one sequence, 32 heads, 8k tokens: segments fill the idle SMs
)  # fmt: skip
def test_one_segment_when_batch_and_heads_fill_the_gpu(n_chunks, n_seg, n_bh, want):
    from lolcats_lab.kernels.segments import _one_segment_suffices

    assert _one_segment_suffices(n_chunks, n_seg, n_bh, sms=132) is want


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU plan reads the multiprocessor count")
@pytest.mark.gpu
@pytest.mark.parametrize("T", [64, 1024, 4096, 65536])
def test_gpu_plan_keeps_segments_long(T):
    cps, n_seg = plan_segments(T, 32, 32, torch.device("cuda"))
    assert n_seg == 1 or cps * 32 >= _MIN_SEGMENT_TOKENS
    assert (n_seg - 1) * cps * 32 < T <= n_seg * cps * 32


def test_one_segment_start_states_are_shared_zeros_left_unwritten(monkeypatch):
    """A one-segment plan starts from a cached zero buffer (segments.zero_states) instead of a fresh one
    per call; the kernels only read start states. After a hybrid and a linear forward+backward on one
    segment each (forward and reverse states both take that path), every buffer handed out is still all
    zero, the second call got the same buffers, and its gradients equal the first's."""
    from lolcats_lab.kernels import segments, triton_hybrid_attn, triton_linear_attn

    segments.zero_states.cache_clear()
    handed_out = []
    real = segments.zero_states
    monkeypatch.setattr(segments, "zero_states", lambda *a: handed_out.append(real(*a)) or handed_out[-1])
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 8, generator=g).to(DEVICE) for _ in range(3))
    fq, fk = (torch.rand(1, 2, 40, 8, generator=g).to(DEVICE) for _ in range(2))
    logit = torch.zeros(2, device=DEVICE)

    def grads():
        leaves = [x.clone().requires_grad_() for x in (q, k, v, fq, fk, logit)]
        y = triton_hybrid_attn(*leaves, window=16, kind="tk", chunk_size=16, segment_chunks=10)
        y2 = triton_linear_attn(*leaves[3:5], leaves[2], chunk_size=16, segment_chunks=10)
        ((y * y).sum() + (y2 * y2).sum()).backward()
        return [x.grad.clone() for x in leaves]

    first = grads()
    n_first = len(handed_out)
    second = grads()
    assert n_first >= 2 and len(handed_out) == 2 * n_first  # forward and reverse states, in both calls
    assert all(a is b for a, b in zip(handed_out[:n_first], handed_out[n_first:]))  # shared, not re-made
    assert all(int(torch.count_nonzero(b)) == 0 for b in handed_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_block_is_the_next_power_of_two_with_a_floor():
    import triton

    from lolcats_lab.kernels._utils import block

    for n in range(1, 600):
        assert block(n) == max(16, triton.next_power_of_2(n)), n
        assert block(n, 1) == triton.next_power_of_2(n), n


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_half_precision_sums_step_past_the_chunk(reverse, monkeypatch):
    """On half-precision features the sums step by max(chunk, _STATE_TILE) tokens: with 32-token chunks and
    64-token steps, segments of 70 / 0 / 57 tokens (a partial last step, an empty range) still sum exactly
    their own tokens. Reference: fp64 einsum over each range of the fp16 inputs (forward S = phi^T v,
    z = sum phi; reverse S = phi^T (v / den), z = sum dd phi, with v / den rounded to fp16 as the kernel's dot
    operand); fp32 accumulation of exact fp16 products, so 1e-3. A step that skipped or repeated tokens
    would be off by whole rows (O(1))."""
    import lolcats_lab.kernels.segments as seg

    assert seg._STATE_TILE > 32
    g = torch.Generator().manual_seed(7)
    B, H, T, F, D = 1, 2, 127, 16, 32
    phi = torch.rand(B, H, T, F, generator=g).to(DEVICE, torch.float16)
    v = torch.randn(B, H, T, D, generator=g).to(DEVICE, torch.float16)
    den = (1 + torch.rand(B, H, T, generator=g)).to(DEVICE)
    dd = torch.randn(B, H, T, generator=g).to(DEVICE)
    ranges = [(0, 70), (70, 70), (70, 127)]
    calls = []
    launch = seg.launch
    monkeypatch.setattr(seg, "launch", lambda *a, **kw: (calls.append(kw["BT"]), launch(*a, **kw))[1])
    extra = dict(den=den, dd=dd, inclusive=True) if reverse else {}
    S, z = seg.segment_states(phi, None, v, seg.bounds_tensor(ranges, DEVICE), H=H, GX=1, GY=1, FH=0, BT=32, BK=F,
                              BF=F, BV=D, prec="ieee", lowp=True, **extra)  # fmt: skip
    assert calls == [seg._STATE_TILE]
    p64, v64 = phi.double(), v.double()
    # reverse: v / den in fp32, rounded to fp16 as the kernel's dot operand (half-precision operands, fp32 sums)
    w64 = (v.float() / den[..., None]).half().double() if reverse else v64
    c64 = dd.double() if reverse else torch.ones_like(den, dtype=torch.float64)
    per_range = [(torch.einsum("bhtf,bhtd->bhfd", p64[:, :, a:b], w64[:, :, a:b]),
                  torch.einsum("bht,bhtf->bhf", c64[:, :, a:b], p64[:, :, a:b])) for a, b in ranges]  # fmt: skip
    if reverse and not seg.fold_segments(len(ranges)):  # the inclusive suffix scan, as the kernels start from it
        per_range = [tuple(sum(r[i] for r in per_range[s:]) for i in range(2)) for s in range(len(ranges))]
    for s, (S_ref, z_ref) in enumerate(per_range):
        torch.testing.assert_close(S[:, s].double(), S_ref.flatten(0, 1), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(z[:, s].double(), z_ref.flatten(0, 1), rtol=1e-3, atol=1e-3)
