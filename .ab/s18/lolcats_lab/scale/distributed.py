"""Past one GPU: layer-wise attention transfer sharded by layer, and stage 2 LoRA with FSDP.

Stage 1, sharded by layer (:func:`transfer_layerwise_sharded`). Layer-wise transfer is exactly per layer:
layer l's maps see only layer l's teacher inputs, and every layer's loop starts from the same seed. So
ranks can train disjoint sets of layers and the result is the single-process result, layer for layer.

* Each rank owns a contiguous block of layers (:func:`shard_layers`) and **recomputes the teacher prefix**
  (no-grad softmax forward through the layers before its block) instead of receiving activations from
  another rank. Why: no activation traffic (a layer's cached inputs for the paper's 20M tokens are ~160 GiB
  in bf16), no pipeline schedule, every rank independent until the final parameter broadcast, and a rank
  only ever needs the weights of layers up to the end of its block. Cost: rank r runs ``end_r`` no-grad
  block forwards over the data. ``shard_layers(prefix_cost=...)`` gives later ranks fewer layers to train
  so that ``prefix_cost * end_r + len(block_r)`` (in units of one layer's training) is balanced.
  The speedup over one device is ``(L * prefix_cost + L) / max_r cost_r``: with 32 layers on 2 ranks,
  1.79x at prefix_cost = 0.2 and 1.49x at 1.0 (a teacher forward as costly as training a layer), so the
  issue's 1.8x needs prefix_cost <= ~0.19, i.e. several transfer steps per cached forward. Not measured on
  a multi-GPU machine (none was lent).
* At the end every layer's maps and window logits are broadcast from the rank that trained them, so all
  ranks hold the full trained model; loss histories are gathered with ``all_gather_object``.

Stage 1, data parallel (:func:`transfer_layerwise_data_parallel`, ``--shard data``): every rank trains
every layer on its own rows ``train_ids[rank::world]``, filling its own teacher cache (1/world of the
teacher forwards, none repeated), and the map gradients are averaged over the ranks after each backward
(one all-reduce per parameter, a few MB per layer). The result is one process's run with batch
``world x batch_size`` on all rows, up to rounding. It scales throughput where layer sharding cannot: on
2 H200s, 32 layers, data parallelism gave 2.08x one GPU's trained tokens/s and layer sharding 1.52-1.66x
(two runs), each rank recomputing the teacher prefix before its block.

Stage 2 with FSDP (:func:`finetune_lora_fsdp`): LoRA is injected first, then each decoder layer and the
root are sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``); frozen base weights are sharded too,
so each rank holds ~1/world of the weights. Ranks take disjoint slices of the training rows and FSDP
averages the gradients, so with equal token counts per rank a step equals a single-process step on the
union of the ranks' batches.

Both stages write ``timing.json`` (rank 0): the stage's wall time between barriers and the tokens trained,
so a run on N devices compares with the same command on one (``benchmarks/gpu_session.sh dist``).

Entry point (one process per GPU; ``gloo`` on CPU)::

    torchrun --nproc-per-node 2 -m lolcats_lab.scale.distributed transfer --model DIR --out runs/8b ...
    torchrun --nproc-per-node 2 -m lolcats_lab.scale.distributed lora --model DIR --checkpoint runs/8b/checkpoint ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..models.convert import attention_modules, set_attention_mode
from ..train.layerwise import decoder_layers, transfer_layerwise
from ..train.loop import LoopResult

__all__ = [
    "shard_layers", "truncated_layers", "transfer_layerwise_sharded", "transfer_layerwise_data_parallel",
    "finetune_lora_fsdp", "full_trainable_state",
    "map_parameters",
]


def shard_layers(num_layers: int, world_size: int, prefix_cost: float = 0.0) -> list[range]:
    """Contiguous blocks of layers, one per rank, balancing ``prefix_cost * end + len(block)``.

    Args:
        num_layers: L.
        world_size: number of ranks; each gets at least one layer when L >= world_size (else some get none).
        prefix_cost: cost of one layer's no-grad teacher forward relative to training one layer
            (0: plain equal split).

    Returns:
        ``world_size`` ranges covering ``range(num_layers)`` in order.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not prefix_cost >= 0:
        raise ValueError(f"prefix_cost must be >= 0, got {prefix_cost!r}")

    def blocks_for(limit: float) -> list[range] | None:
        """Greedy contiguous blocks with cost <= limit each; None if they cannot cover all layers."""
        out, start = [], 0
        for r in range(world_size):
            keep_for_later = min(world_size - r - 1, num_layers - start - 1)  # later ranks get a layer each
            end = start
            while end < num_layers - max(keep_for_later, 0) and prefix_cost * (end + 1) + (end + 1 - start) <= limit:
                end += 1
            out.append(range(start, end))
            start = end
        return out if start == num_layers else None

    lo, hi = 0.0, prefix_cost * num_layers + num_layers
    best = blocks_for(hi)
    for _ in range(60):  # bisect the smallest feasible maximum cost
        mid = (lo + hi) / 2
        found = blocks_for(mid)
        if found is None:
            lo = mid
        else:
            hi, best = mid, found
    assert best is not None and sum(len(b) for b in best) == num_layers
    return best


