"""Triton hybrid decode step (ring-buffer cache) vs the full pass and the PyTorch decode step.

SPEC.md "Decoding must equal training": feeding tokens one at a time must reproduce the rows of
``naive_hybrid_attn`` on the whole sequence (fp32, tolerance table), for tk and sw windows, window 0 (pure
linear, with and without sinks), sinks, and a prompt prefilled with ``RingHybridCache.from_prompt``. Rows
of one batch may sit at different positions (per-row ``pos`` in device memory): each row then equals the
PyTorch decode step run on that row alone. CPU runs use Triton's interpreter.
"""

import pytest
import torch

from lolcats_lab.attention.hybrid import naive_hybrid_attn
from lolcats_lab.attention.hybrid_decode import hybrid_decode_step as torch_decode_step
from lolcats_lab.attention.hybrid_decode import prefill_hybrid_cache
import lolcats_lab.kernels.decode as decode_module
from lolcats_lab.kernels import triton_hybrid_decode_step as hybrid_decode_step
from lolcats_lab.kernels.decode import RingHybridCache
from tests.tolerances import TOLERANCES, check_close, rel_rms

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_seq(B, H, T, K, F, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, K, generator=g) * 2
    k = torch.randn(B, H, T, K, generator=g)
    v = torch.randn(B, H, T, D, generator=g)
    fq, fk = torch.rand(B, H, T, F, generator=g), torch.rand(B, H, T, F, generator=g)
    logit = torch.randn(H, generator=g)
    return [x.to(DEVICE, dtype) for x in (q, k, v, fq, fk)] + [logit.to(DEVICE)]


def decode_all(xs, cache, start):
    """Run the kernel step by step from position ``start``; returns y [B, H, T - start, D]."""
    q, k, v, fq, fk, logit = xs
    ys = []
    for p in range(start, q.shape[2]):
        y, cache = hybrid_decode_step(*(x[:, :, p : p + 1] for x in (q, k, v, fq, fk)), logit, cache)
        ys.append(y)
    return torch.cat(ys, 2), cache


# (kind, window, sinks, prompt length): block boundaries, folds of one key (sw) and of a block (tk)
# window 0: pure linear attention (sinks exact when sink_tokens > 0)
CASES = [("tk", 4, 0, 0), ("sw", 5, 0, 3), ("tk", 3, 2, 5), ("sw", 4, 3, 0), ("tk", 6, 0, 12), ("sw", 1, 0, 2),
         ("sw", 0, 0, 3), ("tk", 0, 2, 1)]


@pytest.mark.parametrize("kind,window,sinks,prompt", CASES, ids=lambda x: str(x))
def test_decode_equals_full_pass(kind, window, sinks, prompt, poison_empty):
    B, H, T, K, F, D = 2, 2, 20, 12, 10, 9
    xs = make_seq(B, H, T, K, F, D)
    cfg = dict(window=window, kind=kind, sink_tokens=sinks)
    y_full = naive_hybrid_attn(*xs, **cfg)
    cache = RingHybridCache.from_prompt(*(x[:, :, :prompt] for x in (xs[1], xs[2], xs[4])), **cfg)
    y_dec, cache = decode_all(xs, cache, prompt)
    check_close("y", y_full[:, :, prompt:], y_dec, **TOLERANCES[torch.float32])
    assert cache.pos.tolist() == [T] * B


def test_dots_for_half_rings_by_default(monkeypatch):
    """DECODE_DOTS = "half": dots for fp16 / bf16 rings, row reductions for fp32 (shared memory); True /
    False force either. So the fp32 tests here run the reductions, and the next test the dots."""
    assert [decode_module._use_dots(t) for t in (torch.float32, torch.float16, torch.bfloat16)] == [False, True, True]
    for forced in (True, False):
        monkeypatch.setattr(decode_module, "DECODE_DOTS", forced)
        assert decode_module._use_dots(torch.float32) is forced


