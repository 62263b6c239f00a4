"""Section d's decoding harness of bench_8b.py: one greedy step of a model, eager or captured in a CUDA graph.

The linearized model steps with its own constant-size cache (the Triton ring cache on CUDA). The softmax
model's KV cache is moved into a transformers ``StaticCache`` (``to_static_cache``), the form built for
capture, and stepped by ``static_decode_step``. Its attention runs either through transformers' SDPA or
``packed_gqa_sdpa``, which packs each KV head's query heads instead of repeating keys and values
(``sdpa_as`` swaps it in). ``capture_and_time`` captures one step and times replays;
``measure_graph_decode`` does both for one model and mode. Used by bench_8b.py; the CPU test
(tests/test_bench_8b.py) checks the static step and the packed SDPA against transformers.
"""

from __future__ import annotations

import contextlib
import inspect
import time
import traceback

import torch

from _common import GiB, err_str, gib, med


def cache_bytes(cache) -> int:
    """Bytes held by a cache's tensors: keys/values of softmax layers, state + window of linearized ones."""
    total = 0
    for layer in cache.layers:
        if getattr(layer, "has_state", False):
            tensors = layer.state_tensors()
        else:
            tensors = [t for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if isinstance(t, torch.Tensor)]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def linear_decode_kind(cache) -> str | None:
    """How the linearized layers of a cache decode: "triton ring" (kernels/decode.py), "torch groups", or None."""
    kinds = {("triton ring" if layer.uses_triton else "torch groups") for layer in cache.layers
             if getattr(layer, "has_state", False)}  # fmt: skip
    return ", ".join(sorted(kinds)) or None


def static_decode_step(model, cache, tok: torch.Tensor, position: int):
    """One greedy decode step that reads and writes only static tensors, for CUDA-graph capture.

    tok [B, 1]: the next input token of every row; position: its position (the same for every row: the
    prompts are unpadded). Returns (step, ids, pos): ``step()`` runs the model on ids [B, 1] at positions
    pos [B, 1], writes the greedy next token back into ids and adds 1 to pos, all on the device and in
    place, so replaying a captured ``step()`` n times continues the rollout by n tokens. ``cache_position``
    (older transformers) is passed the same way when the model's forward takes it.
    """
    ids = tok.clone()  # [B, 1]
    pos = torch.full_like(tok, position)  # [B, 1]
    extra = {}
    if "cache_position" in inspect.signature(model.forward).parameters:
        extra["cache_position"] = torch.full((1,), position, dtype=torch.long, device=tok.device)

    def step():
        logits = model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True, **extra).logits
        ids.copy_(logits[:, -1].argmax(-1, keepdim=True))  # [B, 1]
        pos.add_(1)
        for t in extra.values():
            t.add_(1)

    return step, ids, pos


def to_static_cache(model, cache, max_len: int):
    """The softmax model's DynamicCache moved into a transformers StaticCache of ``max_len`` tokens, layer by
    layer (each dynamic layer is freed once copied, so the two never coexist in full)."""
    from transformers import StaticCache

    static = StaticCache(config=model.config, max_cache_len=max_len)
    for i, layer in enumerate(cache.layers):
        k, v = layer.keys, layer.values  # [B, KVH, T, D]
        static.update(k, v, i, {"cache_position": torch.arange(k.shape[2], device=k.device)})
        layer.keys = layer.values = None
        del k, v
    return static


def cache_seq_len(cache) -> int:
    n = cache.get_seq_length()
    return int(n.item()) if isinstance(n, torch.Tensor) else int(n)