def _layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent, attribute, ModuleList) holding the decoder blocks."""
    first = decoder_layers(model)[0]
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and module[0] is first:
            parent_name, _, attr = name.rpartition(".")
            return (model.get_submodule(parent_name) if parent_name else model), attr, module
    raise ValueError("could not find the ModuleList that holds the decoder blocks")


@contextlib.contextmanager
def truncated_layers(model: nn.Module, num_layers: int):
    """Within the block, the model has only its first ``num_layers`` decoder blocks (the same module objects),
    so whole-model helpers (``transfer_layerwise``, ``attention_modules``) stop there. Restored on exit."""
    parent, attr, full = _layer_list(model)
    if not 1 <= num_layers <= len(full):
        raise ValueError(f"num_layers must be in [1, {len(full)}], got {num_layers}")
    setattr(parent, attr, nn.ModuleList(list(full)[:num_layers]))
    try:
        yield model
    finally:
        setattr(parent, attr, full)


def map_parameters(wrapper: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """A linearized attention module's own parameters (feature maps, window logit), by name, sorted."""
    return sorted((n, p) for n, p in wrapper.named_parameters() if not n.startswith("base_attn."))


def _rank_world(group) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def transfer_layerwise_sharded(
    model: nn.Module,
    train_ids: torch.Tensor,
    cfg=None,
    *,
    prefix_cost: float = 0.2,
    group=None,
    checkpoint_dir: str | os.PathLike | None = None,
    callback=None,
) -> dict[int, list[dict]]:
    """Layer-wise attention transfer with the layers split over the ranks of ``group`` (see module docstring).

    Call it on every rank with the same model (same weights and maps), the same ``train_ids`` [N, T] and the
    same ``cfg`` (a :class:`~lolcats_lab.train.TransferConfig`). Without an initialised process group it is
    plain ``transfer_layerwise`` on one process.

    Args:
        prefix_cost: relative cost of a no-grad teacher block forward (balances :func:`shard_layers`).
        checkpoint_dir: per-layer checkpoints (``layerNNN/``) as in ``transfer_layerwise``; ranks write
            disjoint layers, so a shared directory is fine.

    Returns:
        {layer: loss history (the loop's records)} for every layer, on every rank; the model's maps are
        identical on all ranks and it is left in "linear" mode.
    """
    rank, world = _rank_world(group)
    blocks = decoder_layers(model)
    shards = shard_layers(len(blocks), world, prefix_cost)
    mine = shards[rank]
    results: list[LoopResult] = []
    if len(mine):
        with truncated_layers(model, mine.stop):
            results = transfer_layerwise(model, train_ids, cfg, layers=list(mine), checkpoint_dir=checkpoint_dir,
                                         callback=callback)
    histories = {l: r.history for l, r in zip(mine, results)}
    if world > 1:
        wrappers = attention_modules(model)
        for r, block in enumerate(shards):
            for l in block:
                for _, p in map_parameters(wrappers[l]):
                    dist.broadcast(p.data, src=dist.get_global_rank(group, r) if group is not None else r, group=group)
        gathered: list = [None] * world
        dist.all_gather_object(gathered, histories, group=group)
        histories = {l: h for part in gathered for l, h in part.items()}
    set_attention_mode(model, "linear")
    return dict(sorted(histories.items()))


