"""Layer-wise attention transfer from cached teacher inputs: one block at a time.

Joint transfer (``transfer``) keeps the whole model's activations for a batch. Here the training sequences
are pushed through the model one decoder layer at a time, in softmax mode (the teacher):

    cache layer-0 inputs for every batch
    for each layer l:
        run layer l on the cached inputs (no grad), keeping its attention module's inputs and its outputs
        train layer l's feature maps (and window logit) for ``steps`` steps on those attention inputs
        the outputs become layer l+1's cached inputs

Since every layer sees teacher inputs in both schemes, the objective per layer is the same as in joint
transfer; only the memory profile differs: besides the weights, a step holds one attention module's
activations, and the cache holds one layer's inputs for the training set. That is how an 8B model's
stage 1 fits a small GPU (weights can even stay on CPU except the current block).

Rounds (``max_cached_tokens``). The cache above grows with the training set: at the paper's 20M tokens an
8B model's cache would be ~0.5 TB (three [N, T, hidden] copies). With ``max_cached_tokens`` the batches
are split, in order, into rounds of at most that many tokens, and the scheme above runs once per round:

    for each round r (a contiguous slice of the batches):
        cache layer-0 inputs for the round's batches
        for each layer l: run it (no grad), train layer l for its share of the steps on the round's
        batches, pass the outputs on

Layer l trains ``cfg.steps`` steps in total, split over the rounds in proportion to their batches
(``round_steps``). Its AdamW state, step count and LR schedule carry over from round to round through its
per-layer checkpoint (``checkpoint_dir``, or a temporary folder), so the rounds form one continuous run
per layer: a batch is exactly what it would be without rounds, only the order changes (round r's steps
draw from round r's batches). The cached inputs are teacher (softmax-mode) activations, which the training
never changes, so recomputing them per round is exact and costs nothing extra: every sequence still goes
through every block's teacher forward once. The cache then holds one round's inputs for one layer. With
one round (the default, or a limit of at least the whole set) the code path is the original one.
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import nullcontext
from dataclasses import replace

import torch
from torch import nn

from ..models.convert import attention_modules, set_attention_mode
from .loop import LoopResult, run_training
from .transfer import TransferConfig, backbone


class _Stop(Exception):
    pass


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The blocks that contain the linearized attention modules, in order (the ModuleList entries)."""
    wrappers = attention_modules(model)
    if not wrappers:
        raise ValueError("model is not linearized; call lolcats_lab.linearize(model, ...) first")
    names = {id(m): n for n, m in model.named_modules()}
    layers = []
    for w in wrappers:
        parts = names[id(w)].split(".")
        for cut in range(len(parts) - 1, 0, -1):
            parent = model.get_submodule(".".join(parts[: cut - 1])) if cut > 1 else model
            if isinstance(parent, nn.ModuleList):
                layers.append(model.get_submodule(".".join(parts[:cut])))
                break
        else:
            raise ValueError(f"could not find the block (a ModuleList entry) holding {names[id(w)]}")
    return layers


