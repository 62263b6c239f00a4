"""Generation with the Triton ring-buffer cache (kernels/decode.py wired into LinearizedCacheLayer) equals the
full forward pass (SPEC.md "Decoding must equal training").

The tiny random Llama (GQA 4/2, window 4, Hedgehog f=8) is linearized with the PyTorch forward (impl="auto"
is "chunk" on CPU) and ``decode_impl="triton"``, so on this CPU machine the decode kernel runs in Triton's
interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU). Covered: tk and sw windows, pure
linear (window 0), sinks, and a left-padded batch whose rows hold different numbers of real tokens (one
cache, per-row positions in device memory, no row groups). Tolerance: the fp32 table.
The GPU tests (bf16, "auto" picking Triton, a captured CUDA graph) run on the GPU machine with -m gpu.
"""

import pytest
import torch
from models_testlib import VOCAB, outputs, perturb_feature_maps, save_tiny
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache

from lolcats_lab.models import attention_modules, linearize, load_model
from lolcats_lab.models.cache import LinearizedCacheLayer, advance_seen
from tests.helpers import ci_subset
from tests.tolerances import TOLERANCES, check_close

FP32 = TOLERANCES[torch.float32]
TK, SW, LIN = dict(attention="hybrid-tk"), dict(attention="hybrid-sw"), dict(attention="linear")
TK_SINK, SW_SINK, LIN_SINK = dict(TK, sink_tokens=2), dict(SW, sink_tokens=1), dict(LIN, sink_tokens=1)
SLOW = pytest.mark.slow  # each case runs ~20 decode-kernel launches in the interpreter (12-25 s on 2 cores)
# under LOLCATS_CI=1 the first four / two cases (tk, sw, window 0 and sinks between them), all of them without it
CASES = ci_subset([
    pytest.param(TK, id="tk"),
    pytest.param(SW, id="sw"),
    pytest.param(LIN, id="linear"),
    pytest.param(TK_SINK, id="tk-sink2"),
    pytest.param(SW_SINK, id="sw-sink1", marks=SLOW),
    pytest.param(LIN_SINK, id="linear-sink1", marks=SLOW),
], keep=range(4))  # fmt: skip
PADDED_CASES = ci_subset([
    pytest.param(TK, id="tk"),
    pytest.param(SW_SINK, id="sw-sink1"),
    pytest.param(TK_SINK, id="tk-sink2", marks=SLOW),
    pytest.param(LIN, id="linear", marks=SLOW),
], keep=range(2))  # fmt: skip


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("triton-decode") / "llama")


def _model(llama_dir, decode_impl="triton", device="cpu", dtype=torch.float32, attn="eager", **kw):
    model, _ = load_model(llama_dir, dtype=dtype, device=device, attn_implementation=attn)
    linearize(model, window=4, feature_dim=8, **kw)
    perturb_feature_maps(model)
    for m in attention_modules(model):
        m.decode_impl = decode_impl
    return model


def _layers(cache) -> list[LinearizedCacheLayer]:
    return [layer for layer in cache.layers if isinstance(layer, LinearizedCacheLayer)]


def _padded_batch(lengths, T, seed=3):
    """input_ids [B, T] with row b left-padded to hold lengths[b] real tokens; attention_mask [B, T]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, T - n :] = 1
        ids[b, : T - n] = 0
    return ids, mask


def _generate(model, ids, mask=None, new=10):
    cache = DynamicCache(config=model.config)
    out = model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, max_new_tokens=new,
                         do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)  # fmt: skip
    return out.sequences, torch.stack(out.logits, 1).float(), cache  # logits [B, new, V]


@pytest.mark.parametrize("kw", CASES)
def test_triton_generate_equals_full_forward(llama_dir, kw):
    """Greedy generate with the ring cache: every step's logits equal a full forward pass over the
    generated sequence (so prefill + Triton steps reproduce the training-time attention)."""
    model = _model(llama_dir, **kw)
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    seq, logits, cache = _generate(model, ids, new=11)  # 10 decode steps: tk blocks of 4 turn over
    assert all(layer.uses_triton and layer.groups is None for layer in _layers(cache)) and _layers(cache)
    full = outputs(model, seq[:, :-1])[:, 5:]  # [2, 11, V]
    check_close(f"{kw}", full, logits, **FP32)
    assert [layer.ring.pos.tolist() for layer in _layers(cache)] == [[6 + 10] * 2] * 2


def test_triton_and_torch_decoding_agree_and_wrong_positions_show(llama_dir):
    """The two decode implementations give the same logits; shifting the ring's positions by 2 (tk blocks
    misaligned) changes them (negative control: these comparisons can fail)."""
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    runs = [_generate(_model(llama_dir, decode_impl=d, **TK), ids, new=7)[1] for d in ("triton", "torch")]
    check_close("triton vs torch decode", runs[1], runs[0], **FP32)
    model = _model(llama_dir, **TK)
    steps = []
    for shift in (0, 2):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            tok = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)  # [2, 1]
        for layer in _layers(cache):
            layer.ring.pos = layer.ring.pos + shift
        steps.append(_decode_steps(model, cache, tok, torch.full((2, 1), 6), steps=6))
    check_close("static-buffer steps vs generate", runs[0][:, 1:], steps[0], **FP32)
    assert (steps[0] - steps[1]).abs().max().item() > 1e-4


@pytest.mark.parametrize("kw", PADDED_CASES)
def test_left_padded_rows_of_different_lengths(llama_dir, kw):
    """Rows with 9, 6, 3 and 1 real tokens (left padding) share one ring cache with per-row positions
    (no row groups): each row's logits equal those of its unpadded sequence alone."""
    model = _model(llama_dir, **kw)
    lengths, T, new = [9, 6, 3, 1], 9, 8
    ids, mask = _padded_batch(lengths, T)
    seq, logits, cache = _generate(model, ids, mask, new=new)
    layers = _layers(cache)
    assert layers and all(layer.ring is not None and layer.groups is None for layer in layers)
    assert [layer.ring.pos.tolist() for layer in layers] == [[n + new - 1 for n in lengths]] * len(layers)
    assert all(layer.get_seq_length() == T + new - 1 for layer in layers)
    for b, n in enumerate(lengths):
        alone = outputs(model, seq[b : b + 1, T - n : -1])[:, n - 1 :]  # [1, new, V]
        check_close(f"{kw} row {b} (n={n})", alone, logits[b : b + 1], **FP32)