def transfer_layerwise_data_parallel(
    model: nn.Module, train_ids: torch.Tensor, cfg=None, *, group=None, callback=None
) -> dict[int, list[dict]]:
    """Layer-wise attention transfer, data parallel (module docstring): rank r trains every layer on rows
    ``train_ids[r::world]``, gradients of the maps and window logits averaged across ranks.

    Call it on every rank with the same model and the same ``train_ids`` [N, T], N a multiple of
    ``world * cfg.batch_size`` (every rank gets the same number of full batches, so the ranks step in
    lockstep and the average of their mean losses is the mean over all their rows). Equals
    ``transfer_layerwise(model, train_ids, cfg with batch_size world * cfg.batch_size)`` up to rounding.

    Returns: {layer: this rank's loss history} (losses over its own rows); the model's maps are identical on
    every rank and it is left in "linear" mode.
    """
    from ..train import TransferConfig

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("transfer_layerwise_data_parallel needs an initialised process group; launch with torchrun "
                         "(or use lolcats_lab.train.transfer_layerwise on one device)")
    cfg = cfg or TransferConfig()
    rank, world = _rank_world(group)
    if train_ids.shape[0] % (world * cfg.batch_size):
        raise ValueError(f"train_ids has {train_ids.shape[0]} rows; data-parallel transfer needs a multiple of "
                         f"world size x batch size = {world} x {cfg.batch_size} so every rank trains full batches")

    def average(p: torch.Tensor) -> None:  # after the gradient is accumulated, before clipping and the step
        dist.all_reduce(p.grad, group=group)
        p.grad.div_(world)

    params = [p for w in attention_modules(model) for _, p in map_parameters(w) if p.requires_grad]
    handles = [p.register_post_accumulate_grad_hook(average) for p in params]
    try:
        results = transfer_layerwise(model, train_ids[rank::world], cfg, callback=callback)
    finally:
        for h in handles:
            h.remove()
    return {l: r.history for l, r in enumerate(results)}


