"""Past one GPU, on CPU: layer sharding, and two gloo processes (torchrun) against the single-process run.

Layer-wise transfer is exactly per layer (every layer's loop starts from the same seed and sees only its own
teacher inputs), so training disjoint layer blocks on two ranks must give the single-process maps. FSDP LoRA
with each rank on half the rows must give the single-process step on all rows (the mean loss over equal
token counts is the average of the ranks' means, which is what FSDP's gradient averaging computes).
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lolcats_lab.models import attention_modules, linearize
from lolcats_lab.scale import PAPER_RECIPE, build_random_model, llama3_8b_config
from lolcats_lab.scale.distributed import (
    map_parameters,
    shard_layers,
    transfer_layerwise_data_parallel,
    transfer_layerwise_sharded,
    truncated_layers,
)
from lolcats_lab.train import LoraSettings, TransferConfig, finetune_lora, transfer_layerwise

# the tiny 8B-shaped run both sides use (random weights: equality of results, not quality)
RUN = dict(layers=4, vocab=256, seq_len=48, window=8, feature_dim=16, sequences=4, batch=2, steps=3, seed=0)


@pytest.mark.parametrize("L, W, cost", [(32, 2, 0.0), (32, 2, 0.2), (32, 4, 1.0), (5, 2, 0.5), (3, 4, 0.0), (1, 1, 0.0)],
                         ids=lambda x: str(x))
def test_shard_layers_covers_in_order_and_balances(L, W, cost):
    blocks = shard_layers(L, W, cost)
    assert len(blocks) == W
    assert [l for b in blocks for l in b] == list(range(L))  # contiguous, in order, each layer once
    assert all(len(b) >= 1 for b in blocks[: min(W, L)])
    costs = [cost * b.stop + len(b) for b in blocks if len(b)]
    # no single layer moved from the most to the least loaded rank would lower the maximum
    assert max(costs) - min(costs) <= 1 + cost * L / W + 1e-9


def test_shard_layers_prefix_cost_shifts_layers_to_early_ranks():
    even, weighted = shard_layers(32, 2, 0.0), shard_layers(32, 2, 0.2)
    assert [len(b) for b in even] == [16, 16]
    assert len(weighted[0]) > len(weighted[1])
    # speedup over one device (32 layers, prefix 0.2): (32 * 1.2) / max cost
    assert (32 * 1.2) / max(0.2 * b.stop + len(b) for b in weighted) > 1.75


@pytest.mark.parametrize("args, match", [((0, 2), r"^num_layers must be a positive int, got 0"),
                                         ((4, 0), r"^world_size must be a positive int, got 0"),
                                         ((4, 2, -1.0), r"^prefix_cost must be >= 0, got -1.0")])
def test_shard_layers_rejects_bad_values(args, match):
    with pytest.raises(ValueError, match=match):
        shard_layers(*args)


def _model(dtype=torch.float32):
    cfg = llama3_8b_config(width_scale=64, num_layers=RUN["layers"], vocab_size=RUN["vocab"])
    model = build_random_model(cfg, dtype=dtype, seed=RUN["seed"])
    torch.manual_seed(RUN["seed"])
    kw = PAPER_RECIPE.linearize_kwargs()
    kw.update(window=RUN["window"], feature_dim=RUN["feature_dim"])
    return linearize(model, **kw)


def _ids():
    g = torch.Generator().manual_seed(RUN["seed"])
    return torch.randint(0, RUN["vocab"], (RUN["sequences"], RUN["seq_len"]), generator=g)


def _transfer_cfg():
    return TransferConfig(steps=RUN["steps"], lr=PAPER_RECIPE.transfer_lr, batch_size=RUN["batch"],
                          mse_scale=PAPER_RECIPE.mse_scale, seed=RUN["seed"], progress=False)


def test_truncated_layers_restores_and_limits():
    model = _model()
    full = model.model.layers
    with truncated_layers(model, 2):
        assert len(attention_modules(model)) == 2 and model.model.layers[1] is full[1]
    assert model.model.layers is full and len(attention_modules(model)) == 4
    with pytest.raises(ValueError, match=r"^num_layers must be in \[1, 4\], got 5"):
        with truncated_layers(model, 5):
            pass


@pytest.mark.slow
def test_sharded_transfer_without_process_group_is_the_plain_run():
    """One process: the sharded entry point is transfer_layerwise over all layers."""
    a, b = _model(), _model()
    hist = transfer_layerwise_sharded(a, _ids(), _transfer_cfg())
    transfer_layerwise(b, _ids(), _transfer_cfg())
    assert sorted(hist) == [0, 1, 2, 3] and all(len(h) == RUN["steps"] for h in hist.values())
    for wa, wb in zip(attention_modules(a), attention_modules(b)):
        for (na, pa), (_, pb) in zip(map_parameters(wa), map_parameters(wb)):
            assert torch.equal(pa, pb), na


def _torchrun(stage, out, extra=()):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "lolcats_lab.scale.distributed", stage, "--model", "random:llama3-8b", "--width-scale", "64",
           "--num-layers", str(RUN["layers"]), "--vocab-size", str(RUN["vocab"]), "--seq-len", str(RUN["seq_len"]),
           "--window", str(RUN["window"]), "--feature-dim", str(RUN["feature_dim"]),
           "--train-sequences", str(RUN["sequences"]), "--batch-size", str(RUN["batch"]), "--steps", str(RUN["steps"]),
           "--seed", str(RUN["seed"]), "--dtype", "float32", "--threads", "1", "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _single_threaded(fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks run one thread each: same kernels, same rounding
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_maps(tmp_path):
    """torchrun, 2 gloo processes, layers {0,1,2} / {3} (prefix cost 0.2): the saved maps equal a
    single-process transfer_layerwise (fp32 CPU, one thread each: measured bit-identical; 1e-6 allowed)."""
    _torchrun("transfer", tmp_path)
    timing = json.loads((tmp_path / "timing.json").read_text())  # what a 1-vs-N-device comparison reads
    assert timing["world_size"] == 2 and timing["seconds"] > 0
    assert timing["trained_tokens"] == RUN["layers"] * RUN["steps"] * RUN["batch"] * RUN["seq_len"]
    got = load_file(str(tmp_path / "checkpoint" / "linearized.safetensors"))
    ref = _model()
    init = {k: v.clone() for k, v in ref.state_dict().items() if k in got}
    _single_threaded(lambda: transfer_layerwise(ref, _ids(), _transfer_cfg()))
    want = ref.state_dict()
    assert len(got) == 4 * 3  # q map, k map, window logit per layer
    for name, value in got.items():
        torch.testing.assert_close(value, want[name], rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")
    changed = [n for n in got if n.endswith("q_map.weight") and not torch.equal(got[n], init[n])]
    assert len(changed) == 4  # negative control: every layer's maps trained, on whichever rank owned it


@pytest.mark.slow
def test_fsdp_lora_on_two_gloo_ranks_equals_one_process_on_all_rows(tmp_path):
    """FSDP2 over 2 gloo processes, each on half the rows: LoRA weights after 3 steps equal a single-process
    finetune_lora on all rows. fp32; the ranks' means are averaged instead of summing all rows at once, so
    the rounding differs: measured max |diff| 6.9e-7 (weights up to 0.13); allowed 5e-6 + 1e-4 relative. A
    wrong split (e.g. one rank's rows only) moves LoRA B by ~lr = 1e-4 per step, far outside that."""
    _torchrun("lora", tmp_path)
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["stage"] == "lora" and timing["world_size"] == 2
    assert timing["trained_tokens"] == 2 * RUN["steps"] * RUN["batch"] * RUN["seq_len"]
    got = load_file(str(tmp_path / "lora.safetensors"))
    ref = _model()
    torch.manual_seed(RUN["seed"])
    settings = LoraSettings(steps=RUN["steps"], lr=PAPER_RECIPE.lora_lr, rank=PAPER_RECIPE.lora_rank,
                            alpha=PAPER_RECIPE.lora_alpha, targets=list(PAPER_RECIPE.lora_targets),
                            batch_size=2 * RUN["batch"], seed=RUN["seed"], progress=False)
    _single_threaded(lambda: finetune_lora(ref, _ids(), settings))
    want = {n: p.detach() for n, p in ref.named_parameters() if p.requires_grad}
    assert sorted(got) == sorted(want) and len(want) == RUN["layers"] * 4 * 2
    # FSDP averages the gradients of 2 rows per rank where one process takes all 4 rows at once, and the
    # batched chunk matmuls round differently for different batch sizes. AdamW's first steps move every
    # weight by about lr * sign(gradient), so an element whose gradient is ~0 can step the other way: a
    # difference of up to 2 lr per step on a few elements, while the tensors agree as a whole (relative RMS
    # measured 3.2e-3 at most, far below what a wrong gradient would give)
    lr, steps = PAPER_RECIPE.lora_lr, RUN["steps"]
    for name in want:
        err = (got[name] - want[name]).norm() / want[name].norm().clamp_min(1e-12)
        assert err < 2e-2, f"{name}: relative RMS error {err:.2e}"
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=2 * lr * steps, msg=lambda m: f"{name}: {m}")
    moved = [n for n in want if "lora_B" in n and want[n].abs().max() > 0]
    assert len(moved) == RUN["layers"] * 4  # negative control: LoRA B left its zero initialisation


