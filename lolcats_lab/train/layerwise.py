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
"""

from __future__ import annotations

import os
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


def transfer_layerwise(
    model: nn.Module,
    train_ids: torch.Tensor,
    cfg: TransferConfig | None = None,
    *,
    layers: list[int] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    callback=None,
) -> list[LoopResult]:
    """Attention transfer one layer at a time (``cfg.steps`` steps per layer) on ``train_ids`` [N, T].

    Batches are fixed slices of ``cfg.batch_size`` sequences, visited in a seeded order. ``layers``: which
    layers to train (default all; untrained layers still pass their teacher outputs on). ``callback``
    receives the loop's records with an added "layer". Returns one LoopResult per trained layer.
    """
    cfg = cfg or TransferConfig()
    blocks = decoder_layers(model)
    wrappers = attention_modules(model)
    todo = set(range(len(blocks)) if layers is None else layers)
    if not todo <= set(range(len(blocks))):
        raise ValueError(f"layers must be in [0, {len(blocks)}), got {sorted(todo)}")
    was_training = model.training
    model.eval()
    set_attention_mode(model, "softmax")
    batches = [train_ids[i : i + cfg.batch_size] for i in range(0, train_ids.shape[0], cfg.batch_size)]
    with torch.no_grad():
        cache = [_first_layer_inputs(model, blocks[0], b) for b in batches]  # per batch: (args, kwargs)
    results = []
    try:
        for l, (block, wrapper) in enumerate(zip(blocks, wrappers)):
            attn_inputs, next_cache = [], []

            def keep(module, args, kwargs):
                attn_inputs.append((args, kwargs))

            handle = wrapper.register_forward_pre_hook(keep, with_kwargs=True)
            try:
                with torch.no_grad():
                    for args, kwargs in cache:
                        out = _hidden_of(block(*args, **kwargs))
                        next_cache.append(((out,) + tuple(args[1:]), kwargs) if args else ((), {**kwargs, "hidden_states": out}))
            finally:
                handle.remove()
            if l in todo:
                results.append(_train_one(wrapper, l, attn_inputs, cfg, checkpoint_dir, callback))
            cache = next_cache
            set_attention_mode(model, "softmax")
    finally:
        set_attention_mode(model, "linear")
        model.train(was_training)
    return results


def _train_one(wrapper, layer: int, attn_inputs, cfg: TransferConfig, checkpoint_dir, callback) -> LoopResult:
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
    return run_training(params, loss_fn, index, layer_cfg, checkpoint_dir=ckpt, callback=callback)