def finetune_lora_fsdp(model: nn.Module, train_ids: torch.Tensor, settings=None, *, grad_checkpointing: bool = False,
                       group=None, callback=None) -> LoopResult:
    """Stage 2 with FSDP2: LoRA on every rank's slice ``train_ids[rank::world]`` of the rows, gradients averaged.

    Call it on every rank with the same linearized model and the same ``train_ids`` [N, T] (N a multiple of
    the world size, so every rank scores the same number of tokens). The model is sharded in place (its
    parameters become DTensors); read the trained adapters with :func:`full_trainable_state`. Checkpoints
    of the loop are not written (they would hold shards); save the gathered state instead.
    """
    from torch.distributed.fsdp import fully_shard

    from ..train.lora import LoraSettings, add_lora, lm_loss
    from ..train.loop import run_training
    from .memory import enable_gradient_checkpointing

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("finetune_lora_fsdp needs an initialised process group; launch with torchrun "
                         "(or use lolcats_lab.train.finetune_lora on one device)")
    rank, world = _rank_world(group)
    if train_ids.shape[0] % world:
        raise ValueError(f"train_ids has {train_ids.shape[0]} rows; use a multiple of the world size {world} so every "
                         "rank scores the same number of tokens")
    settings = settings or LoraSettings()
    if not any("lora_" in n for n, _ in model.named_parameters()):
        add_lora(model, settings)
    if grad_checkpointing:
        enable_gradient_checkpointing(model)
    mesh = None
    if group is not None:
        from torch.distributed.device_mesh import DeviceMesh

        mesh = DeviceMesh.from_group(group, "cuda" if train_ids.is_cuda else "cpu")
    for block in decoder_layers(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    set_attention_mode(model, "linear")
    model.train()
    try:
        return run_training(params, lambda batch: lm_loss(model, batch), train_ids[rank::world], settings,
                            callback=callback)
    finally:
        model.eval()


def full_trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> full (unsharded, CPU) tensor of every trainable parameter; collective under FSDP (call on all ranks)."""
    out = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            t = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[n] = t.detach().cpu().clone()
    return out


# --------------------------------------------------------------------------------------------------
# torchrun -m lolcats_lab.scale.distributed


def _config(args):
    """The model's config without loading weights (None for the small embedded defaults)."""
    from transformers import AutoConfig

    from .presets import MODEL_SHAPES, model_config

    if args.model.startswith("random:"):
        shape = args.model.split(":", 1)[1]
        if shape not in MODEL_SHAPES:
            raise ValueError(f"--model random:NAME needs one of {sorted(MODEL_SHAPES)}, got {shape!r}")
        return model_config(shape, width_scale=args.width_scale, num_layers=args.num_layers, vocab_size=args.vocab_size)
    from ..models import EMBEDDED_MODELS

    if args.model in EMBEDDED_MODELS:  # small; its config is only known once loaded
        return None
    return AutoConfig.from_pretrained(args.model)


def _build_model(args, device, checkpoint: str | None = None):
    """(model, tokenizer): the base model (random weights and no tokenizer for ``random:NAME``), linearized
    with the paper's recipe, or loaded with the maps of a transfer ``checkpoint``."""
    from ..models import linearize, load_linearized, load_model
    from .presets import PAPER_RECIPE, build_random_model

    tok = None
    if args.model.startswith("random:"):
        base = build_random_model(_config(args), dtype=getattr(torch, args.dtype), seed=args.seed, device=device)
    else:
        base, tok = load_model(args.model, dtype=args.dtype, device=device)
    if checkpoint is not None:
        return load_linearized(checkpoint, base), tok
    torch.manual_seed(args.seed)
    kw = PAPER_RECIPE.linearize_kwargs()
    kw.update(window=args.window or kw["window"], feature_dim=args.feature_dim or kw["feature_dim"])
    return linearize(base, **kw), tok


def _data(args, model, tok, device) -> torch.Tensor:
    """[N, T] training token ids, identical on every rank."""
    if args.data == "random":  # for random-weight models: shapes and speed only
        g = torch.Generator().manual_seed(args.seed)
        return torch.randint(0, model.config.vocab_size, (args.train_sequences, args.seq_len), generator=g).to(device)
    if tok is None:
        raise ValueError(f"--data {args.data!r} needs a tokenizer next to the model; use --data random for random models")
    from ..data import prepare_data

    data = prepare_data(args.data, tok, args.seq_len, train_sequences=args.train_sequences, val_sequences=1, progress=False)
    return data.train.to(device)


class _StageClock:
    """Wall time of a stage across ranks: every rank starts after a barrier, and the time stops once the
    slowest rank is done (device work finished, then a barrier)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._sync()
        dist.barrier()
        self.t0 = time.perf_counter()

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def stop(self) -> float:
        self._sync()
        dist.barrier()
        return time.perf_counter() - self.t0


def _write_timing(out: Path, args, world: int, seconds: float, *, trained_tokens: int, data_tokens: int) -> None:
    """out/timing.json (rank 0): the stage's wall time, so a run on N devices can be compared with one on 1.
    trained_tokens: tokens through the trained part (transfer: layers x steps x batch x seq, times the ranks
    when data parallel; lora: steps x batch x seq per rank x ranks)."""
    from ..io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    record = dict(stage=args.stage, world_size=world, device=device, model=args.model, seconds=round(seconds, 3),
                  trained_tokens=trained_tokens, trained_tokens_per_s=round(trained_tokens / seconds, 1),
                  data_tokens=data_tokens, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                  prefix_cost=args.prefix_cost if args.stage == "transfer" and args.shard == "layers" else None,
                  shard=args.shard if args.stage == "transfer" else "fsdp")  # fmt: skip
    atomic_write_text(out / "timing.json", json.dumps(record, indent=1))


def main(argv: list[str] | None = None) -> int:
    from .presets import PAPER_RECIPE

    p = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m lolcats_lab.scale.distributed")
    p.add_argument("stage", choices=["transfer", "lora"])
    p.add_argument("--model", required=True, help="local dir, hub id, or random:llama3-8b / random:mistral-7b / random:qwen2-7b")
    p.add_argument("--out", required=True, help="rank 0 writes checkpoint/ (maps, and LoRA after 'lora') and history.json")
    p.add_argument("--checkpoint", default=None, help="lora: a transfer checkpoint to start from")
    p.add_argument("--data", default="random", help="'random' token ids (random models) or a prepare_data source")
    p.add_argument("--seq-len", type=int, default=PAPER_RECIPE.seq_len)
    p.add_argument("--train-sequences", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--feature-dim", type=int, default=None)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--prefix-cost", type=float, default=0.2)
    p.add_argument("--shard", choices=["layers", "data"], default="layers",
                   help="transfer: split the layers over the ranks (exact single-process maps) or the rows (data "
                        "parallel: every rank trains every layer on its rows, gradients averaged; batch per rank)")
    p.add_argument("--width-scale", type=int, default=1, help="random models: divide hidden/MLP width")
    p.add_argument("--num-layers", type=int, default=None, help="random models: override the layer count")
    p.add_argument("--vocab-size", type=int, default=None, help="random models: override the vocabulary")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads per rank (gloo runs)")
    p.add_argument("--no-memory-check", action="store_true", help="start even if the memory estimate does not fit")
    args = p.parse_args(argv)

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
        if args.threads:
            torch.set_num_threads(args.threads)
    try:
        from ..models import save_linearized
        from ..train import LoraSettings, TransferConfig
        from .memory import RunShape, estimate_memory, require_fit

        config = _config(args)
        if args.stage == "transfer":  # every rank holds the whole model and one layer's cache at a time
            run = RunShape("transfer", batch_size=args.batch_size, seq_len=args.seq_len, dtype=args.dtype, layerwise=True,
                           train_sequences=args.train_sequences, feature_dim=args.feature_dim or PAPER_RECIPE.feature_dim)
        else:  # before sharding, each rank materialises the whole model: the single-device figure bounds it
            run = RunShape("lora", batch_size=args.batch_size, seq_len=args.seq_len, dtype=args.dtype,
                           grad_checkpointing=args.grad_checkpointing,
                           feature_dim=args.feature_dim or PAPER_RECIPE.feature_dim)
        if config is not None:
            if rank == 0:
                print(estimate_memory(config, run, model=args.model).table(), flush=True)
            if not args.no_memory_check:
                require_fit(config, run, device=device, model=args.model)
        model, tok = _build_model(args, device, args.checkpoint if args.stage == "lora" else None)
        ids = _data(args, model, tok, device)
        out = Path(args.out)
        clock = _StageClock(device)
        if args.stage == "transfer":
            cfg = TransferConfig(steps=args.steps, lr=args.lr or PAPER_RECIPE.transfer_lr, batch_size=args.batch_size,
                                 mse_scale=PAPER_RECIPE.mse_scale, seed=args.seed, progress=rank == 0)
            if args.shard == "data":
                histories = transfer_layerwise_data_parallel(model, ids, cfg)
            else:
                histories = transfer_layerwise_sharded(model, ids, cfg, prefix_cost=args.prefix_cost)
            seconds = clock.stop()
            if rank == 0:
                n_layers = len(decoder_layers(model))
                ranks_training = world if args.shard == "data" else 1  # layer sharding: each layer on one rank
                _write_timing(out, args, world, seconds, data_tokens=ids.numel(),
                              trained_tokens=ranks_training * n_layers * args.steps * args.batch_size * args.seq_len)
                save_linearized(model, out / "checkpoint")
                (out / "history.json").write_text(json.dumps({str(l): h for l, h in histories.items()}))
        else:
            settings = LoraSettings(steps=args.steps, lr=args.lr or PAPER_RECIPE.lora_lr, rank=PAPER_RECIPE.lora_rank,
                                    alpha=PAPER_RECIPE.lora_alpha, targets=list(PAPER_RECIPE.lora_targets),
                                    batch_size=args.batch_size, seed=args.seed, progress=rank == 0)
            torch.manual_seed(args.seed)  # identical LoRA initialisation on every rank
            result = finetune_lora_fsdp(model, ids, settings, grad_checkpointing=args.grad_checkpointing)
            seconds = clock.stop()
            if rank == 0:
                _write_timing(out, args, world, seconds, trained_tokens=world * args.steps * args.batch_size * args.seq_len,
                              data_tokens=ids.numel())  # fmt: skip
            state = full_trainable_state(model)
            if rank == 0:
                from safetensors.torch import save_file

                out.mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in state.items()}, str(out / "lora.safetensors"))
                (out / "history.json").write_text(json.dumps(result.history))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
