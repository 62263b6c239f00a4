import math

import pytest
import torch

from lolcats_lab.attention import softmax_attn
from lolcats_lab.metrics import (
    attention_entropy,
    effective_seq_len,
    mse,
    per_head_mse,
    perplexity,
    relative_error,
    spikiness,
)


@pytest.mark.parametrize("t", [1, 2, 7, 100])
def test_uniform_row_entropy_is_log_t_and_eff_len_is_t(t):
    A = torch.full((3, t), 1.0 / t)
    torch.testing.assert_close(attention_entropy(A), torch.full((3,), math.log(t)))
    torch.testing.assert_close(effective_seq_len(A), torch.full((3,), float(t)))


def test_one_hot_row_entropy_zero_and_fully_spiky():
    A = torch.zeros(2, 9)
    A[:, 4] = 1
    assert torch.equal(attention_entropy(A), torch.zeros(2))
    sp = spikiness(A, k=3)
    assert torch.equal(sp.max_weight, torch.ones(2)) and torch.equal(sp.topk_mass, torch.ones(2))
    assert torch.equal(sp.eff_len, torch.ones(2))


def test_entropy_of_causal_softmax_map_is_bounded_by_log_of_visible_keys():
    q = torch.randn(1, 2, 12, 4)
    _, A = softmax_attn(q, q, q, return_map=True)
    ent = attention_entropy(A)  # [1, 2, 12]
    bound = torch.log(torch.arange(1, 13, dtype=torch.float32))
    assert (ent <= bound + 1e-5).all() and ent[..., 0].abs().max() < 1e-6


def test_topk_mass_against_sorting():
    A = torch.softmax(torch.randn(4, 10), -1)
    torch.testing.assert_close(spikiness(A, k=3).topk_mass, A.sort(-1, descending=True).values[:, :3].sum(-1))


def test_mse_relative_error_and_per_head():
    a, b = torch.zeros(2, 3, 4, 5), torch.ones(2, 3, 4, 5)
    b[:, 1] = 2
    assert mse(a, b).item() == pytest.approx((4 + 1 + 1) / 3)
    torch.testing.assert_close(per_head_mse(a, b), torch.tensor([1.0, 4.0, 1.0]))
    assert relative_error(b, b).item() == 0.0
    assert relative_error(a, b).item() == pytest.approx(1.0)


def test_perplexity():
    assert perplexity(torch.full((10,), math.log(7.0))) == pytest.approx(7.0)
    assert perplexity(10 * math.log(3.0), num_tokens=10) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="non-finite NLL"):
        perplexity(torch.tensor([float("nan"), 1.0]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        mse(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="floating-point attention map"):
        attention_entropy(torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be a positive int"):
        spikiness(torch.ones(2, 2) / 2, k=0)
