"""Property-based fuzzing of the public math API with hypothesis: ``lolcats_lab.attention.*``,
``lolcats_lab.feature_maps.make_feature_map`` and ``lolcats_lab.metrics``.

Every drawn case (shapes, dtypes, lengths including T=1, key masks of every flavour, window sizes and kinds,
sink tokens, chunk sizes, feature maps and their options, deliberately broken inputs) must either

* return a finite result of the documented shape (and, for valid attention inputs, agree with the
  naive reference: chunked == quadratic in fp64 at the torch.testing defaults), or
* raise ValueError / TypeError with a non-empty message.

Any other exception (IndexError, RuntimeError from inside torch, ...) fails the test and hypothesis prints
the smallest input that triggers it. Runs are derandomised (fixed examples, reproducible counts).
Counts of cases per target are kept in ``COUNTS``; with LOLCATS_WRITE_RESULTS=1 they are merged into
``benchmarks/results/reliability-cpu.json``.
"""

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lolcats_lab import metrics
from lolcats_lab.attention import (
    chunk_hybrid_attn,
    chunk_linear_attn,
    hybrid_attn,
    hybrid_decode_step,
    linear_attn,
    naive_hybrid_attn,
    naive_linear_attn,
    recurrent_linear_attn,
    softmax_attn,
)
from lolcats_lab.feature_maps import FEATURE_MAPS, make_feature_map

EXAMPLES = 25 if os.environ.get("LOLCATS_CI") else 80
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
COUNTS: Counter = Counter()
CLEAR = (ValueError, TypeError)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def attempt(target: str, fn):
    """Run ``fn``; count the case; a ValueError/TypeError must carry a message. Returns (ok, result)."""
    COUNTS[f"{target}/cases"] += 1
    try:
        out = fn()
    except CLEAR as err:
        assert str(err).strip(), f"{target}: {type(err).__name__} without a message"
        COUNTS[f"{target}/clear_errors"] += 1
        return False, None
    COUNTS[f"{target}/accepted"] += 1
    return True, out


def assert_finite(name, *tensors):
    for t in tensors:
        assert torch.isfinite(t.float()).all(), f"{name}: non-finite output"


# ----------------------------------------------------------------------------------------------------------
# strategies


