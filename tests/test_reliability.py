"""Reliability under faults: a training process killed with SIGKILL and resumed, damaged checkpoint files,
no unpickling, no remote code without consent, fp16/bf16 overflow guards, and 64k-token sequences in the
chunked forms within bounded memory.

Faults injected are counted in ``FAULTS`` (with LOLCATS_WRITE_RESULTS=1 merged into
``benchmarks/results/reliability-cpu.json``). Gaps in files this module does not own are strict xfails
with the reason written out: fixing the code flips them to failures that ask for the marker's removal.
"""

import builtins
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lolcats_lab.attention import (
    chunk_hybrid_attn,
    chunk_linear_attn,
    hybrid_decode_step,
    naive_hybrid_attn,
    naive_linear_attn,
    softmax_attn,
)
from lolcats_lab.feature_maps import FEATURE_MAPS, make_feature_map
from lolcats_lab.models import linearize, load_linearized, load_model, save_linearized
from lolcats_lab.train import TransferConfig, transfer
from lolcats_lab.train.loop import CHECKPOINT_NAME
from tests.tolerances import TOLERANCES, check_close

ROOT = Path(__file__).resolve().parents[1]
FAULTS: Counter = Counter()  # faults injected, by kind
SURVIVED: Counter = Counter()  # ... and handled as specified (counted after a test's assertions pass)


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=101, attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


