"""Layer-wise transfer in rounds (``max_cached_tokens``): one round is the original path, optimizer state
carries over between rounds exactly, and the cache of teacher activations stays bounded by the limit."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lolcats_lab.models.convert import linearize
from lolcats_lab.scale import PeakMemory
from lolcats_lab.train import TransferConfig, transfer_layerwise
from lolcats_lab.train.layerwise import round_slices, round_steps


def tiny_llama(seed=0, hidden=64):
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=2 * hidden, vocab_size=101, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).eval()
    linearize(model, attention="hybrid-tk", window=8, feature_dim=16)
    return model


def data(n=16, t=32, seed=1):
    return torch.randint(0, 101, (n, t), generator=torch.Generator().manual_seed(seed))


def maps(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_round_slices_and_steps():
    assert round_slices(5, 2, 32, None) == [range(5)]
    assert round_slices(5, 2, 32, 128) == [range(0, 2), range(2, 4), range(4, 5)]
    assert round_slices(5, 2, 32, 10) == [range(i, i + 1) for i in range(5)]  # at least one batch per round
    assert round_steps(10, [range(0, 2), range(2, 4), range(4, 5)]) == [4, 8, 10]
    assert round_steps(1, [range(1), range(1, 2), range(2, 3)]) == [0, 1, 1]
    with pytest.raises(ValueError, match="max_cached_tokens must be a positive int"):
        round_slices(5, 2, 32, 0)


def test_one_round_equals_the_original_path():
    """A limit that holds the whole set is one round: the same code path, bit-identical maps and history."""
    ids = data()
    cfg = TransferConfig(steps=5, batch_size=4, progress=False, seed=3)
    a, b = tiny_llama(), tiny_llama()
    ra = transfer_layerwise(a, ids, cfg)
    rb = transfer_layerwise(b, ids, cfg, max_cached_tokens=ids.numel())
    ma, mb = maps(a), maps(b)
    assert all(torch.equal(ma[n], mb[n]) for n in ma)
    assert [r.history for r in ra] == [r.history for r in rb]
    assert any(not torch.equal(ma[n], p) for n, p in maps(tiny_llama()).items())  # it did train


@pytest.mark.parametrize("with_dir", [False, True])
def test_rounds_carry_the_optimizer_state(tmp_path, with_dir):
    """Data made of one batch repeated: every round sees the same batch, so 4 rounds of 2 steps must equal
    one run of 8 steps exactly (AdamW moments, step count and the cosine schedule carry over)."""
    one = data(4, 32)
    ids = one.repeat(4, 1)  # 4 identical batches of 4 sequences
    cfg = TransferConfig(steps=8, batch_size=4, progress=False, seed=0)
    ref, rounds = tiny_llama(), tiny_llama()
    r_ref = transfer_layerwise(ref, one, cfg)
    seen = []
    r_rounds = transfer_layerwise(rounds, ids, cfg, max_cached_tokens=one.numel(), callback=seen.append,
                                  checkpoint_dir=tmp_path / "ck" if with_dir else None)
    m_ref, m_rounds = maps(ref), maps(rounds)
    for n in m_ref:
        torch.testing.assert_close(m_rounds[n], m_ref[n], rtol=0, atol=0, msg=lambda m: f"{n}: {m}")
    assert [r.steps_done for r in r_rounds] == [8, 8]
    assert [len(r.history) for r in r_rounds] == [8, 8]
    assert [[h["loss"] for h in r.history] for r in r_rounds] == [[h["loss"] for h in r.history] for r in r_ref]
    # rounds outermost: round 0 trains layers 0 and 1 for steps 1-2, then round 1 for steps 3-4, ...
    assert [(rec["layer"], rec["step"]) for rec in seen][:6] == [(0, 1), (0, 2), (1, 1), (1, 2), (0, 3), (0, 4)]
    if with_dir:
        assert (tmp_path / "ck" / "layer001" / "train_state.safetensors").exists()


def test_rounds_bound_the_cache():
    """The peak memory of the transfer grows with the training set without a limit; with one it stays at
    the peak of a set of the limit's size (measured on CPU with PeakMemory)."""
    T, B = 64, 2
    ids = data(32, T)
    cfg = TransferConfig(steps=4, batch_size=B, progress=False)

    def peak(model, x, **kw):
        with PeakMemory() as mem:
            transfer_layerwise(model, x, cfg, **kw)
        return mem.peak_bytes

    small = peak(tiny_llama(hidden=256), ids[: 2 * B])  # 2 batches, no limit
    full = peak(tiny_llama(hidden=256), ids)  # 16 batches, no limit
    limited = peak(tiny_llama(hidden=256), ids, max_cached_tokens=2 * B * T)  # 16 batches in 8 rounds of 2
    # the cache grows with the data: one layer's fp32 inputs for 28 more sequences of T tokens at hidden 256
    # (1.8 MiB) at least; measured 4.4 MiB more (inputs and outputs of the layer held at once)
    extra_inputs = (32 - 2 * B) * T * 256 * 4
    assert full - small > extra_inputs, (full, small)
    assert limited <= 1.1 * small, (limited, small, full)  # rounds of 2 batches peak like a 2-batch set