@st.composite
def attention_case(draw):
    """Valid [B, H, T, *] inputs, then maybe one deliberate fault."""
    B, H, T = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 40))
    D, F = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    dtype = draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([1.0, 1.0, 30.0]))  # large logits sometimes
    rnd = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * scale)  # noqa: E731
    case = dict(
        q=rnd(B, H, T, D), k=rnd(B, H, T, D), v=rnd(B, H, T, D),
        fq=torch.rand(B, H, T, F, generator=g, dtype=torch.float64),
        fk=torch.rand(B, H, T, F, generator=g, dtype=torch.float64),
        window_logit=torch.randn(H, generator=g, dtype=torch.float64),
    )
    case = {n: t.to(dtype) for n, t in case.items()}  # window_logit in the same dtype (mixed: a known gap below)
    mask_kind = draw(st.sampled_from(["none", "none", "bool", "int", "all_false"]))
    key_mask = None
    if mask_kind == "bool":
        key_mask = torch.rand(B, T, generator=g) > 0.3
    elif mask_kind == "int":
        key_mask = (torch.rand(B, T, generator=g) > 0.3).long()
    elif mask_kind == "all_false":
        key_mask = torch.zeros(B, T, dtype=torch.bool)
    opts = dict(
        causal=draw(st.booleans()),
        key_mask=key_mask,
        window=draw(st.integers(0, 20)),
        kind=draw(st.sampled_from(["tk", "sw"])),
        sink_tokens=draw(st.integers(0, 3)),
    )
    fault = draw(st.sampled_from(["none"] * 6 + [
        "drop_dim", "mismatch_T", "mismatch_H", "mismatch_F", "int_tensor", "list_input", "mask_shape",
        "float_mask", "window_negative", "window_float", "window_bool", "kind", "sinks_negative",
        "window_logit_shape", "mask_type",
    ]))
    if fault == "drop_dim":
        name = draw(st.sampled_from(["q", "k", "v", "fq", "fk"]))
        case[name] = case[name][0]
    elif fault == "mismatch_T" and T > 1:
        case["k"], case["fk"] = case["k"][:, :, :-1], case["fk"][:, :, :-1]
    elif fault == "mismatch_H":
        case["v"] = torch.cat([case["v"], case["v"]], 1)
    elif fault == "mismatch_F":
        case["fk"] = torch.cat([case["fk"], case["fk"]], -1)
    elif fault == "int_tensor":
        case["q"] = case["q"].long()
        case["fq"] = case["fq"].long()
    elif fault == "list_input":
        case["v"] = case["v"].tolist()
    elif fault == "mask_shape":
        opts["key_mask"] = torch.ones(B, T + 1, dtype=torch.bool)
    elif fault == "float_mask":
        opts["key_mask"] = torch.zeros(B, T)
    elif fault == "mask_type":
        opts["key_mask"] = [[True] * T] * B
    elif fault == "window_negative":
        opts["window"] = -1
    elif fault == "window_float":
        opts["window"] = 2.5
    elif fault == "window_bool":
        opts["window"] = True
    elif fault == "kind":
        opts["kind"] = "terraced"
    elif fault == "sinks_negative":
        opts["sink_tokens"] = -2
    elif fault == "window_logit_shape":
        case["window_logit"] = torch.zeros(H + 1)
    return case, opts, fault


def _faulty(fault):
    return fault != "none"


# ----------------------------------------------------------------------------------------------------------
# attention


@FUZZ
@given(attention_case())
def test_fuzz_softmax_attn(data):
    case, opts, fault = data
    q, k, v = case["q"], case["k"], case["v"]
    ok, out = attempt("softmax_attn", lambda: softmax_attn(q, k, v, causal=opts["causal"], key_mask=opts["key_mask"],
                                                            return_map=True))
    if ok:
        y, A = out
        assert y.shape == v.shape[:3] + v.shape[3:] and A.shape == (*q.shape[:3], k.shape[2])
        assert_finite("softmax_attn", y, A)
        rows = A.sum(-1)
        assert torch.all((rows - 1).abs() < 1e-4) or torch.all((rows == 0) | ((rows - 1).abs() < 1e-4))
    elif not _faulty(fault):
        pytest.fail("softmax_attn rejected valid input")


@FUZZ
@given(attention_case(), st.sampled_from(["auto", "naive", "chunk", "recurrent"] * 2 + ["triton", "bogus"]),
       st.integers(-1, 70))
def test_fuzz_linear_attn(data, impl, chunk_size):
    case, opts, fault = data
    fq, fk, v = case["fq"], case["fk"], case["v"]
    kw = dict(causal=opts["causal"], key_mask=opts["key_mask"])
    ok, y = attempt("linear_attn", lambda: linear_attn(fq, fk, v, impl=impl, **kw))
    if ok:
        assert y.shape == v.shape and y.dtype == v.dtype
        assert_finite("linear_attn", y)
    ok_c, y_c = attempt("chunk_linear_attn", lambda: chunk_linear_attn(fq, fk, v, chunk_size=chunk_size, **kw))
    ok_n, y_n = attempt("naive_linear_attn", lambda: naive_linear_attn(fq, fk, v, **kw))
    if ok_c and ok_n:
        assert_finite("chunk_linear_attn", y_c)
        if v.dtype == torch.float64:  # identity between naive forms, torch.testing defaults
            torch.testing.assert_close(y_c, y_n)
    if not _faulty(fault):
        assert ok_n, "naive_linear_attn rejected valid input"
        assert ok_c == (chunk_size >= 1), f"chunk_size={chunk_size}"
        if opts["causal"] and opts["key_mask"] is None:
            ok_r, out = attempt("recurrent_linear_attn", lambda: recurrent_linear_attn(fq, fk, v))
            assert ok_r
            if v.dtype == torch.float64:
                torch.testing.assert_close(out[0], y_n)


