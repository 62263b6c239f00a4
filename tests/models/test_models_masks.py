"""Padding helpers: key masks from Hugging Face masks, and moving padding out of the way per row."""

import pytest
import torch

from lolcats_lab.models.masks import compact_order, gather_map, gather_seq, key_mask_from_attention_mask, restore_seq


def _hf_eager_mask(mask2d, q_len=None):
    """The additive [B, 1, Tq, Tk] causal mask eager attention receives (0 = attend, finfo.min = masked)."""
    B, T = mask2d.shape
    q_len = q_len or T
    causal = torch.ones(T, T, dtype=torch.bool).tril()[T - q_len :]
    allowed = causal[None, None] & mask2d.bool()[:, None, None, :]
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)


def test_key_mask_from_masks():
    m = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    want = m.bool()
    assert torch.equal(key_mask_from_attention_mask(_hf_eager_mask(m), 5), want)
    assert torch.equal(key_mask_from_attention_mask(_hf_eager_mask(m) == 0, 5), want)  # bool (sdpa style)
    assert torch.equal(key_mask_from_attention_mask(m, 5), want)  # 2D
    assert torch.equal(key_mask_from_attention_mask(_hf_eager_mask(m, q_len=2), 2), want[:, -2:])  # decoding
    assert key_mask_from_attention_mask(_hf_eager_mask(torch.ones(2, 4)), 4) is None
    assert key_mask_from_attention_mask(None, 4) is None
    with pytest.raises(ValueError, match=r"^attention_mask must be 2D \[B, T\] or 4D"):
        key_mask_from_attention_mask(torch.ones(2, 3, 4), 4)


def test_compact_order_round_trip():
    key_mask = torch.tensor([[True, True, True, True], [False, False, True, True], [False, True, False, True]])
    perm = compact_order(key_mask)
    assert torch.equal(key_mask.gather(1, perm), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]).bool())
    x = torch.arange(3 * 2 * 4 * 1.0).view(3, 2, 4, 1)
    xc = gather_seq(x, perm)
    assert torch.equal(xc[1, :, :2, 0], x[1, :, 2:, 0])  # real tokens first, in order
    assert torch.equal(xc[2, :, :2, 0], x[2, :, [1, 3], 0])
    assert torch.equal(restore_seq(xc, perm), x)
    a = torch.rand(3, 2, 4, 4)
    back = gather_map(gather_map(a, perm), perm.argsort(1))
    assert torch.equal(back, a)
    # right padding only (or none): nothing to move
    assert compact_order(torch.tensor([[True, True, False], [True, False, False]])) is None
    assert compact_order(None) is None