def data(n=16, t=32, seed=1):
    return torch.randint(0, 101, (n, t), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------
# kill -9 during training, resume in a new process


CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM
    from lolcats_lab.models.convert import linearize
    from lolcats_lab.train import TransferConfig, transfer

    ckpt, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=101, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).eval()
    linearize(model, attention="hybrid-tk", window=8, feature_dim=16)
    ids = torch.randint(0, 101, (16, 32), generator=torch.Generator().manual_seed(1))
    cfg = TransferConfig(steps=steps, batch_size=3, checkpoint_every=1, progress=False, seed=5)
    transfer(model, ids, cfg, checkpoint_dir=ckpt, resume=True)
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, out)
""")


def _child(ckpt: Path, out: Path, steps: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(ckpt), str(out), str(steps)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _checkpoint_step(path: Path) -> int | None:
    """The step recorded in a train_state checkpoint, None while there is none. Any read error is a failure:
    writes are atomic, so a reader must never see a half-written file."""
    if not path.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return int(json.loads(f.metadata()["lolcats"])["step"])


def _kill_at(proc: subprocess.Popen, ckpt: Path, step: int, rng: random.Random, timeout: float = 120) -> int:
    """SIGKILL ``proc`` a random few ms after its checkpoint reached ``step``; return the step on disk after."""
    start = time.monotonic()
    while (s := _checkpoint_step(ckpt)) is None or s < step:
        assert proc.poll() is None, f"child exited early: {proc.communicate()[1].decode()[-2000:]}"
        assert time.monotonic() - start < timeout, "child too slow"
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.03))  # land anywhere: mid-step, mid-write, between steps
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the child finished before the kill: lengthen the run"
    FAULTS["sigkill_during_training"] += 1
    return _checkpoint_step(ckpt)


@pytest.mark.slow
def test_sigkill_and_resume_gives_bit_identical_weights(tmp_path):
    from safetensors.torch import load_file

    steps = 24
    rng = random.Random(7)
    k1 = rng.randint(2, steps // 2 - 2)
    k2 = rng.randint(steps // 2, steps - 6)
    ref_proc = _child(tmp_path / "ref", tmp_path / "ref.safetensors", steps)  # uninterrupted, in parallel
    ckpt_dir = tmp_path / "run"
    ckpt = ckpt_dir / CHECKPOINT_NAME

    on_disk = _kill_at(_child(ckpt_dir, tmp_path / "x.safetensors", steps), ckpt, k1, rng)
    assert k1 <= on_disk < steps
    on_disk2 = _kill_at(_child(ckpt_dir, tmp_path / "x.safetensors", steps), ckpt, max(k2, on_disk + 1), rng)
    assert on_disk < on_disk2 < steps, "the resumed run did not continue from the checkpoint"
    last = _child(ckpt_dir, tmp_path / "resumed.safetensors", steps)
    assert last.wait(timeout=120) == 0, last.communicate()[1].decode()[-2000:]
    assert ref_proc.wait(timeout=120) == 0, ref_proc.communicate()[1].decode()[-2000:]

    ref, resumed = load_file(str(tmp_path / "ref.safetensors")), load_file(str(tmp_path / "resumed.safetensors"))
    assert ref.keys() == resumed.keys()
    differ = [n for n in ref if not torch.equal(ref[n], resumed[n])]
    assert not differ, f"weights differ after kill + resume: {differ[:5]}"
    assert _checkpoint_step(ckpt) == steps
    init = dict(tiny_llama_lin().named_parameters())  # the children's initial weights (same seeds)
    changed = [n for n in ref if not torch.equal(ref[n], init[n])]
    assert changed and all(".q_map." in n or ".k_map." in n or "window_logit" in n for n in changed), changed
    SURVIVED["sigkill_during_training"] += 2


def test_stale_temp_file_from_a_killed_write_is_ignored(tmp_path):
    """A SIGKILL during ``save_file`` leaves ``.train_state.safetensors.XXXX`` behind; resume must not read it."""
    ids = data()
    cfg = TransferConfig(steps=2, batch_size=2, progress=False)
    transfer(tiny_llama_lin(), ids, cfg, checkpoint_dir=tmp_path)
    (tmp_path / f".{CHECKPOINT_NAME}.abc123").write_bytes(b"\x00garbage half-written")
    FAULTS["stale_temp_files"] += 1
    result = transfer(tiny_llama_lin(), ids, TransferConfig(steps=3, batch_size=2, progress=False),
                      checkpoint_dir=tmp_path, resume=True)
    assert result.steps_done == 3 and len(result.history) == 3
    SURVIVED["stale_temp_files"] += 1


def tiny_llama_lin(seed=0):
    return linearize(tiny_llama(seed), attention="hybrid-tk", window=8, feature_dim=16)


# ----------------------------------------------------------------------------------------------------------
# damaged checkpoints


def _truncate_half(b: bytes) -> bytes:
    return b[: len(b) // 2]


def _flip_header(b: bytes) -> bytes:
    out = bytearray(b)
    out[12] ^= 0xFF  # inside the JSON header
    return bytes(out)


def _flip_data(b: bytes) -> bytes:
    out = bytearray(b)
    out[-9] ^= 0x40  # a bit of the last tensor's bytes
    return bytes(out)


DETECTED = {  # damage the current formats detect: the safetensors header and length checks
    "truncated_half": _truncate_half,
    "truncated_to_5_bytes": lambda b: b[:5],
    "empty_file": lambda b: b"",
    "header_byte_flipped": _flip_header,
}


@pytest.fixture
def train_state(tmp_path):
    transfer(tiny_llama_lin(), data(), TransferConfig(steps=1, batch_size=2, progress=False), checkpoint_dir=tmp_path)
    return tmp_path


@pytest.mark.parametrize("damage", sorted(DETECTED))
def test_damaged_train_state_is_reported(train_state, damage):
    path = train_state / CHECKPOINT_NAME
    path.write_bytes(DETECTED[damage](path.read_bytes()))
    FAULTS["damaged_train_state"] += 1
    with pytest.raises(ValueError, match=rf"checkpoint {re.escape(str(path))} is unreadable .*delete it to start over"):
        transfer(tiny_llama_lin(), data(), TransferConfig(steps=2, batch_size=2, progress=False),
                 checkpoint_dir=train_state, resume=True)
    SURVIVED["damaged_train_state"] += 1


def test_bit_flip_in_train_state_data_is_reported(train_state):
    path = train_state / CHECKPOINT_NAME
    path.write_bytes(_flip_data(path.read_bytes()))
    FAULTS["damaged_train_state"] += 1
    with pytest.raises(ValueError, match=rf"checkpoint {re.escape(str(path))} is corrupted \(checksum mismatch\); "
                                         "delete it to start over"):
        transfer(tiny_llama_lin(), data(), TransferConfig(steps=2, batch_size=2, progress=False),
                 checkpoint_dir=train_state, resume=True)
    SURVIVED["damaged_train_state"] += 1


@pytest.fixture
def linearized_ckpt(tmp_path):
    return save_linearized(tiny_llama_lin(), tmp_path / "ckpt", base_model="tiny")


@pytest.mark.parametrize("damage", sorted(DETECTED))
def test_damaged_linearized_weights_never_load(linearized_ckpt, damage):
    path = linearized_ckpt / "linearized.safetensors"
    path.write_bytes(DETECTED[damage](path.read_bytes()))
    FAULTS["damaged_linearized_checkpoint"] += 1
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_linearized(linearized_ckpt, base=tiny_llama())
    SURVIVED["damaged_linearized_checkpoint"] += 1


LINEARIZED_GAPS = {
    "weights_truncated": ("linearized.safetensors", _truncate_half),
    "weights_bit_flipped": ("linearized.safetensors", _flip_data),
    "config_truncated": ("lolcats_config.json", _truncate_half),
    "config_missing_keys": ("lolcats_config.json", lambda b: b'{"format_version": 1}'),
}


@pytest.mark.parametrize("damage", sorted(LINEARIZED_GAPS))
def test_damaged_linearized_checkpoint_raises_clear_value_error(linearized_ckpt, damage):
    name, fn = LINEARIZED_GAPS[damage]
    path = linearized_ckpt / name
    path.write_bytes(fn(path.read_bytes()))
    FAULTS["damaged_linearized_checkpoint"] += 1
    with pytest.raises(ValueError, match=re.escape(str(path))) as info:
        load_linearized(linearized_ckpt, base=tiny_llama())
    assert "\n" not in str(info.value), "the CLI prints the message as one line"
    SURVIVED["damaged_linearized_checkpoint"] += 1


# ----------------------------------------------------------------------------------------------------------
# no unpickling, no remote code


UNSAFE = re.compile(r"\bimport pickle\b|\bpickle\.loads?\(|\bdill\.|\bjoblib\.load\(|allow_pickle\s*=\s*True"
                    r"|torch\.load\((?![^)]*weights_only\s*=\s*True)|trust_remote_code\s*=\s*True")


def test_no_unpickling_and_no_remote_code_in_the_code_base():
    files = [p for d in ("lolcats_lab", "kernels", "benchmarks", "notebooks") for p in (ROOT / d).rglob("*")
             if p.suffix in (".py", ".ipynb")]
    assert len(files) > 20
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files for m in UNSAFE.finditer(p.read_text(errors="ignore"))]
    assert not hits, f"unsafe loading: {hits}"
    assert UNSAFE.search("x = torch.load(path)") and not UNSAFE.search("torch.load(path, weights_only=True)")  # control


def _remote_code_dir(tmp_path: Path) -> tuple[Path, Path]:
    """A local model directory whose config asks for custom code that, if ever run, writes a sentinel file."""
    d, sentinel = tmp_path / "remote_code_model", tmp_path / "EXECUTED"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "lolcats_remote_probe", "architectures": ["ProbeForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_probe.ProbeConfig", "AutoModelForCausalLM": "modeling_probe.ProbeForCausalLM"},
    }))
    code = (f"open({str(sentinel)!r}, 'w').write('ran')\nfrom transformers import PretrainedConfig\n"
            "class ProbeConfig(PretrainedConfig):\n    model_type = 'lolcats_remote_probe'\n")
    for name in ("configuration_probe.py", "modeling_probe.py"):
        (d / name).write_text(code)
    return d, sentinel


def test_load_model_does_not_run_remote_code(tmp_path, monkeypatch):
    d, sentinel = _remote_code_dir(tmp_path)
    monkeypatch.setattr(builtins, "input", lambda *a: "")  # a user who just presses enter at a prompt
    FAULTS["remote_code_probes"] += 1
    with pytest.raises((ValueError, OSError), match="trust_remote_code"):
        load_model(d)
    assert not sentinel.exists()
    SURVIVED["remote_code_probes"] += 1


def test_load_model_never_prompts_for_remote_code(tmp_path, monkeypatch):
    d, sentinel = _remote_code_dir(tmp_path)
    monkeypatch.setattr(builtins, "input", lambda *a: "y")
    FAULTS["remote_code_probes"] += 1
    try:
        load_model(d)
    except Exception:  # noqa: BLE001 - the probe model itself cannot load; only the sentinel matters
        pass
    finally:
        for mod in [m for m in sys.modules if "probe" in m and "remote_code_model" in str(getattr(sys.modules[m], "__file__", ""))]:
            sys.modules.pop(mod, None)
    assert not sentinel.exists(), "load_model executed the model directory's custom code"
    SURVIVED["remote_code_probes"] += 1


# ----------------------------------------------------------------------------------------------------------
# fp16 / bf16 overflow guards


LARGE = {torch.float16: 300.0, torch.bfloat16: 3000.0}  # q.k / sqrt(d) ~ 1e5 / 1e7: overflows fp16 if computed in it


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_large_logits_stay_finite_and_match_fp32(dtype):
    torch.manual_seed(0)
    B, H, T, D = 1, 2, 48, 8
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    q, k = q * LARGE[dtype], k * LARGE[dtype]
    phi_q = make_feature_map("hedgehog", H, D, feature_dim=4, init="random")
    phi_k = make_feature_map("hedgehog", H, D, feature_dim=4, init="random")
    wl = torch.zeros(H)
    lo = [t.to(dtype) for t in (q, k, v)]
    ref_in = [t.to(dtype).float() for t in (q, k, v)]  # the same rounded inputs, computed in fp32
    with torch.no_grad():
        fq, fk = phi_q(lo[0]), phi_k(lo[1])
        fq32, fk32 = phi_q(ref_in[0]), phi_k(ref_in[1])
        outs = {
            "softmax": (softmax_attn(*lo), softmax_attn(*ref_in)),
            "chunk_hybrid": (chunk_hybrid_attn(*lo, fq, fk, wl, window=8), naive_hybrid_attn(*ref_in, fq32, fk32, wl, window=8)),
        }
        cache, ys = None, []
        for t in range(T):
            s = slice(t, t + 1)
            y, cache = hybrid_decode_step(lo[0][:, :, s], lo[1][:, :, s], lo[2][:, :, s], fq[:, :, s], fk[:, :, s], wl,
                                          cache, window=8)
            ys.append(y)
        outs["decode_hybrid"] = (torch.cat(ys, 2), outs["chunk_hybrid"][1])
        # pure linear attention: with |q| ~ 300 the Hedgehog softmaxes are one-hot up to 1e-12 floors that
        # underflow to 0 in fp16 (feature_maps.py says so), so a row whose q and k features do not overlap
        # has a zero normaliser and y = 0 where fp32 averages with 1e-24 weights: no meaningful fp32
        # reference. Guard checked: finite, and the chunked form equals the quadratic one in this dtype.
        y_naive, y_chunk = naive_linear_attn(fq, fk, lo[2]), chunk_linear_attn(fq, fk, lo[2], chunk_size=16)
    tol = TOLERANCES[dtype]
    FAULTS["overflow_cases"] += 1
    assert torch.isfinite(y_naive).all() and torch.isfinite(y_chunk).all()
    check_close(f"chunk vs naive linear {dtype}", y_naive.float(), y_chunk.float(), **tol)
    SURVIVED["overflow_cases"] += 1
    for name, (out, ref) in outs.items():
        FAULTS["overflow_cases"] += 1
        assert out.dtype == dtype
        # features differ between dtypes by the map's own rounding: compare at 4x the table's ratio
        check_close(f"{name} {dtype}", ref, out.float(), ratio=4 * tol["ratio"], atol=tol["atol"])
        SURVIVED["overflow_cases"] += 1
    if dtype == torch.float16:  # negative control: the same scores computed in fp16 do overflow
        assert not torch.isfinite(lo[0] @ lo[1].transpose(-1, -2)).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", sorted(FEATURE_MAPS))
def test_feature_maps_on_large_inputs_stay_finite(name, dtype):
    torch.manual_seed(0)
    kw = {"feature_dim": 4} if name in ("hedgehog", "linear_act") else {}
    fmap = make_feature_map(name, 2, 8, **kw)
    x = (torch.randn(1, 2, 16, 8) * LARGE[dtype]).to(dtype)
    FAULTS["overflow_cases"] += 1
    y = fmap(x)
    finite = torch.isfinite(y).all()
    if not finite and name in ("taylor", "elu", "relu", "identity", "linear_act"):
        # these maps are polynomial / linear in x: large inputs give large features by definition;
        # the attention normaliser divides them out, so what must stay finite is the attention output
        y32 = fmap(x.float())
        assert torch.isfinite(y32).all(), f"{name}: non-finite even in fp32"
        pytest.xfail(f"{name} features exceed {dtype} range for |x| ~ {LARGE[dtype]:g} (cast happens after phi)")
    assert finite, f"{name} feature map overflowed in {dtype}"
    SURVIVED["overflow_cases"] += 1


def test_perplexity_with_huge_fp16_logits_is_finite():
    from types import SimpleNamespace

    from lolcats_lab.evaluate import perplexity

    class Loud(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float16))

        def forward(self, input_ids, **_):
            logits = torch.full((*input_ids.shape, 50), -6e4, dtype=torch.float16)
            logits[..., 0] = 6e4  # near fp16 max: logsumexp in fp16 would overflow
            return SimpleNamespace(logits=logits)

    x = torch.zeros(2, 8, dtype=torch.long)
    FAULTS["overflow_cases"] += 1
    assert perplexity(Loud(), x) == pytest.approx(1.0)
    assert not torch.isfinite(torch.full((3,), 6e4, dtype=torch.float16).sum())  # control: fp16 sums overflow
    SURVIVED["overflow_cases"] += 1


# ----------------------------------------------------------------------------------------------------------
# 64k tokens in the chunked forms, bounded memory


LONG_CHILD = textwrap.dedent("""
    import json, sys, time, torch
    torch.set_num_threads(2)
    from lolcats_lab.attention import chunk_linear_attn, chunk_hybrid_attn, naive_linear_attn, naive_hybrid_attn
    T, H, D, F, W = int(sys.argv[1]), 2, 16, 16, 64
    dtype = getattr(torch, sys.argv[2])
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, H, T, D, generator=g).to(dtype) for _ in range(3))
    fq, fk = (torch.rand(1, H, T, F, generator=g).to(dtype) for _ in range(2))
    wl = torch.zeros(H)
    def status(key):  # /proc/self/status in KiB; VmHWM is this process's peak RSS (ru_maxrss survives exec)
        return int(next(ln for ln in open("/proc/self/status") if ln.startswith(key)).split()[1])
    try:
        open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass  # then the peak may include the imports' peak: an upper bound, still a valid check
    base = status("VmRSS:")
    out = {"T": T, "dtype": sys.argv[2], "inputs_mib": 5 * q.numel() * q.element_size() / 2**20}
    with torch.no_grad():
        t0 = time.perf_counter(); y_lin = chunk_linear_attn(fq, fk, v, chunk_size=256); out["linear_s"] = time.perf_counter() - t0
        t0 = time.perf_counter(); y_hyb = chunk_hybrid_attn(q, k, v, fq, fk, wl, window=W, kind="tk"); out["hybrid_s"] = time.perf_counter() - t0
        out["peak_rss_increase_mib"] = (status("VmHWM:") - base) / 1024
        n = 512  # causal: the first n outputs depend on the first n tokens only
        ref_lin = naive_linear_attn(fq[:, :, :n], fk[:, :, :n], v[:, :, :n])
        ref_hyb = naive_hybrid_attn(q[:, :, :n], k[:, :, :n], v[:, :, :n], fq[:, :, :n], fk[:, :, :n], wl, window=W, kind="tk")
        rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()
        out["prefix_rel_err_linear"] = rel(y_lin[:, :, :n], ref_lin)
        out["prefix_rel_err_hybrid"] = rel(y_hyb[:, :, :n], ref_hyb)
        out["finite"] = bool(torch.isfinite(y_lin.float()).all() and torch.isfinite(y_hyb.float()).all())
    print(json.dumps(out))