@FUZZ
@given(attention_case(), st.sampled_from(["auto", "naive", "chunk"] * 2 + ["triton", "recurrent"]), st.integers(0, 3))
def test_fuzz_hybrid_attn(data, impl, chunk_mult):
    case, opts, fault = data
    args = [case[n] for n in ("q", "k", "v", "fq", "fk", "window_logit")]
    v = case["v"]
    ok, y = attempt("hybrid_attn", lambda: hybrid_attn(*args, impl=impl, **opts))
    if ok:
        assert y.shape == v.shape and y.dtype == v.dtype
        assert_finite("hybrid_attn", y)
    chunk = None if chunk_mult == 0 else max(opts["window"], 1) * chunk_mult if isinstance(opts["window"], int) else 3
    ok_c, y_c = attempt("chunk_hybrid_attn", lambda: chunk_hybrid_attn(*args, chunk_size=chunk, **opts))
    ok_n, y_n = attempt("naive_hybrid_attn", lambda: naive_hybrid_attn(*args, **opts))
    if ok_c and ok_n:
        assert_finite("chunk_hybrid_attn", y_c)
        if v.dtype == torch.float64:
            torch.testing.assert_close(y_c, y_n)
    if not _faulty(fault):
        assert ok_n, "naive_hybrid_attn rejected valid input"
        assert ok_c, "chunk_hybrid_attn rejected valid input"


@FUZZ
@given(attention_case())
def test_fuzz_hybrid_decode_equals_full_pass(data):
    """Token-by-token decoding from an empty cache equals the full causal pass (no key mask)."""
    case, opts, fault = data
    q, k, v, fq, fk, wl = (case[n] for n in ("q", "k", "v", "fq", "fk", "window_logit"))
    kw = dict(window=opts["window"], kind=opts["kind"], sink_tokens=opts["sink_tokens"])
    ok_full, y_full = attempt("naive_hybrid_attn", lambda: naive_hybrid_attn(q, k, v, fq, fk, wl, **kw))

    def decode():
        cache, ys = None, []
        for t in range(q.shape[2]):
            sl = slice(t, t + 1)
            y, cache = hybrid_decode_step(q[:, :, sl], k[:, :, sl], v[:, :, sl], fq[:, :, sl], fk[:, :, sl], wl, cache, **kw)
            ys.append(y)
        return torch.cat(ys, 2)

    ok_dec, y_dec = attempt("hybrid_decode_step", decode)
    if ok_full and ok_dec and v.dtype == torch.float64:
        torch.testing.assert_close(y_dec, y_full)
    if not _faulty(fault):
        assert ok_full and ok_dec


# ----------------------------------------------------------------------------------------------------------
# feature maps