def _first_layer_inputs(model: nn.Module, layer0: nn.Module, input_ids: torch.Tensor):
    """(args, kwargs) the model passes to its first block for ``input_ids`` (the forward stops there)."""
    captured = {}

    def hook(module, args, kwargs):
        captured["args"], captured["kwargs"] = args, kwargs
        raise _Stop

    handle = layer0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        backbone(model)(input_ids=input_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["args"], captured["kwargs"]


def _hidden_of(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def round_slices(num_batches: int, batch_size: int, seq_len: int, max_cached_tokens: int | None) -> list[range]:
    """Contiguous ranges of batch indices, each holding at most ``max_cached_tokens`` tokens (at least one
    batch per round). None: one round with every batch."""
    if max_cached_tokens is None:
        return [range(num_batches)]
    if isinstance(max_cached_tokens, bool) or not isinstance(max_cached_tokens, int) or max_cached_tokens < 1:
        raise ValueError(f"max_cached_tokens must be a positive int or None, got {max_cached_tokens!r}")
    per_round = max(1, max_cached_tokens // (batch_size * seq_len))
    return [range(i, min(i + per_round, num_batches)) for i in range(0, num_batches, per_round)]


def round_steps(steps: int, rounds: list[range]) -> list[int]:
    """Cumulative step count at the end of each round: ``steps`` split in proportion to the rounds' batches
    (the last entry is ``steps``; a round may get none when there are fewer steps than rounds)."""
    total = sum(len(r) for r in rounds)
    out, seen = [], 0
    for r in rounds:
        seen += len(r)
        out.append(math.floor(steps * seen / total + 0.5) if seen < total else steps)
    return out


def transfer_layerwise(
    model: nn.Module,
    train_ids: torch.Tensor,
    cfg: TransferConfig | None = None,
    *,
    layers: list[int] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    callback=None,
    max_cached_tokens: int | None = None,
) -> list[LoopResult]:
    """Attention transfer one layer at a time (``cfg.steps`` steps per layer) on ``train_ids`` [N, T].

    Batches are fixed slices of ``cfg.batch_size`` sequences, visited in a seeded order. ``layers``: which
    layers to train (default all; untrained layers still pass their teacher outputs on). ``callback``
    receives the loop's records with an added "layer". ``max_cached_tokens``: cache at most this many
    tokens' activations at once, training in rounds over slices of the batches (module docstring; None:
    cache the whole set). Returns one LoopResult per trained layer.
    """
    cfg = cfg or TransferConfig()
    blocks = decoder_layers(model)
    wrappers = attention_modules(model)
    todo = set(range(len(blocks)) if layers is None else layers)
    if not todo <= set(range(len(blocks))):
        raise ValueError(f"layers must be in [0, {len(blocks)}), got {sorted(todo)}")
    batches = [train_ids[i : i + cfg.batch_size] for i in range(0, train_ids.shape[0], cfg.batch_size)]
    rounds = round_slices(len(batches), cfg.batch_size, train_ids.shape[-1], max_cached_tokens)
    stops = round_steps(cfg.steps, rounds)
    was_training = model.training
    model.eval()
    set_attention_mode(model, "softmax")
    # more than one round: each layer's optimizer state carries over through its checkpoint
    temporary = len(rounds) > 1 and checkpoint_dir is None
    tmp = tempfile.TemporaryDirectory(prefix="lolcats-layerwise-") if temporary else nullcontext()
    results: dict[int, LoopResult] = {}
    try:
        with tmp as tmp_dir:
            ckpt_root = checkpoint_dir if checkpoint_dir is not None else tmp_dir
            done = 0  # steps every layer has trained so far
            for r, (batch_range, stop) in enumerate(zip(rounds, stops)):
                if stop == done:  # fewer steps than rounds: this round trains nothing
                    continue
                round_batches = [batches[i] for i in batch_range]
                one_round = len(rounds) == 1
                _run_round(model, blocks, wrappers, todo, round_batches, cfg, ckpt_root, callback, results,
                           stop_after=None if one_round else stop, resume=r > 0 and done > 0)
                done = stop
    finally:
        set_attention_mode(model, "linear")
        model.train(was_training)
    return [results[l] for l in sorted(results)]


def _run_round(model, blocks, wrappers, todo, batches, cfg, checkpoint_dir, callback, results, *, stop_after, resume):
    """One pass of the block-by-block scheme over ``batches``: each layer in ``todo`` trains until its step
    count reaches ``stop_after`` (None: ``cfg.steps``), resuming from its checkpoint when ``resume``."""
    with torch.no_grad():
        cache = [_first_layer_inputs(model, blocks[0], b) for b in batches]  # per batch: (args, kwargs)
    for l, (block, wrapper) in enumerate(zip(blocks, wrappers)):
        if not any(t >= l for t in todo):  # no layer from here on trains: stop the teacher forward
            break
        attn_inputs, next_cache = [], []

        def keep(module, args, kwargs):
            attn_inputs.append((args, kwargs))

        handle = wrapper.register_forward_pre_hook(keep, with_kwargs=True)
        try:
            with torch.no_grad():
                for args, kwargs in cache:
                    out = _hidden_of(block(*args, **kwargs))
                    nxt = ((out,) + tuple(args[1:]), kwargs) if args else ((), {**kwargs, "hidden_states": out})
                    next_cache.append(nxt)
        finally:
            handle.remove()
        cache = None  # the previous layer's inputs are no longer needed
        if l in todo:
            results[l] = _train_one(wrapper, l, attn_inputs, cfg, checkpoint_dir, callback,
                                    stop_after=stop_after, resume=resume)
        del attn_inputs
        cache = next_cache
        set_attention_mode(model, "softmax")


def _train_one(wrapper, layer: int, attn_inputs, cfg: TransferConfig, checkpoint_dir, callback, *,
               stop_after: int | None = None, resume: bool = False) -> LoopResult:
    params = {n: p for n, p in wrapper.named_parameters() if p.requires_grad}
    wrapper.mode, wrapper.capture_head = "transfer", None

    def loss_fn(rows):
        args, kwargs = attn_inputs[int(rows[0, 0])]
        wrapper(*args, **kwargs)
        mse = wrapper.transfer_mse.mean()
        return cfg.mse_scale * mse, {"mse": mse.detach().item(), "layer": layer}

    index = torch.arange(len(attn_inputs))[:, None]  # one "row" per cached batch
    layer_cfg = replace(cfg, batch_size=1, desc=f"{cfg.desc} layer {layer}")
    ckpt = None if checkpoint_dir is None else os.path.join(os.fspath(checkpoint_dir), f"layer{layer:03d}")
    return run_training(params, loss_fn, index, layer_cfg, checkpoint_dir=ckpt, callback=callback,
                        stop_after=stop_after, resume=resume)
