import math

import pytest
import torch

from lolcats_lab.feature_maps import (
    FEATURE_MAPS,
    HedgehogFeatureMap,
    make_feature_map,
    register_feature_map,
    FeatureMap,
)

ALL = sorted(FEATURE_MAPS)


def test_registry_has_every_documented_map():
    assert set(ALL) >= {"hedgehog", "elu", "relu", "performer", "taylor", "linear_act", "identity"}


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_shape_dtype_and_reported_feature_dim(name, dtype):
    fm = make_feature_map(name, 3, 5)
    x = torch.randn(2, 3, 7, 5).to(dtype)
    y = fm(x)
    assert y.shape == (2, 3, 7, fm.feature_dim)
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    if fm.non_negative:
        assert (y >= 0).all()


def test_hedgehog_matches_spec_formula():
    torch.manual_seed(0)
    fm = HedgehogFeatureMap(2, 4, feature_dim=3, init="random")
    x = torch.randn(1, 2, 5, 4)
    z = torch.stack([x[0, h] @ fm.weight[h] for h in range(2)])[None]  # [1, H, T, f], naive per-head loop
    expected = torch.cat([z.softmax(-1), (-z).softmax(-1)], -1).clamp(min=1e-12)
    torch.testing.assert_close(fm(x), expected)
    assert fm.feature_dim == 6


def test_hedgehog_halves_each_sum_to_one_and_are_floored():
    fm = HedgehogFeatureMap(1, 4, feature_dim=8, init="random")
    x = torch.randn(1, 1, 10, 4) * 1e4  # huge inputs: softmax saturates, clamp keeps phi > 0
    y = fm(x)
    assert (y >= 1e-12).all()
    torch.testing.assert_close(y[..., :8].sum(-1), torch.ones(1, 1, 10), atol=1e-5, rtol=0)
    torch.testing.assert_close(y[..., 8:].sum(-1), torch.ones(1, 1, 10), atol=1e-5, rtol=0)


def test_hedgehog_identity_init_is_eye_per_head():
    fm = HedgehogFeatureMap(3, 4, feature_dim=6, init="identity")
    expected = torch.zeros(4, 6)
    expected[torch.arange(4), torch.arange(4)] = 1
    for h in range(3):
        torch.testing.assert_close(fm.weight[h].detach(), expected)


def test_untied_maps_are_independent_parameters():
    a, b = make_feature_map("hedgehog", 2, 4), make_feature_map("hedgehog", 2, 4)
    assert a.weight.data_ptr() != b.weight.data_ptr()
    assert a.weight.requires_grad


def test_performer_estimates_softmax_kernel():
    """phi(q).phi(k) is an unbiased estimate of exp(q.k / sqrt(d)); with many features the mean
    relative error over pairs is small (measured ~0.05 at m=4096; bound 0.2)."""
    torch.manual_seed(0)
    d = 8
    fm = make_feature_map("performer", 1, d, feature_dim=4096, seed=1)
    q, k = torch.randn(1, 1, 16, d) * 0.5, torch.randn(1, 1, 16, d) * 0.5
    approx = fm(q)[0, 0] @ fm(k)[0, 0].T
    exact = torch.exp(q[0, 0] @ k[0, 0].T / math.sqrt(d))
    assert ((approx - exact).abs() / exact).mean() < 0.2


def test_taylor_is_second_order_expansion():
    d = 4
    fm = make_feature_map("taylor", 1, d)
    q, k = torch.randn(1, 1, 6, d, dtype=torch.float64), torch.randn(1, 1, 6, d, dtype=torch.float64)
    s = q[0, 0] @ k[0, 0].T / math.sqrt(d)
    torch.testing.assert_close(fm(q)[0, 0] @ fm(k)[0, 0].T, 1 + s + s**2 / 2)
    assert fm.feature_dim == 1 + d + d * d


def test_fixed_maps_formulas():
    x = torch.randn(1, 2, 3, 4)
    torch.testing.assert_close(make_feature_map("elu", 2, 4)(x), torch.nn.functional.elu(x) + 1)
    torch.testing.assert_close(make_feature_map("relu", 2, 4)(x), x.clamp(min=0))
    torch.testing.assert_close(make_feature_map("identity", 2, 4)(x), x)


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match=r"unknown feature map 'nope'; choose one of \[.*'hedgehog'"):
        make_feature_map("nope", 1, 4)


def test_duplicate_registration_rejected():
    with pytest.raises(ValueError, match="'hedgehog' is already registered"):
        register_feature_map("hedgehog")(type("Dup", (FeatureMap,), {}))


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(2, 3, 4), r"x must have shape \[B, H, T, D\] \(4 dims\)"),
        (torch.ones(1, 2, 3, 4, dtype=torch.long), "x must be a floating-point tensor"),
        (torch.randn(1, 2, 3, 5), "head dim 5 but this hedgehog map was built for head_dim=4"),
        (torch.randn(1, 3, 3, 4), "3 heads but this hedgehog map was built for num_heads=2"),
    ],
)
def test_bad_input_messages(x, match):
    with pytest.raises(ValueError, match=match):
        make_feature_map("hedgehog", 2, 4)(x)


@pytest.mark.parametrize("kw, match", [(dict(feature_dim=0), "feature_dim"), (dict(init="zeros"), "init must be")])
def test_bad_construction(kw, match):
    with pytest.raises(ValueError, match=match):
        HedgehogFeatureMap(2, 4, **kw)