@pytest.mark.slow
def test_data_parallel_transfer_on_two_gloo_ranks_equals_one_process_with_the_union_batch(tmp_path):
    """--shard data: each rank trains every layer on rows rank::2 with batch 1, gradients averaged; equals
    one process with batch 2 on all rows (batch i = rows {2i, 2i+1}, the union of the ranks' batch i).
    The ranks average two one-row means where one process takes a two-row mean, so rounding differs:
    measured relative RMS 1.8e-7 per tensor at most (fp32), allowed 1e-5. Negative control: one process on
    rank 0's rows alone is 0.17 away."""
    _torchrun("transfer", tmp_path, ["--shard", "data", "--batch-size", "1"])
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["shard"] == "data" and timing["world_size"] == 2
    assert timing["trained_tokens"] == 2 * RUN["layers"] * RUN["steps"] * 1 * RUN["seq_len"]
    got = load_file(str(tmp_path / "checkpoint" / "linearized.safetensors"))

    def single(ids, batch):
        ref = _model()
        cfg = TransferConfig(steps=RUN["steps"], lr=PAPER_RECIPE.transfer_lr, batch_size=batch,
                             mse_scale=PAPER_RECIPE.mse_scale, seed=RUN["seed"], progress=False)
        _single_threaded(lambda: transfer_layerwise(ref, ids, cfg))
        return ref.state_dict()

    want, wrong = single(_ids(), 2), single(_ids()[0::2], 1)
    errs, wrong_errs = [], []
    for name, value in got.items():
        norm = want[name].norm().clamp_min(1e-12)
        errs.append(((value - want[name]).norm() / norm).item())
        wrong_errs.append(((wrong[name] - want[name]).norm() / norm).item())
    assert max(errs) < 1e-5, errs
    assert max(wrong_errs) > 10 * max(errs), wrong_errs


def test_data_parallel_transfer_needs_a_process_group():
    with pytest.raises(ValueError, match=r"^transfer_layerwise_data_parallel needs an initialised process group"):
        transfer_layerwise_data_parallel(torch.nn.Linear(2, 2), _ids(), _transfer_cfg())


def test_data_parallel_transfer_rejects_rows_that_do_not_split_into_full_batches(tmp_path):
    """A one-process gloo group: 3 rows with batch 2 cannot give every rank full batches."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match=r"^train_ids has 3 rows; data-parallel transfer needs a multiple of "
                                              r"world size x batch size = 1 x 2"):  # fmt: skip
            transfer_layerwise_data_parallel(_model(), _ids()[:3], _transfer_cfg())
    finally:
        dist.destroy_process_group()