def _decode_steps(model, cache, tok, pos, steps, freeze_seen=False):
    """Greedy steps through ``cache`` from token tok [B, 1] at positions pos [B, 1]; the static-buffer way a
    CUDA-graph harness runs them (ids and positions updated in place). freeze_seen: put every layer's
    host-side length back before each step, as a graph replay would leave it."""
    seen = [layer.seen for layer in _layers(cache)]
    ids, pos, logits = tok.clone(), pos.clone(), []
    with torch.no_grad():
        for _ in range(steps):
            if freeze_seen:
                for layer, s in zip(_layers(cache), seen):
                    layer.seen = s
            out = model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True).logits  # [B, 1, V]
            ids.copy_(out[:, -1].argmax(-1, keepdim=True))
            pos.add_(1)
            logits.append(out[:, -1].float())
    if freeze_seen:
        for layer, s in zip(_layers(cache), seen):
            layer.seen = s
    return torch.stack(logits, 1)  # [B, steps, V]


def test_step_reads_no_changing_host_state(llama_dir):
    """A linear-mode step depends only on device tensors (the ring's positions, S, z, window) and the
    static inputs: with each layer's host-side ``seen`` frozen at its prefill value (what a replayed CUDA
    graph leaves), the logits equal the normal steps'. advance_seen then restores the reported length."""
    model = _model(llama_dir, **SW_SINK)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(4))
    runs, caches = [], []
    for freeze in (False, True):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            first = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)  # [2, 1]
        pos = torch.full((2, 1), 7)
        runs.append(_decode_steps(model, cache, first, pos, steps=6, freeze_seen=freeze))
        caches.append(cache)
    check_close("frozen seen", runs[0], runs[1], **FP32)
    assert caches[1].get_seq_length() == 7
    advance_seen(caches[1], 6)
    assert caches[1].get_seq_length() == caches[0].get_seq_length() == 13
    with pytest.raises(ValueError, match=r"^steps must be an int >= 0"):
        advance_seen(caches[1], -1)


# ops that make the host wait for the device (they read a tensor's values): fatal inside CUDA-graph capture
HOST_SYNC_OPS = {"_local_scalar_dense", "is_nonzero", "item", "equal", "nonzero", "unique", "_unique2", "unique_dim",
                 "unique_consecutive", "masked_select", "repeat_interleave"}  # fmt: skip