""")


@pytest.mark.slow
@pytest.mark.parametrize("dtype, T", [("float32", 65536), ("bfloat16", 16384)])
def test_64k_tokens_in_chunked_forms_bounded_memory(dtype, T):
    """fp32 at 64k tokens, bf16 at 16k (kept from when the chunked hybrid upcast per chunk in a loop). The
    batched chunk form upcasts whole inputs to fp32 and lays out three chunks of keys per query chunk, so its
    memory is O(T * C): 68 MiB at bf16 16k, against 2 GiB for one quadratic score matrix.
    Not shrunk under LOLCATS_CI: 64k is the claim (fp32 measured 10 s idle, 45 s on 2 busy cores)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LONG_CHILD, str(T), dtype], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    FAULTS["long_sequence_runs"] += 1
    LONG_RESULTS.append(out)
    assert out["finite"]
    quadratic_mib = 2 * T * T * 4 / 2**20  # one fp32 [H, T, T] score matrix: 32 GiB at 64k
    assert out["peak_rss_increase_mib"] < 1024, json.dumps(out)  # measured ~ tens of MiB; quadratic would be 32768 MiB
    assert out["peak_rss_increase_mib"] < quadratic_mib / 10  # 205 MiB at 16k, 3.2 GiB at 64k
    assert out["peak_rss_increase_mib"] > 1, "control: the two [1, 2, T, 16] outputs alone exceed 1 MiB"
    tol = TOLERANCES[getattr(torch, dtype)]["ratio"]
    assert out["prefix_rel_err_linear"] < tol and out["prefix_rel_err_hybrid"] < tol, out
    SURVIVED["long_sequence_runs"] += 1


LONG_RESULTS: list = []


def test_zz_write_counts():
    """Runs last in this file: record the faults injected (merged into the results JSON when asked)."""
    if os.environ.get("LOLCATS_WRITE_RESULTS") == "1" and FAULTS:
        path = ROOT / "benchmarks" / "results" / "reliability-cpu.json"
        data_ = json.loads(path.read_text()) if path.exists() else {}
        data_["faults"] = {"injected": sum(FAULTS.values()), "survived": sum(SURVIVED.values()),
                           "injected_per_kind": dict(sorted(FAULTS.items())),
                           "survived_per_kind": dict(sorted(SURVIVED.items())),
                           "note": ("survived counts a case only after its assertions pass: a counted case that hits a "
                                    "known gap (xfail) is injected but not survived; the other known gaps are "
                                    "strict xfail tests, listed with their reasons")}
        if LONG_RESULTS:
            data_["long_sequences"] = LONG_RESULTS
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data_, indent=2, sort_keys=True) + "\n")