def packed_gqa_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """SDPA for ONE query token against grouped key/value heads without repeating them: the n_rep query heads
    of a group become n_rep query rows of its key/value head (what newer transformers do, ``pack_gqa``).
    Same math as transformers' sdpa; anything but a one-token step with a shared mask goes to that.

    Why: with a StaticCache the decode step has a mask, and transformers 5.17's sdpa then repeats every
    key/value head n_rep times (``repeat_kv``: at batch 8, 32k context, 4 GiB written and read per layer
    and step), which would make the softmax baseline slower than it needs to be."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    n_rep = getattr(module, "num_key_value_groups", 1)
    B, H, T, D = query.shape
    if T != 1 or n_rep == 1 or attention_mask is None or attention_mask.shape[1] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)  # fmt: skip
    q = query.reshape(B, H // n_rep, n_rep, D)  # [B, KVH, n_rep, D]
    y = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                                         scale=scaling)  # [B, KVH, n_rep, Dv]  # fmt: skip
    return y.reshape(B, H, 1, value.shape[-1]).transpose(1, 2).contiguous(), None  # [B, 1, H, Dv]


class sdpa_as:
    """Within the block, models that use "sdpa" call ``fn`` instead (transformers' local attention override)."""

    def __init__(self, fn):
        self.fn = fn

    def __enter__(self):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        ALL_ATTENTION_FUNCTIONS["sdpa"] = self.fn

    def __exit__(self, *exc):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        del ALL_ATTENTION_FUNCTIONS["sdpa"]  # back to the registered implementation


GRAPH_WARMUP = 2  # eager steps on a side stream before capture (compile Triton, set up cuBLAS; PyTorch's recipe)


def capture_and_time(ctx, step, B: int, attention=None) -> tuple[dict, int]:
    """Warm ``step`` up on a side stream, capture it in a CUDA graph, replay it ``gen_warmup`` times untimed and
    ``gen_steps`` times timed (synchronised per step, as the eager loop). attention: an "sdpa" replacement
    active during warm-up and capture. Returns (results, device steps taken)."""
    a, dev = ctx.args, ctx.device
    ctx.sync()
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), (sdpa_as(attention) if attention else contextlib.nullcontext()):
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP):
                step()
        torch.cuda.current_stream(dev).wait_stream(side)
        ctx.sync()
        t0 = time.perf_counter()
        with torch.cuda.graph(graph):
            step()
        ctx.sync()
        capture_s = time.perf_counter() - t0
    for _ in range(a.gen_warmup):
        graph.replay()
    ctx.reset_peak()
    times = []
    for _ in range(a.gen_steps):
        t0 = time.perf_counter()
        graph.replay()
        ctx.sync()
        times.append(time.perf_counter() - t0)
    peak = ctx.peak()
    del graph
    out = dict(steps=len(times), ms_per_step=round(med(times) * 1e3, 2), tokens_per_s=round(B * len(times) / sum(times), 1),
               peak_gib=gib(peak), capture_s=round(capture_s, 3), side_stream_warmup_steps=GRAPH_WARMUP,
               untimed_replays=a.gen_warmup)  # fmt: skip
    return out, GRAPH_WARMUP + a.gen_warmup + a.gen_steps


def measure_graph_decode(ctx, mode: str, cache, tok: torch.Tensor) -> dict:
    """Continue greedy decoding from (cache, tok) with one whole-model step captured in a CUDA graph.

    linear: the same cache; it must be the Triton ring cache (the PyTorch steps allocate a new cache per
    token and synchronise with the host). softmax: the KV cache moved into a StaticCache, timed twice: with
    transformers' own sdpa ("hf_sdpa"), then with :func:`packed_gqa_sdpa` ("packed_gqa", no repeated KV heads).
    """
    from lolcats_lab.models.cache import advance_seen

    a, model = ctx.args, ctx.model
    B, start = tok.shape[0], cache_seq_len(cache)
    per_run = GRAPH_WARMUP + a.gen_warmup + a.gen_steps
    if mode == "linear":
        if linear_decode_kind(cache) != "triton ring":
            raise ValueError(f"graph decoding needs the Triton ring cache; this cache decodes with {linear_decode_kind(cache)}")
        step, ids, _ = static_decode_step(model, cache, tok, start)
        out, n = capture_and_time(ctx, step, B)
        advance_seen(cache, n - GRAPH_WARMUP - 1)  # warm-up steps counted themselves; the capture counted one, ran none
        out.update(start_context=start, cache="LinearizedCacheLayer, Triton ring cache", cache_seq_length=cache_seq_len(cache),
                   cache_tensors_gib=round(cache_bytes(cache) / GiB, 4),
                   state_advanced_by_replays=all(bool((layer.ring.pos == start + n).all()) for layer in cache.layers
                                                 if getattr(layer, "has_state", False)),
                   token_ids_in_range=bool(((ids >= 0) & (ids < ctx.config.vocab_size)).all()))  # fmt: skip
        return out
    cache = to_static_cache(model, cache, max_len=start + 2 * per_run + 1)
    ctx.free()
    out = dict(start_context=start, cache="transformers StaticCache (SDPA with the static-length mask)",
               cache_tensors_gib=round(cache_bytes(cache) / GiB, 4))  # fmt: skip
    for name, attention in (("hf_sdpa", None), ("packed_gqa", packed_gqa_sdpa)):
        before, ids = cache_seq_len(cache), None  # each variant continues from the device state the last one left
        try:
            step, ids, _ = static_decode_step(model, cache, tok, before)
            res, n = capture_and_time(ctx, step, B, attention)
            res.update(state_advanced_by_replays=cache_seq_len(cache) == before + n,
                       token_ids_in_range=bool(((ids >= 0) & (ids < ctx.config.vocab_size)).all()))  # fmt: skip
            out[name] = res
        except Exception as err:  # noqa: BLE001 - record; the other variant may still run
            out[f"{name}_error"] = err_str(err)
            traceback.print_exc()
        finally:
            tok = tok if ids is None else ids.clone()  # the next input token after the steps that ran
            ctx.free()
    best = max((out[n] for n in ("hf_sdpa", "packed_gqa") if n in out), key=lambda r: r["tokens_per_s"], default=None)
    if best is None:
        raise RuntimeError("; ".join(out[k] for k in ("hf_sdpa_error", "packed_gqa_error") if k in out))
    out.update({k: best[k] for k in ("ms_per_step", "tokens_per_s", "peak_gib")})
    out["best_variant"] = "packed_gqa" if best is out.get("packed_gqa") else "hf_sdpa"
    out["cache_seq_length"] = cache_seq_len(cache)
    return out