@pytest.mark.parametrize("kind,window,sinks,prompt", [("tk", 4, 0, 3), ("sw", 4, 3, 0), ("tk", 0, 2, 1)], ids=str)
def test_decode_with_dots_equals_full_pass(kind, window, sinks, prompt, monkeypatch):
    """DECODE_DOTS = True (fq S, the window scores and the weighted values as tl.dot on 16-row operands, here
    on fp32 rings) gives the full pass: the tk block fold, the sw rank-1 fold with sinks, window 0 (the new
    token folded, sinks exact); F = 40 and D = 24 pad the dots' columns."""
    monkeypatch.setattr(decode_module, "DECODE_DOTS", True)
    B, H, T, K, F, D = 2, 2, 11, 12, 40, 24
    xs = make_seq(B, H, T, K, F, D, seed=3)
    cfg = dict(window=window, kind=kind, sink_tokens=sinks)
    y_full = naive_hybrid_attn(*xs, **cfg)
    cache = RingHybridCache.from_prompt(*(x[:, :, :prompt] for x in (xs[1], xs[2], xs[4])), **cfg)
    y_dec, cache = decode_all(xs, cache, prompt)
    check_close("y", y_full[:, :, prompt:], y_dec, **TOLERANCES[torch.float32])


def test_decode_matches_torch_decode_step_and_state():
    """Same outputs as lolcats_lab.attention.hybrid.hybrid_decode_step, and the same linear state S, z."""
    xs = make_seq(1, 2, 21, 12, 10, 9)
    q, k, v, fq, fk, logit = xs
    cfg = dict(window=4, kind="tk", sink_tokens=1)
    ring = RingHybridCache.empty(1, 2, 12, 9, 10, device=DEVICE, **cfg)
    ref_cache = None
    for p in range(21):
        tok = [x[:, :, p : p + 1] for x in (q, k, v, fq, fk)]
        y_ref, ref_cache = torch_decode_step(*tok, logit, ref_cache, **cfg)
        y, ring = hybrid_decode_step(*tok, logit, ring)
        check_close(f"y[{p}]", y_ref, y, **TOLERANCES[torch.float32])
    check_close("S", ref_cache.S, ring.S, **TOLERANCES[torch.float32])
    check_close("z", ref_cache.z, ring.z, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("kind,T", [("sw", 19), ("tk", 19), ("tk", 20)], ids=str)
def test_from_prompt_equals_stepping(kind, T):
    """A prefilled cache equals one built token by token (the state the next step reads, and the window
    ring); tk mid-block (T = 19) and at a block start (T = 20: the state stepping built row by row)."""
    xs = make_seq(1, 2, T, 12, 10, 9)
    cfg = dict(window=4, kind=kind, sink_tokens=2)
    stepped = RingHybridCache.empty(1, 2, 12, 9, 10, device=DEVICE, **cfg)
    _, stepped = decode_all(xs, stepped, 0)
    pre = RingHybridCache.from_prompt(xs[1], xs[2], xs[4], **cfg)
    check_close("S", pre.S, stepped.S, **TOLERANCES[torch.float32])
    check_close("z", pre.z, stepped.z, **TOLERANCES[torch.float32])
    for name in ("k_buf", "v_buf", "fk_buf", "k_sink", "v_sink"):
        assert torch.equal(getattr(pre, name), getattr(stepped, name)), name


def test_tk_steps_never_write_the_state_they_read():
    """tk: every step reads its block's state buffer and writes only its rows of the next block's (F = 10,
    w = 4: 3 rows a step), so no step writes a whole state (a block start included). The current buffer
    stays as it was through the block; after the block's last step the other one holds the current state
    plus the previous block's keys, i.e. the state the next block's first query needs (S_p of SPEC.md)."""
    xs = make_seq(1, 2, 16, 12, 10, 9, seed=5)
    cfg = dict(window=4, kind="tk", sink_tokens=1)
    ring = RingHybridCache.empty(1, 2, 12, 9, 10, device=DEVICE, **cfg)
    _, ring = decode_all([x[:, :, :8] for x in xs[:5]] + [xs[5]], ring, 0)  # positions 0-7: blocks 0 and 1
    cur = ring.S_buf[:, :, 0].clone()  # block 2 reads buffer 0 (keys 1..3: sink 0 excluded)
    for p in range(8, 12):
        before_next = ring.S_buf[:, :, 1].clone()
        hybrid_decode_step(*(x[:, :, p : p + 1] for x in xs[:5]), xs[5], ring)
        assert torch.equal(ring.S_buf[:, :, 0], cur), p  # read only
        changed = (ring.S_buf[:, :, 1] != before_next).any(-1).any(1)[0]  # [F] rows this step wrote
        assert changed.nonzero().flatten().tolist() == [r for r in range(3 * (p - 8), 3 * (p - 7)) if r < 10], p
    k_lin = slice(1, 8)  # after block 2: keys 1..7 are linear for block 3's queries
    want = torch.einsum("bhtf,bhtd->bhfd", xs[4][:, :, k_lin], xs[2][:, :, k_lin])
    check_close("next state", want, ring.S_buf[:, :, 1], **TOLERANCES[torch.float32])


def _row_tokens(x, starts, i):
    """Token i after each row's own start: x [B, H, T, E] -> [B, H, 1, E] with row b at position starts[b] + i."""
    return torch.stack([x[b, :, n + i] for b, n in enumerate(starts)])[:, :, None]


@pytest.mark.parametrize("kind,window,sinks", [("tk", 4, 0), ("sw", 3, 2), ("tk", 3, 1), ("sw", 0, 1)], ids=str)
def test_per_row_positions_equal_torch_reference_row_by_row(kind, window, sinks):
    """One cache and one launch per step for rows holding 9, 0, 4 and 13 real tokens (compact order: real
    tokens first, then padding filled with large junk that must never be read). Row b's new tokens sit at
    its own positions n_b, n_b + 1, ...: every row equals ``attention.hybrid.hybrid_decode_step`` run on
    that row alone, and the same cache with every row at the longest row's position does not."""
    B, H, T, K, F, D = 4, 2, 22, 12, 10, 9
    lengths, steps = [9, 0, 4, 13], 8  # tk w=4 and w=3: block starts inside the decoded range
    cfg = dict(window=window, kind=kind, sink_tokens=sinks)
    q, k, v, fq, fk, logit = make_seq(B, H, T, K, F, D)
    prompt = [x[:, :, : max(lengths)].clone() for x in (k, v, fk)]  # [B, H, 13, *]
    for x in prompt:
        for b, n in enumerate(lengths):
            x[b, :, n:] = 1e3  # padding
    ring = RingHybridCache.from_prompt(*prompt, lengths=torch.tensor(lengths, device=DEVICE), **cfg)
    wrong = RingHybridCache(**{n: t.clone() if isinstance(t, torch.Tensor) else t for n, t in ring.__dict__.items()})
    wrong.pos = max(lengths)  # same contents, positions not per row (negative control)
    ys, ys_wrong = [], []
    for i in range(steps):
        tok = [_row_tokens(x, lengths, i) for x in (q, k, v, fq, fk)]  # [B, H, 1, *]
        ys.append(hybrid_decode_step(*tok, logit, ring)[0])
        ys_wrong.append(hybrid_decode_step(*tok, logit, wrong)[0])
    y, y_wrong = torch.cat(ys, 2), torch.cat(ys_wrong, 2)  # [B, H, steps, D]
    assert ring.pos.tolist() == [n + steps for n in lengths]
    for b, n in enumerate(lengths):
        row = lambda x: x[b : b + 1]  # noqa: E731
        ref = prefill_hybrid_cache(row(k)[:, :, :n], row(v)[:, :, :n], row(fk)[:, :, :n], **cfg)
        ref_ys = []
        for i in range(steps):
            tok = [row(x)[:, :, n + i : n + i + 1] for x in (q, k, v, fq, fk)]
            y_i, ref = torch_decode_step(*tok, logit, ref, **cfg)
            ref_ys.append(y_i)
        check_close(f"row {b} (n={n})", torch.cat(ref_ys, 2), y[b : b + 1], **TOLERANCES[torch.float32])
    assert rel_rms(y[1:3], y_wrong[1:3]) > 1e-2  # rows shorter than 13: their own position matters


def test_positions_advance_in_place_on_the_device():
    """pos is one int64 tensor per cache (the kernel reads it, a separate op adds 1): same storage after
    steps, so a CUDA graph that captured a step sees the new positions on replay; ints fill every row."""
    xs = make_seq(3, 2, 4, 12, 10, 9)
    ring = RingHybridCache.empty(3, 2, 12, 9, 10, window=4, kind="tk", device=DEVICE)
    ptr = ring.pos.data_ptr()
    ring.pos = torch.tensor([0, 5, 2], device=DEVICE)
    for p in range(2):
        hybrid_decode_step(*(x[:, :, p : p + 1] for x in xs[:5]), xs[5], ring)
    assert ring.pos.tolist() == [2, 7, 4] and ring.pos.data_ptr() == ptr and ring.pos.dtype == torch.int64
    ring.pos = 11
    assert ring.pos.tolist() == [11, 11, 11] and ring.pos.data_ptr() == ptr


def test_decode_negative_control_and_constant_memory():
    """A tk cache decoding an sw-trained sequence is wrong (the test can fail); cache size does not grow."""
    xs = make_seq(1, 1, 24, 12, 10, 9)
    cache = RingHybridCache.empty(1, 1, 12, 9, 10, window=4, kind="tk", device=DEVICE)
    sizes = [t.numel() for t in cache.tensors()]
    y_dec, cache = decode_all(xs, cache, 0)
    assert rel_rms(naive_hybrid_attn(*xs, window=4, kind="sw"), y_dec) > 1e-2
    assert sizes == [t.numel() for t in cache.tensors()]


def test_decode_bad_inputs():
    xs = make_seq(1, 2, 2, 4, 6, 5)
    q, k, v, fq, fk, logit = xs
    cache = RingHybridCache.empty(1, 2, 4, 5, 6, window=2, device=DEVICE)
    with pytest.raises(ValueError, match=r"^hybrid_decode_step takes one token \(dim 2 == 1\), got 2"):
        hybrid_decode_step(q, k, v, fq, fk, logit, cache)
    tok = [x[:, :, :1] for x in (q, k, v, fq, fk)]
    with pytest.raises(ValueError, match=r"^window_logit must be a tensor of shape \[H\] = \(2,\)"):
        hybrid_decode_step(*tok, logit[:1], cache)
    small = RingHybridCache.empty(1, 2, 4, 5, 3, window=2, device=DEVICE)
    with pytest.raises(ValueError, match=r"^cache.S_buf has shape \(1, 2, 2, 3, 5\), expected \(1, 2, 2, 6, 5\)"):
        hybrid_decode_step(*tok, logit, small)
    with pytest.raises(ValueError, match=r"^window must be an int >= 0"):
        RingHybridCache.empty(1, 2, 4, 5, 6, window=-1)
    with pytest.raises(ValueError, match=r"^kind must be 'tk' or 'sw'"):
        RingHybridCache.empty(1, 2, 4, 5, 6, window=2, kind="x")
    kvf = (k, v, fk)  # [1, 2, 2, *]
    with pytest.raises(ValueError, match=r"^lengths must be an int tensor of shape \[B\] = \(1,\)"):
        RingHybridCache.from_prompt(*kvf, window=2, lengths=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"^lengths must lie in \[0, T\] = \[0, 2\], got \[3\]"):
        RingHybridCache.from_prompt(*kvf, window=2, lengths=torch.tensor([3], device=DEVICE))
    other = RingHybridCache.empty(1, 2, 4, 5, 6, window=2, device=DEVICE)
    other.positions = torch.zeros(2, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match=r"^cache.positions has shape \(2,\), expected \(1,\)"):
        hybrid_decode_step(*tok, logit, other)
    other.positions = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=r"^cache.positions must be int64"):
        hybrid_decode_step(*tok, logit, other)


@pytest.mark.gpu
@pytest.mark.parametrize("dots", [False, True], ids=["reductions", "dots"])
@pytest.mark.parametrize("kind", ["tk", "sw"])
def test_gpu_decode_bf16(kind, dots, monkeypatch):
    """bf16 inputs, D = F = 128, 64-token window, prompt of 300 then 100 steps (tk: the block from 384 reads
    a state its previous block's steps built, 2 rows each): within 5e-3 relative RMS, with row reductions
    and with the dots (the default for bf16; the state then rounded to bf16 as a dot operand)."""
    monkeypatch.setattr(decode_module, "DECODE_DOTS", dots)
    xs = make_seq(4, 8, 400, 128, 128, 128, dtype=torch.bfloat16)
    cfg = dict(window=64, kind=kind, sink_tokens=0)
    y_full = naive_hybrid_attn(*[x.float() for x in xs[:5]], xs[5], **cfg)
    cache = RingHybridCache.from_prompt(xs[1][:, :, :300], xs[2][:, :, :300], xs[4][:, :, :300], **cfg)
    y_dec, _ = decode_all(xs, cache, 300)
    assert rel_rms(y_full[:, :, 300:], y_dec.float()) < 5e-3