class _OpLog(TorchDispatchMode):
    """Records the name of every aten op dispatched inside the block."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_triton_step_dispatches_no_host_sync(llama_dir):
    """A whole-model decode step with the ring cache runs no op that reads a tensor's value on the host
    (.item(), bool(), nonzero, unique, ...), so capturing it in a CUDA graph cannot fail on one; the
    PyTorch steps do run such ops (negative control: the probe sees them). SDPA attention, as in
    benchmarks/bench_8b.py (with eager attention Hugging Face passes a 4D mask every step, which the layer
    checks on the host, except while a CUDA graph is being captured)."""
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(9))
    found = {}
    for impl in ("triton", "torch"):
        model = _model(llama_dir, decode_impl=impl, attn="sdpa", **TK_SINK)
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            tok = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)  # [2, 1]
            with _OpLog() as log:
                model(input_ids=tok, position_ids=torch.full((2, 1), 9), past_key_values=cache, use_cache=True)
        found[impl] = HOST_SYNC_OPS & log.names
    assert found["triton"] == set() and found["torch"], found


def test_ring_memory_is_constant_and_updated_in_place(llama_dir):
    """Steps neither allocate nor grow the cache: the same tensors (storage and size) before and after 10
    steps, past two tk block turnovers; and the state is the same size for prompts of 5 and 9 tokens."""
    model = _model(llama_dir, **TK_SINK)
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(5))
    numels, caches = [], []
    for T in (5, 9):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            tok = model(input_ids=ids[:, :T], past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        numels.append(sum(layer.state_numel() for layer in _layers(cache)))
    before = [[(t.data_ptr(), t.shape) for t in layer.state_tensors()] for layer in _layers(cache)]
    _decode_steps(model, cache, tok, torch.full((2, 1), 9), steps=10)
    after = [[(t.data_ptr(), t.shape) for t in layer.state_tensors()] for layer in _layers(cache)]
    assert before == after and len(before) == 2
    assert numels[0] == numels[1] == sum(layer.state_numel() for layer in _layers(cache)) > 0


def test_decode_impl_errors(llama_dir, monkeypatch):
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(6))
    model = _model(llama_dir, decode_impl="cuda")
    with pytest.raises(ValueError, match=r"^decode_impl must be one of \('auto', 'torch', 'triton'\), got 'cuda'"):
        model(input_ids=ids, past_key_values=DynamicCache(config=model.config), use_cache=True)
    model = _model(llama_dir)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # a CPU tensor without the interpreter
    with pytest.raises(ValueError, match=r"^q is on cpu; the Triton kernels need CUDA tensors"):
        model(input_ids=ids, past_key_values=DynamicCache(config=model.config), use_cache=True)
    monkeypatch.undo()
    auto = _model(llama_dir, decode_impl="auto")  # CPU fp32: the PyTorch steps
    cache = DynamicCache(config=auto.config)
    with torch.no_grad():
        auto(input_ids=ids, past_key_values=cache, use_cache=True)
    assert not any(layer.uses_triton for layer in _layers(cache)) and _layers(cache)[0].groups


# ----------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("kw", [TK, SW_SINK], ids=["tk", "sw-sink1"])
def test_gpu_auto_bf16_generate_uses_ring_and_matches_forward(llama_dir, kw):
    """bf16 on CUDA, impl and decode_impl "auto": the Triton prefill and the Triton ring cache; logits of
    generate equal the full forward within 10x the bf16 ratio (whole model, errors compound)."""
    model = _model(llama_dir, decode_impl="auto", device="cuda", dtype=torch.bfloat16, **kw)
    ids = torch.randint(3, VOCAB, (3, 40), generator=torch.Generator().manual_seed(7)).cuda()
    seq, logits, cache = _generate(model, ids, new=30)
    assert all(layer.uses_triton for layer in _layers(cache))
    tol = dict(TOLERANCES[torch.bfloat16])
    tol["ratio"] *= 10
    check_close(f"{kw}", outputs(model, seq[:, :-1])[:, 39:], logits, **tol)


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_equals_eager_steps(llama_dir):
    """One greedy step of the whole model captured in a CUDA graph (static ids / positions updated in
    place, warm-up on a side stream) and replayed: the same tokens and logits as eager steps."""
    model = _model(llama_dir, decode_impl="auto", device="cuda", dtype=torch.bfloat16, attn="sdpa")
    ids = torch.randint(3, VOCAB, (2, 37), generator=torch.Generator().manual_seed(8)).cuda()
    steps, warm = 12, 2
    caches, firsts = [], []
    for _ in range(2):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            firsts.append(model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1))
        caches.append(cache)
    eager = _decode_steps(model, caches[0], firsts[0], torch.full((2, 1), 37, device="cuda"), steps=warm + steps)
    s_ids, s_pos = firsts[1].clone(), torch.full((2, 1), 37, device="cuda")
    s_logits = torch.empty(2, model.config.vocab_size, device="cuda")

    def step():
        out = model(input_ids=s_ids, position_ids=s_pos, past_key_values=caches[1], use_cache=True).logits
        s_logits.copy_(out[:, -1].float())
        s_ids.copy_(out[:, -1].argmax(-1, keepdim=True))
        s_pos.add_(1)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(stream):
        for _ in range(warm):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        step()
    replayed = []
    for _ in range(steps):
        graph.replay()
        replayed.append(s_logits.clone())
    check_close("graph vs eager", eager[:, warm:], torch.stack(replayed, 1), **TOLERANCES[torch.bfloat16])
    assert [layer.ring.pos.tolist() for layer in _layers(caches[1])] == [[37 + warm + steps] * 2] * 2