@FUZZ
@given(
    # valid values repeated so that about a third of the maps get built and then fed good and bad inputs
    name=st.sampled_from(sorted(FEATURE_MAPS) * 3 + ["softmax", "", "Hedgehog"]),
    num_heads=st.sampled_from([1, 2, 3] * 3 + [0, -1, 2.0, True, "2"]),
    head_dim=st.sampled_from([1, 4, 7] * 3 + [0, -3, 4.5]),
    kwargs=st.sampled_from([{}] * 6 + [{"feature_dim": 3}, {"feature_dim": 0}, {"feature_dim": -1}, {"init": "random"},
                                       {"init": "zeros"}, {"bogus": 1}, {"feature_dim": 2.5}]),
    x_shape=st.sampled_from(["ok", "ok", "ok", "3d", "wrong_D", "wrong_H", "T1", "int"]),
    dtype=st.sampled_from(DTYPES),
    scale=st.sampled_from([1.0, 1e3]),
)
def test_fuzz_feature_maps(name, num_heads, head_dim, kwargs, x_shape, dtype, scale):
    ok, fmap = attempt("make_feature_map", lambda: make_feature_map(name, num_heads, head_dim, **kwargs))
    if not ok:
        return
    H, D = fmap.num_heads, fmap.head_dim
    shape = {"ok": (2, H, 5, D), "3d": (H, 5, D), "wrong_D": (2, H, 5, D + 1), "wrong_H": (2, H + 1, 5, D),
             "T1": (1, H, 1, D), "int": (2, H, 5, D)}[x_shape]
    torch.manual_seed(0)
    x = (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)
    if x_shape == "int":
        x = x.long()
    ok, y = attempt("feature_map.forward", lambda: fmap(x))
    if ok:
        assert y.shape == (*x.shape[:3], fmap.feature_dim) and y.dtype == x.dtype
        assert_finite(f"{name} feature map (scale {scale}, {dtype})", y)
        if fmap.non_negative:
            assert (y >= 0).all(), f"{name} produced negative features"
    elif x_shape in ("ok", "T1"):
        pytest.fail(f"{name} rejected valid input {shape} {dtype}")


# ----------------------------------------------------------------------------------------------------------
# metrics


@st.composite
def map_tensor(draw):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    kind = draw(st.sampled_from(["prob", "prob", "int", "list", "scalar", "half"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 999)))
    A = torch.softmax(torch.randn(*shape, generator=g), -1)
    if kind == "int":
        return A.long()
    if kind == "list":
        return A.tolist()
    if kind == "scalar":
        return torch.tensor(0.5)
    if kind == "half":
        return A.half()
    return A


@FUZZ
@given(A=map_tensor(), k=st.sampled_from([1, 2, 4, 100, 0, -1, 1.5]), dim=st.sampled_from([-1, 0]))
def test_fuzz_map_metrics(A, k, dim):
    for name, fn in (("attention_entropy", lambda: metrics.attention_entropy(A, dim=dim)),
                     ("effective_seq_len", lambda: metrics.effective_seq_len(A, dim=dim)),
                     ("spikiness", lambda: metrics.spikiness(A, k=k))):
        ok, out = attempt(name, fn)
        if ok:
            for t in (out if isinstance(out, tuple) else (out,)):
                assert_finite(name, t)


@FUZZ
@given(
    shape_a=st.lists(st.integers(1, 4), min_size=2, max_size=4),  # (0, -1) are distinct dims (1-D: a known gap)
    same=st.booleans(),
    dims=st.sampled_from([None, 0, -1, (0,), (0, -1)]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.float64]),
)
def test_fuzz_error_metrics(shape_a, same, dims, dtype):
    torch.manual_seed(0)
    a = torch.randn(*shape_a).to(dtype)
    b = torch.randn(*shape_a).to(dtype) if same else torch.randn(*shape_a, 2).to(dtype)
    for name, fn in (("mse", lambda: metrics.mse(a, b, dims)), ("relative_error", lambda: metrics.relative_error(a, b, dims))):
        ok, out = attempt(name, fn)
        if ok:
            assert_finite(name, out)
        else:
            assert not same, f"{name} rejected same-shape inputs"


@FUZZ
@given(
    nll=st.one_of(st.floats(0, 50), st.sampled_from([float("nan"), float("inf")]),
                  st.lists(st.floats(0, 20), min_size=1, max_size=8).map(torch.tensor)),
    num_tokens=st.sampled_from([None, 1, 7]),
)
def test_fuzz_perplexity(nll, num_tokens):
    ok, out = attempt("metrics.perplexity", lambda: metrics.perplexity(nll, num_tokens))
    if ok:
        assert out >= 1.0 or out > 0


