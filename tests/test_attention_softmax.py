import math

import pytest
import torch

from lolcats_lab.attention import softmax_attn
from tests.helpers import random_qkv


def loop_reference(q, k, v, causal, key_mask=None):
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    y = torch.zeros(B, H, Tq, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for i in range(Tq):
            keys = [j for j in range(Tk) if (not causal or j <= Tk - Tq + i) and (key_mask is None or key_mask[b, j])]
            if not keys:
                continue
            s = torch.stack([(q[b, :, i] * k[b, :, j]).sum(-1) for j in keys], -1) / math.sqrt(D)  # [H, n]
            y[b, :, i] = torch.einsum("hj,hjd->hd", s.softmax(-1), v[b][:, keys])
    return y


@pytest.mark.parametrize("causal", [True, False])
def test_matches_loop_reference_with_padding(causal):
    q, k, v = random_qkv(2, 3, 9, 4)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :3] = False
    torch.testing.assert_close(softmax_attn(q, k, v, causal=causal, key_mask=mask), loop_reference(q, k, v, causal, mask))


def test_matches_torch_sdpa():
    q, k, v = random_qkv(2, 3, 17, 8, dtype=torch.float32)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(softmax_attn(q, k, v), ref, rtol=1e-5, atol=1e-6)


def test_decoding_queries_align_to_the_end():
    q, k, v = random_qkv(1, 2, 10, 4)
    full = softmax_attn(q, k, v)
    torch.testing.assert_close(softmax_attn(q[:, :, 7:], k, v), full[:, :, 7:])


def test_map_rows_sum_to_one_and_fully_masked_rows_are_zero():
    q, k, v = random_qkv(1, 1, 6, 4)
    mask = torch.tensor([[False, False, True, True, True, True]])
    y, A = softmax_attn(q, k, v, key_mask=mask, return_map=True)
    assert torch.equal(A[0, 0, :2], torch.zeros(2, 6, dtype=A.dtype)) and torch.equal(y[0, 0, :2], torch.zeros(2, 4, dtype=y.dtype))
    torch.testing.assert_close(A[0, 0, 2:].sum(-1), torch.ones(4, dtype=A.dtype))


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 100.0), (torch.float16, 8.0)])
def test_large_logits_finite(dtype, scale):
    q, k, v = (t.to(dtype).requires_grad_() for t in random_qkv(1, 2, 20, 8, dtype=torch.float32, scale=scale))
    y = softmax_attn(q, k, v)
    y.float().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(q.grad).all()


@pytest.mark.parametrize(
    "q_shape, k_shape, kw, match",
    [
        ((1, 2, 3), (1, 2, 3, 4), {}, r"q must have shape \[B, H, T, D\]"),
        ((1, 2, 3, 4), (1, 2, 3, 5), {}, "same head dim"),
        ((1, 2, 5, 4), (1, 2, 3, 4), {}, "causal attention needs Tq <= Tk"),
        ((1, 2, 3, 4), (1, 2, 3, 4), dict(key_mask=torch.zeros(1, 3)), "not an additive float mask"),
    ],
)
def test_bad_input(q_shape, k_shape, kw, match):
    with pytest.raises(ValueError, match=match):
        softmax_attn(torch.randn(q_shape), torch.randn(k_shape), torch.randn(k_shape), **kw)
