"""Linear attention: quadratic reference vs chunked vs recurrent, dtype tolerances, properties, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lolcats_lab.attention import (
    LinearState,
    chunk_linear_attn,
    linear_attn,
    naive_linear_attn,
    recurrent_linear_attn,
)
from tests.helpers import case_id, hedgehog_features, random_qkv
from tests.tolerances import TOLERANCES, check_close

SHAPES = [  # (B, H, T, D, F-per-half)
    (1, 1, 1, 4, 3),
    (2, 3, 63, 5, 4),
    (1, 2, 64, 8, 6),
    (2, 1, 65, 7, 5),
    (1, 3, 127, 4, 3),
    (2, 2, 129, 9, 6),
]


def naive_loop_reference(fq, fk, v, eps=1e-12):
    """The definition written as plain loops (independent of the einsum code), causal."""
    B, H, T, _ = fq.shape
    y = torch.zeros(B, H, T, v.shape[-1], dtype=torch.float64)
    for i in range(T):
        w = (fq[:, :, i : i + 1] * fk[:, :, : i + 1]).sum(-1)  # [B, H, i+1]
        y[:, :, i] = (w[..., None] * v[:, :, : i + 1]).sum(2) / (w.sum(-1, keepdim=True) + eps)
    return y


def test_naive_matches_loop_definition():
    q, k, v = random_qkv(2, 2, 17, 4)
    fq, fk = hedgehog_features(q, k)
    torch.testing.assert_close(naive_linear_attn(fq, fk, v), naive_loop_reference(fq, fk, v))


@pytest.mark.parametrize("B,H,T,D,f", SHAPES, ids=[case_id(B, H, T, D, 2 * f) for B, H, T, D, f in SHAPES])
@pytest.mark.parametrize("chunk_size", [1, 16, 64])
def test_three_forms_agree_fp64(B, H, T, D, f, chunk_size):
    q, k, v = random_qkv(B, H, T, D)
    fq, fk = hedgehog_features(q, k, f)
    ref = naive_linear_attn(fq, fk, v)
    torch.testing.assert_close(chunk_linear_attn(fq, fk, v, chunk_size=chunk_size), ref)
    y_rec, state = recurrent_linear_attn(fq, fk, v)
    torch.testing.assert_close(y_rec, ref)
    torch.testing.assert_close(state.S, torch.einsum("bhtf,bhtd->bhfd", fk, v))


def test_bidirectional_chunk_matches_naive_with_padding():
    q, k, v = random_qkv(2, 2, 33, 4)
    fq, fk = hedgehog_features(q, k)
    mask = torch.ones(2, 33, dtype=torch.bool)
    mask[1, 25:] = False
    ref = naive_linear_attn(fq, fk, v, causal=False, key_mask=mask)
    torch.testing.assert_close(chunk_linear_attn(fq, fk, v, causal=False, key_mask=mask), ref)
    # padded keys must not matter: changing them leaves the output unchanged
    v2 = v.clone()
    v2[1, :, 25:] = 1e3
    torch.testing.assert_close(naive_linear_attn(fq, fk, v2, causal=False, key_mask=mask), ref)


def test_key_mask_equals_dropping_the_keys():
    q, k, v = random_qkv(1, 2, 20, 4)
    fq, fk = hedgehog_features(q, k)
    mask = torch.ones(1, 20, dtype=torch.bool)
    mask[0, :6] = False  # left padding
    y = chunk_linear_attn(fq, fk, v, key_mask=mask, chunk_size=8)
    torch.testing.assert_close(y[:, :, 6:], naive_linear_attn(fq[:, :, 6:], fk[:, :, 6:], v[:, :, 6:]))


def test_recurrent_continues_from_state():
    q, k, v = random_qkv(2, 2, 30, 4)
    fq, fk = hedgehog_features(q, k)
    y1, st = recurrent_linear_attn(fq[:, :, :11], fk[:, :, :11], v[:, :, :11])
    y2, _ = recurrent_linear_attn(fq[:, :, 11:], fk[:, :, 11:], v[:, :, 11:], state=st)
    torch.testing.assert_close(torch.cat([y1, y2], 2), naive_linear_attn(fq, fk, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_chunk_in_low_precision_within_tolerance(dtype):
    q, k, v = random_qkv(2, 3, 65, 8, dtype=torch.float32)
    fq, fk = hedgehog_features(q, k)
    ref = naive_linear_attn(fq.double(), fk.double(), v.double())
    out = chunk_linear_attn(fq.to(dtype), fk.to(dtype), v.to(dtype), chunk_size=16)
    assert out.dtype == dtype
    check_close(f"chunk {dtype}", ref, out, **TOLERANCES[dtype])


def test_gradients_chunk_equal_naive():
    q, k, v = random_qkv(1, 2, 37, 4)
    fq, fk = hedgehog_features(q, k)
    grads = []
    for fn in (naive_linear_attn, lambda *a: chunk_linear_attn(*a, chunk_size=8)):
        xs = [t.detach().clone().requires_grad_() for t in (fq, fk, v)]
        (fn(*xs) * torch.linspace(-1, 1, 4, dtype=torch.float64)).sum().backward()
        grads.append([x.grad for x in xs])
    for g_ref, g in zip(*grads):
        torch.testing.assert_close(g, g_ref)


def test_prefix_outputs_do_not_change_when_tokens_are_appended():
    q, k, v = random_qkv(1, 2, 40, 4)
    fq, fk = hedgehog_features(q, k)
    full = chunk_linear_attn(fq, fk, v, chunk_size=16)
    prefix = chunk_linear_attn(fq[:, :, :23], fk[:, :, :23], v[:, :, :23], chunk_size=16)
    torch.testing.assert_close(full[:, :, :23], prefix, rtol=0, atol=1e-14)


def test_negative_control_noncausal_differs():
    """The comparison can fail: bidirectional output is far from causal output."""
    q, k, v = random_qkv(1, 2, 30, 4)
    fq, fk = hedgehog_features(q, k)
    diff = naive_linear_attn(fq, fk, v) - naive_linear_attn(fq, fk, v, causal=False)
    assert diff.norm() / naive_linear_attn(fq, fk, v).norm() > 0.1


def test_map_rows_sum_to_one_and_are_causal():
    q, k, v = random_qkv(1, 2, 12, 4)
    fq, fk = hedgehog_features(q, k)
    _, A = naive_linear_attn(fq, fk, v, return_map=True)
    torch.testing.assert_close(A.sum(-1), torch.ones(1, 2, 12, dtype=torch.float64))
    assert (A.triu(1) == 0).all()


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 100.0), (torch.float16, 8.0)])
def test_large_inputs_give_finite_outputs_and_gradients(dtype, scale):
    q, k, v = random_qkv(1, 2, 33, 8, dtype=torch.float32, scale=scale)
    fq, fk = hedgehog_features(q.to(dtype), k.to(dtype))
    fq, fk, v = (t.detach().to(dtype).requires_grad_() for t in (fq, fk, v.to(dtype)))
    y = chunk_linear_attn(fq, fk, v, chunk_size=8)
    y.float().sum().backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(t.grad).all() for t in (fq, fk, v))


def test_all_zero_features_give_zero_not_nan():
    fq = torch.zeros(1, 1, 5, 3)
    y = chunk_linear_attn(fq, fq, torch.randn(1, 1, 5, 2))
    assert torch.equal(y, torch.zeros_like(y))


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(1, 70), D=st.integers(1, 9),
    f=st.integers(1, 5), C=st.integers(1, 40), causal=st.booleans(),
)
def test_fuzz_three_forms(B, H, T, D, f, C, causal):
    q, k, v = random_qkv(B, H, T, D, seed=T * 7 + D)
    fq, fk = hedgehog_features(q, k, f)
    ref = naive_linear_attn(fq, fk, v, causal=causal)
    torch.testing.assert_close(chunk_linear_attn(fq, fk, v, chunk_size=C, causal=causal), ref)
    if causal:
        torch.testing.assert_close(recurrent_linear_attn(fq, fk, v)[0], ref)


def test_dispatch_impls_agree_on_cpu():
    q, k, v = random_qkv(1, 2, 20, 4)
    fq, fk = hedgehog_features(q, k)
    ref = linear_attn(fq, fk, v, impl="naive")
    for impl in ("auto", "chunk", "recurrent"):
        torch.testing.assert_close(linear_attn(fq, fk, v, impl=impl), ref)
    with pytest.raises(ValueError, match="impl='triton' needs CUDA tensors, got fq on cpu"):
        linear_attn(fq, fk, v, impl="triton")


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((torch.rand(2, 3, 4), torch.rand(2, 3, 4), torch.rand(2, 3, 4)), {}, r"fq must have shape \[B, H, T, D\]"),
        ((torch.rand(1, 2, 5, 3), torch.rand(1, 2, 5, 4), torch.rand(1, 2, 5, 4)), {}, "same feature dim F"),
        ((torch.rand(1, 2, 5, 3), torch.rand(1, 2, 6, 3), torch.rand(1, 2, 6, 4)), {}, "sequence lengths"),
        ((torch.rand(1, 2, 5, 3), torch.rand(1, 3, 5, 3), torch.rand(1, 3, 5, 4)), {}, "fk has batch/heads"),
        ((torch.ones(1, 2, 5, 3, dtype=torch.int64),) * 3, {}, "fq must be a floating-point tensor"),
        ((torch.rand(1, 2, 5, 3),) * 3, dict(key_mask=torch.ones(1, 4, dtype=torch.bool)), r"key_mask must have shape \[B, Tk\]"),
        ((torch.rand(1, 2, 5, 3),) * 3, dict(impl="fast"), "impl must be one of"),
    ],
)
def test_bad_input_messages(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        linear_attn(*args, **kwargs)


def test_bad_chunk_size_and_state():
    x = torch.rand(1, 2, 5, 3)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        chunk_linear_attn(x, x, x, chunk_size=0)
    with pytest.raises(ValueError, match="state has S"):
        recurrent_linear_attn(x, x, x, state=LinearState.zeros(1, 2, 4, 3))