# ----------------------------------------------------------------------------------------------------------
# gaps the fuzzing found (each was a strict xfail until fixed); now regression tests


def _r(*shape, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.attention_entropy(torch.full((2, 3), 1 / 3), dim=5), r"dims \[5\] are out of range"),
    (lambda: metrics.mse(torch.ones(3), torch.zeros(3), dims=(0, -1)), "name the same dim twice"),
    (lambda: metrics.perplexity(10.0, num_tokens=0), "num_tokens must be a positive int"),
    (lambda: metrics.perplexity(3.0, num_tokens=-2), "num_tokens must be a positive int"),
    (lambda: metrics.spikiness(torch.zeros(2, 0)), "empty key dim"),
    (lambda: make_feature_map("performer", 2, 4, feature_dim=0), "feature_dim"),
    (lambda: chunk_linear_attn(_r(1, 1, 2, 2), _r(1, 1, 2, 2), _r(1, 1, 2, 2), chunk_size=True), "chunk_size"),
    (lambda: softmax_attn(_r(1, 2, 3, 0), _r(1, 2, 3, 0), _r(1, 2, 3, 0)), "q has an empty last dim"),
])
def test_fixed_gap_raises_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_fixed_gap_error_metrics_on_lists_raise_type_error():
    with pytest.raises(TypeError, match="a must be a torch.Tensor, got list"):
        metrics.relative_error([1.0], [2.0])


def test_fixed_gap_hybrid_window_logit_dtype_follows_the_inputs():
    q = torch.randn(1, 1, 2, 1)
    y = naive_hybrid_attn(q, q, q, q.abs(), q.abs(), torch.zeros(1, dtype=torch.float64), window=0)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


@pytest.mark.parametrize("form", ["chunk_linear", "chunk_hybrid", "recurrent_linear"])
def test_fixed_gap_empty_sequence_gives_empty_output(form):
    fq, fk, v = _r(1, 2, 0, 3), _r(1, 2, 0, 3), _r(1, 2, 0, 4)
    if form == "chunk_linear":
        y = chunk_linear_attn(fq, fk, v)
    elif form == "recurrent_linear":
        y = recurrent_linear_attn(fq, fk, v)[0]
    else:
        y = chunk_hybrid_attn(_r(1, 2, 0, 4), _r(1, 2, 0, 4), v, fq, fk, torch.zeros(2), window=2)
    assert y.shape == (1, 2, 0, 4)


def test_fixed_gap_decode_cache_shape_mismatch():
    from lolcats_lab.attention import prefill_hybrid_cache

    cache = prefill_hybrid_cache(_r(1, 3, 4, 4), _r(1, 3, 4, 4), _r(1, 3, 4, 3), window=2)
    x = _r(1, 2, 1, 4)
    with pytest.raises(ValueError, match="use the cache of this layer and batch"):
        hybrid_decode_step(x, x, x, _r(1, 2, 1, 3), _r(1, 2, 1, 3), torch.zeros(2), cache, window=2)


# ----------------------------------------------------------------------------------------------------------


def test_zz_write_counts():
    """Runs last in this file: record the counts (merged into the results JSON when asked)."""
    assert sum(v for k, v in COUNTS.items() if k.endswith("/cases")) > 0 or not COUNTS
    if os.environ.get("LOLCATS_WRITE_RESULTS") == "1" and COUNTS:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "reliability-cpu.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data["api_fuzz"] = {
            "examples_per_test": EXAMPLES,
            "cases": sum(v for k, v in COUNTS.items() if k.endswith("/cases")),
            "accepted": sum(v for k, v in COUNTS.items() if k.endswith("/accepted")),
            "clear_errors": sum(v for k, v in COUNTS.items() if k.endswith("/clear_errors")),
            "internal_errors": 0,  # any would have failed the run before this point
            "per_target": dict(sorted(COUNTS.items())),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
