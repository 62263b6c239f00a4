"""Hybrid window + linear attention (SPEC.md): reference vs chunked vs decoding, analytic cases, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lolcats_lab.attention import (
    chunk_hybrid_attn,
    hybrid_attn,
    hybrid_decode_step,
    naive_hybrid_attn,
    naive_linear_attn,
    prefill_hybrid_cache,
    softmax_attn,
    window_masks,
)
from tests.helpers import hedgehog_features, random_qkv
from tests.tolerances import TOLERANCES, check_close


def inputs(B=2, H=3, T=40, D=5, f=4, seed=0, dtype=torch.float64, scale=1.0):
    q, k, v = random_qkv(B, H, T, D, dtype=dtype, seed=seed, scale=scale)
    fq, fk = hedgehog_features(q, k, f, seed=seed)
    g = torch.linspace(-2, 2, H, dtype=dtype)
    return q, k, v, fq, fk, g


def spec_loop_reference(q, k, v, fq, fk, g, window, kind, sink_tokens=0):
    """SPEC.md written out per query with Python sets (independent of window_masks), causal, fp64."""
    B, H, T, D = q.shape
    y = torch.zeros(B, H, T, v.shape[-1], dtype=torch.float64)
    blk = lambda p: p // window if window else 0  # noqa: E731
    for i in range(T):
        if window == 0:
            W = set()
        elif kind == "sw":
            W = {j for j in range(i + 1) if i - window < j}
        else:
            W = {j for j in range(i + 1) if blk(j) >= blk(i) - 1}
        W |= {j for j in range(min(sink_tokens, i + 1))}
        L = set(range(i + 1)) - W
        for b in range(B):
            for h in range(H):
                s = {j: float(q[b, h, i] @ k[b, h, j]) / math.sqrt(D) for j in W}
                M = max(s.values()) if s else 0.0
                gamma = 1 / (1 + math.exp(-float(g[h])))
                a = {j: gamma * math.exp(s[j] - M) for j in W}
                a.update({j: float(fq[b, h, i] @ fk[b, h, j]) for j in L})
                den = sum(a.values()) + 1e-12
                y[b, h, i] = sum(a[j] * v[b, h, j] for j in a) / den
    return y


@pytest.mark.parametrize("kind", ["tk", "sw"])
@pytest.mark.parametrize("window, sinks", [(0, 0), (1, 0), (3, 0), (4, 2), (7, 1)])
def test_naive_matches_spec_written_as_loops(kind, window, sinks):
    q, k, v, fq, fk, g = inputs(B=1, H=2, T=13, D=3, f=2)
    expected = spec_loop_reference(q, k, v, fq, fk, g, window, kind, sinks)
    torch.testing.assert_close(naive_hybrid_attn(q, k, v, fq, fk, g, window=window, kind=kind, sink_tokens=sinks), expected)


def test_window_sets_partition_causal_keys_and_follow_tk_blocks():
    pos = torch.arange(20)
    for kind in ("tk", "sw"):
        W, L = window_masks(pos, pos, window=4, kind=kind)
        assert not (W & L).any()
        assert torch.equal(W | L, torch.ones(20, 20, dtype=torch.bool).tril())
    W, _ = window_masks(pos, pos, window=4, kind="tk")
    assert W[9].nonzero().flatten().tolist() == list(range(4, 10))  # blocks 1 (4..7) and 2 (8..9)
    assert W[4].nonzero().flatten().tolist() == list(range(0, 5))
    W, _ = window_masks(pos, pos, window=4, kind="sw")
    assert W[9].nonzero().flatten().tolist() == [6, 7, 8, 9]


LENGTHS = [1, 63, 64, 65, 127, 129]


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("kind", ["tk", "sw"])
@pytest.mark.parametrize("window", [1, 16, 64])
def test_chunk_equals_naive_fp64(T, kind, window):
    q, k, v, fq, fk, g = inputs(B=2, H=2, T=T, D=5, seed=T)
    ref = naive_hybrid_attn(q, k, v, fq, fk, g, window=window, kind=kind)
    torch.testing.assert_close(chunk_hybrid_attn(q, k, v, fq, fk, g, window=window, kind=kind), ref)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("sinks", [0, 3])
def test_chunk_equals_naive_with_padding_sinks_and_both_directions(causal, sinks):
    q, k, v, fq, fk, g = inputs(T=70)
    mask = torch.ones(2, 70, dtype=torch.bool)
    mask[0, 60:] = False
    mask[1, :5] = False
    for kind in ("tk", "sw"):
        kw = dict(window=8, kind=kind, causal=causal, sink_tokens=sinks, key_mask=mask)
        torch.testing.assert_close(chunk_hybrid_attn(q, k, v, fq, fk, g, **kw), naive_hybrid_attn(q, k, v, fq, fk, g, **kw))


def test_chunk_size_multiple_of_window_gives_same_result():
    q, k, v, fq, fk, g = inputs(T=50)
    ref = naive_hybrid_attn(q, k, v, fq, fk, g, window=5, kind="tk")
    for C in (5, 10, 35):
        torch.testing.assert_close(chunk_hybrid_attn(q, k, v, fq, fk, g, window=5, kind="tk", chunk_size=C), ref)
    with pytest.raises(ValueError, match="chunk_size must be a positive multiple of window=5"):
        chunk_hybrid_attn(q, k, v, fq, fk, g, window=5, chunk_size=12)


@pytest.mark.parametrize("kind", ["tk", "sw"])
@pytest.mark.parametrize("causal", [True, False])
def test_window_covering_the_sequence_equals_softmax(kind, causal):
    q, k, v, fq, fk, g = inputs(T=30)
    y = naive_hybrid_attn(q, k, v, fq, fk, g, window=30, kind=kind, causal=causal)
    torch.testing.assert_close(y, softmax_attn(q, k, v, causal=causal), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(chunk_hybrid_attn(q, k, v, fq, fk, g, window=64, kind=kind, causal=causal), y)


@pytest.mark.parametrize("causal", [True, False])
def test_window_zero_equals_linear_attention(causal):
    q, k, v, fq, fk, g = inputs(T=45)
    lin = naive_linear_attn(fq, fk, v, causal=causal)
    for kind in ("tk", "sw"):
        torch.testing.assert_close(naive_hybrid_attn(q, k, v, fq, fk, g, window=0, kind=kind, causal=causal), lin)
        torch.testing.assert_close(chunk_hybrid_attn(q, k, v, fq, fk, g, window=0, kind=kind, causal=causal), lin)


@pytest.mark.parametrize("kind", ["tk", "sw"])
def test_prefix_outputs_do_not_change_when_tokens_are_appended(kind):
    q, k, v, fq, fk, g = inputs(T=50)
    full = chunk_hybrid_attn(q, k, v, fq, fk, g, window=8, kind=kind)
    part = chunk_hybrid_attn(*(x[:, :, :29] for x in (q, k, v, fq, fk)), g, window=8, kind=kind)
    torch.testing.assert_close(full[:, :, :29], part, rtol=0, atol=1e-14)


@pytest.mark.parametrize("kind", ["tk", "sw"])
@pytest.mark.parametrize("window, sinks", [(4, 0), (5, 2), (0, 0)])
def test_token_by_token_decoding_equals_full_pass(kind, window, sinks):
    q, k, v, fq, fk, g = inputs(T=23)
    ref = naive_hybrid_attn(q, k, v, fq, fk, g, window=window, kind=kind, sink_tokens=sinks)
    # prefill the first 9 tokens, then decode one at a time
    cache = prefill_hybrid_cache(k[:, :, :9], v[:, :, :9], fk[:, :, :9], window=window, kind=kind, sink_tokens=sinks)
    ys, sizes = [], []
    for t in range(9, 23):
        sl = slice(t, t + 1)
        y, cache = hybrid_decode_step(q[:, :, sl], k[:, :, sl], v[:, :, sl], fq[:, :, sl], fk[:, :, sl], g, cache,
                                      window=window, kind=kind, sink_tokens=sinks)
        ys.append(y)
        sizes.append(cache.num_cached_tokens())
    torch.testing.assert_close(torch.cat(ys, 2), ref[:, :, 9:])
    bound = (2 * window if kind == "tk" else window) + sinks
    assert max(sizes) <= bound, f"cache grew to {max(sizes)} tokens (> {bound}): memory must stay constant"


def test_gamma_weighs_the_window_side():
    """gamma -> 1 with a huge logit; gamma -> 0 makes the output pure linear over L (plus tiny window)."""
    q, k, v, fq, fk, _ = inputs(T=20, H=1)
    y_lo = naive_hybrid_attn(q, k, v, fq, fk, torch.tensor([-40.0], dtype=torch.float64), window=4, kind="sw")
    lin_only = naive_hybrid_attn(q, k, v, fq, fk, torch.tensor([0.0], dtype=torch.float64), window=4, kind="sw")
    assert (y_lo - lin_only).abs().max() > 1e-3  # gamma matters
    # rows 4.. have linear keys; with gamma ~ 4e-18 the window is negligible there
    _, A = naive_hybrid_attn(q, k, v, fq, fk, torch.tensor([-40.0], dtype=torch.float64), window=4, kind="sw", return_map=True)
    W, _ = window_masks(torch.arange(20), torch.arange(20), window=4, kind="sw")
    assert A[0, 0, 4:][W[4:]].max() < 1e-12


def test_gradients_chunk_equal_naive_including_gamma_and_max():
    q, k, v, fq, fk, g = inputs(B=1, H=2, T=37, D=4)
    grads = []
    for fn in (naive_hybrid_attn, chunk_hybrid_attn):
        xs = [t.detach().clone().requires_grad_() for t in (q, k, v, fq, fk, g)]
        y = fn(*xs, window=6, kind="tk")
        (y * torch.linspace(-1, 1, 4, dtype=torch.float64)).sum().backward()
        grads.append([x.grad for x in xs])
    for name, g_ref, g_out in zip("q k v fq fk gamma_logit".split(), *grads):
        assert g_ref.abs().max() > 0, f"{name}: zero reference gradient"
        torch.testing.assert_close(g_out, g_ref, msg=lambda m: f"{name}: {m}")


def test_gradcheck_naive_hybrid():
    q, k, v, fq, fk, g = inputs(B=1, H=1, T=7, D=3, f=2)
    xs = [t.detach().clone().requires_grad_() for t in (q, k, v, fq, fk, g)]
    assert torch.autograd.gradcheck(lambda *a: naive_hybrid_attn(*a, window=3, kind="tk"), xs)


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 100.0), (torch.float16, 8.0), (torch.bfloat16, 100.0)])
def test_large_logits_finite_outputs_and_gradients(dtype, scale):
    """Scores ~ 1e4 in fp32 (q.k with |q|,|k| ~ 100*sqrt(d)), ~ 60 in fp16."""
    q, k, v, fq, fk, g = inputs(B=1, H=2, T=40, D=8, dtype=torch.float32, scale=scale)
    s = (q @ k.transpose(-1, -2)).abs().max() / math.sqrt(8)
    assert s > (1e4 if scale == 100.0 else 60), f"test setup: max score {s:.0f} is not large"
    xs = [t.detach().to(dtype).requires_grad_() for t in (q, k, v, fq, fk)] + [g.detach().requires_grad_()]
    y = chunk_hybrid_attn(*xs, window=8, kind="tk")
    y.float().sum().backward()
    assert torch.isfinite(y).all()
    for x in xs:
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_chunk_in_low_precision_within_tolerance(dtype):
    q, k, v, fq, fk, g = inputs(T=65, D=8, dtype=torch.float32)
    ref = naive_hybrid_attn(*(x.double() for x in (q, k, v, fq, fk, g)), window=16, kind="tk")
    out = chunk_hybrid_attn(*(x.to(dtype) for x in (q, k, v, fq, fk)), g, window=16, kind="tk")
    check_close(f"hybrid chunk {dtype}", ref, out, **TOLERANCES[dtype])


def test_negative_control_kinds_differ():
    q, k, v, fq, fk, g = inputs(T=40)
    tk = naive_hybrid_attn(q, k, v, fq, fk, g, window=8, kind="tk")
    sw = naive_hybrid_attn(q, k, v, fq, fk, g, window=8, kind="sw")
    assert (tk - sw).norm() / tk.norm() > 1e-2


def test_map_rows_sum_to_one():
    q, k, v, fq, fk, g = inputs(T=20)
    _, A = naive_hybrid_attn(q, k, v, fq, fk, g, window=4, kind="tk", return_map=True)
    torch.testing.assert_close(A.sum(-1), torch.ones(2, 3, 20, dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(
    T=st.integers(1, 60), D=st.integers(1, 6), H=st.integers(1, 3), window=st.integers(0, 20),
    kind=st.sampled_from(["tk", "sw"]), causal=st.booleans(), sinks=st.integers(0, 3),
)
def test_fuzz_chunk_vs_naive(T, D, H, window, kind, causal, sinks):
    q, k, v, fq, fk, g = inputs(B=1, H=H, T=T, D=D, f=3, seed=T + 100 * D)
    kw = dict(window=window, kind=kind, causal=causal, sink_tokens=sinks)
    torch.testing.assert_close(chunk_hybrid_attn(q, k, v, fq, fk, g, **kw), naive_hybrid_attn(q, k, v, fq, fk, g, **kw))


def test_dispatch_on_cpu():
    q, k, v, fq, fk, g = inputs(T=20)
    ref = hybrid_attn(q, k, v, fq, fk, g, window=4, impl="naive")
    torch.testing.assert_close(hybrid_attn(q, k, v, fq, fk, g, window=4), ref)
    with pytest.raises(ValueError, match="impl='triton' needs CUDA tensors"):
        hybrid_attn(q, k, v, fq, fk, g, window=4, impl="triton")


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(window=-1), r"window must be >= 0"),
        (dict(window=2.5), r"window must be an int >= 0"),
        (dict(kind="xx"), r"kind must be 'tk' .* or 'sw'"),
        (dict(sink_tokens=-2), "sink_tokens must be an int >= 0"),
        (dict(g=torch.zeros(5)), r"window_logit must be a tensor of shape \[H\] = \(3,\)"),
        (dict(q=torch.zeros(2, 3, 40)), r"q must have shape \[B, H, T, D\]"),
        (dict(k=torch.zeros(2, 3, 41, 5, dtype=torch.float64)), "sequence lengths"),
        (dict(v=torch.zeros(2, 3, 40, 5, dtype=torch.int32)), "v must be a floating-point tensor"),
        (dict(fk=torch.zeros(2, 3, 40, 9, dtype=torch.float64)), "same feature dim F"),
    ],
)
def test_bad_input_messages(change, match):
    q, k, v, fq, fk, g = inputs()
    args = dict(q=q, k=k, v=v, fq=fq, fk=fk, g=g, window=4, kind="tk", sink_tokens=0)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        naive_hybrid_attn(args["q"], args["k"], args["v"], args["fq"], args["fk"], args["g"],
                          window=args["window"], kind=args["kind"], sink_tokens=args["sink_tokens"])


def test_decode_step_rejects_more_than_one_token():
    q, k, v, fq, fk, g = inputs(T=3)
    with pytest.raises(ValueError, match="takes one token"):
        hybrid_decode_step(q, k, v, fq, fk, g, None, window=2)
