"""lm-evaluation-harness end to end: lm_eval's own evaluator drives ``LolcatsLM`` on three tiny local tasks.

``tests/test_evaluate.py`` calls the adapter's methods directly; here ``lm_eval.simple_evaluate`` does the
whole job (task YAML -> local JSONL dataset -> requests -> adapter -> metrics), once with a model object and
once through the registered name ``"lolcats"`` with ``model_args`` naming a linearized checkpoint on disk
(the path lm_eval's command line takes), and once through this package's command line,
``python -m lolcats_lab.lm_eval_adapter``. Every number the harness reports is compared with what we
compute from the model directly, with plain forward passes and no adapter code:

* multiple choice (4 items, 4 choices each): each choice's log-likelihood, and ``acc`` = mean(argmax == gold);
* ``loglikelihood_rolling`` (3 texts): each text's log-likelihood, ``word_perplexity``, ``bits_per_byte``;
* ``generate_until`` (2 prompts): the greedy continuation (a token-by-token argmax loop over full forward
  passes, cut at the stop string), and ``exact_match`` (one target is made to match, one not: 0.5).

The model is a tiny random Llama with a BPE tokenizer trained on the task texts, saved to a local directory;
nothing touches the network (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set). Tolerance for log-likelihoods:
relative 1e-4, absolute 1e-4 (the model runs in fp32; the harness may batch two rows with right padding while
the reference scores one row at a time in float64 log-softmax, so only rounding differs; a shift of 1e-2 in
every score fails the test).

Skipped only when lm_eval is not importable (optional extra: ``pip install -e '.[eval]'``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip(
    "lm_eval", reason="lm_eval is not installed (optional extra: pip install -e '.[eval]'); the adapter's methods "
    "are still tested directly in tests/test_evaluate.py")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from lolcats_lab.lm_eval_adapter import HAVE_LM_EVAL, LolcatsLM  # noqa: E402
from lolcats_lab.models import linearize, load_linearized, save_linearized  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
RTOL = ATOL = 1e-4
STOP, MAX_GEN = ".", 6  # generate_until: stop string and token cap


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


MC_DOCS = _jsonl(DATA / "lm_eval_tiny_mc.jsonl")
TEXT_DOCS = _jsonl(DATA / "lm_eval_tiny_text.jsonl")
GEN_DOCS = _jsonl(DATA / "lm_eval_tiny_gen.jsonl")


@pytest.fixture(scope="module", autouse=True)
def offline():
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama + BPE tokenizer saved together (a local model directory), and a linearized
    checkpoint of it (hybrid-tk, window 4, feature maps moved off their initial values)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = ([d["question"] + " " + " ".join(d["choices"]) for d in MC_DOCS] + [d["text"] for d in TEXT_DOCS]
             + [d["prompt"] for d in GEN_DOCS])
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"], show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=len(tok), max_position_embeddings=256, initializer_range=0.1,
                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                      attn_implementation="eager")
    base = LlamaForCausalLM(cfg).eval()
    root = tmp_path_factory.mktemp("lm_eval_tiny")
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")

    student = LlamaForCausalLM.from_pretrained(root / "base", attn_implementation="eager").eval()
    linearize(student, attention="hybrid-tk", window=4, feature_dim=8)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in student.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    save_linearized(student, root / "checkpoint")
    return dict(tok=tok, base=base, base_dir=str(root / "base"), checkpoint=str(root / "checkpoint"))


def write_tasks(directory: Path, gen_targets: list[str]) -> list[str]:
    """Three task YAMLs over the local JSONL files (the generation targets are filled in per model)."""
    gen_data = directory / "gen.jsonl"
    gen_data.write_text("".join(json.dumps({**d, "target": t}) + "\n" for d, t in zip(GEN_DOCS, gen_targets)))
    common = "dataset_path: json\ntest_split: test\ndataset_kwargs:\n  cache_dir: {cache}\n  data_files:\n    test: {data}\n"
    cache = directory / "hf_datasets_cache"
    (directory / "mc.yaml").write_text(
        "task: lolcats_tiny_mc\n" + common.format(cache=cache, data=DATA / "lm_eval_tiny_mc.jsonl")
        + "output_type: multiple_choice\n"
        + 'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\n'
        + "metric_list:\n  - metric: acc\n")
    (directory / "rolling.yaml").write_text(
        "task: lolcats_tiny_rolling\n" + common.format(cache=cache, data=DATA / "lm_eval_tiny_text.jsonl")
        + "output_type: loglikelihood_rolling\n" + 'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        + "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    (directory / "gen.yaml").write_text(
        "task: lolcats_tiny_gen\n" + common.format(cache=cache, data=gen_data)
        + "output_type: generate_until\n" + 'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{target}}"\n'
        + f'generation_kwargs:\n  until: ["{STOP}"]\n  max_gen_toks: {MAX_GEN}\n  do_sample: false\n'
        + "metric_list:\n  - metric: exact_match\n")
    return ["lolcats_tiny_mc", "lolcats_tiny_rolling", "lolcats_tiny_gen"]


# ------------------------------------------------------------------------------------------------------
# the independent reference: plain forward passes of the model, one sequence at a time


@torch.no_grad()
def ref_loglik(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context): tokens of each part, concatenated, one full forward pass."""
    ctx = tok(context, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    logp = model(input_ids=torch.tensor([ctx + cont])).logits[0].double().log_softmax(-1)  # [T, V]
    return sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))


@torch.no_grad()
def ref_rolling(model, tok, text: str) -> float:
    """log p(text) with the first token conditioned on EOS (the text is shorter than the context window)."""
    ids = [tok.eos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    logp = model(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
    return sum(logp[i - 1, t].item() for i, t in enumerate(ids) if i > 0)


@torch.no_grad()
def ref_greedy(model, tok, prompt: str) -> str:
    """Greedy decoding by argmax over a full forward pass per new token (no cache), cut at STOP."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    new = []
    for _ in range(MAX_GEN):
        nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        new.append(nxt)
    text = tok.decode(new, skip_special_tokens=True)
    return text[: text.index(STOP)] if STOP in text else text


def reference(model, tok) -> dict:
    mc = [[ref_loglik(model, tok, d["question"], " " + c) for c in d["choices"]] for d in MC_DOCS]
    rolling = [ref_rolling(model, tok, d["text"]) for d in TEXT_DOCS]
    gens = [ref_greedy(model, tok, d["prompt"]) for d in GEN_DOCS]
    return dict(mc=mc, rolling=rolling, gens=gens)


# ------------------------------------------------------------------------------------------------------


def _by_doc(samples: list[dict]) -> list[dict]:
    return sorted(samples, key=lambda s: s["doc_id"])


def check_harness_against_reference(out: dict, ref: dict, gen_targets: list[str]) -> None:
    results, samples = out["results"], out["samples"]

    # multiple choice: every choice's log-likelihood, then accuracy
    mc = _by_doc(samples["lolcats_tiny_mc"])
    assert len(mc) == len(MC_DOCS)
    for s, want in zip(mc, ref["mc"]):
        got = [float(r[0]) for r in s["filtered_resps"]]
        assert got == pytest.approx(want, rel=RTOL, abs=ATOL), s["doc"]
    acc = sum(max(range(len(w)), key=w.__getitem__) == d["gold"] for w, d in zip(ref["mc"], MC_DOCS)) / len(MC_DOCS)
    gaps = [sorted(w)[-1] - sorted(w)[-2] for w in ref["mc"]]
    assert min(gaps) > 10 * ATOL, f"argmax near a tie ({gaps}); pick another seed so accuracy is well defined"
    assert results["lolcats_tiny_mc"]["acc,none"] == pytest.approx(acc)

    # rolling log-likelihood: per text, then the aggregate metrics
    rolling = _by_doc(samples["lolcats_tiny_rolling"])
    for s, want in zip(rolling, ref["rolling"]):
        assert float(s["filtered_resps"][0]) == pytest.approx(want, rel=RTOL, abs=ATOL)
    lls, texts = ref["rolling"], [d["text"] for d in TEXT_DOCS]
    words = sum(len(t.split()) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    r = results["lolcats_tiny_rolling"]
    assert r["word_perplexity,none"] == pytest.approx(math.exp(-sum(lls) / words), rel=RTOL)
    assert r["bits_per_byte,none"] == pytest.approx(-sum(lls) / n_bytes / math.log(2), rel=RTOL)

    # generation: the same greedy text, and exact_match over targets built so that one matches
    gen = _by_doc(samples["lolcats_tiny_gen"])
    assert [s["filtered_resps"][0] for s in gen] == ref["gens"]
    em = sum(g == t for g, t in zip(ref["gens"], gen_targets)) / len(gen_targets)
    assert em == 0.5
    assert results["lolcats_tiny_gen"]["exact_match,none"] == pytest.approx(em)


def run_harness(model, tmp_path: Path, ref: dict, **kwargs) -> tuple[dict, list[str]]:
    from lm_eval.tasks import TaskManager

    gen_targets = [ref["gens"][0], ref["gens"][1] + " (not what the model says)"]
    tasks = write_tasks(tmp_path, gen_targets)
    out = lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=TaskManager(include_path=str(tmp_path)),
                                  log_samples=True, bootstrap_iters=0, **kwargs)
    return out, gen_targets


def test_adapter_subclasses_and_registers_with_lm_eval():
    from lm_eval.api.model import LM
    from lm_eval.api.registry import get_model

    assert HAVE_LM_EVAL and issubclass(LolcatsLM, LM)
    assert get_model("lolcats") is LolcatsLM


def test_harness_with_a_model_object_matches_direct_computation(tiny, tmp_path):
    """Softmax teacher, passed as an object: the harness's numbers are the model's numbers."""
    ref = reference(tiny["base"], tiny["tok"])
    out, targets = run_harness(LolcatsLM(tiny["base"], tiny["tok"]), tmp_path, ref)
    check_harness_against_reference(out, ref, targets)


def test_harness_by_name_with_a_linearized_checkpoint_matches_direct_computation(tiny, tmp_path):
    """``model="lolcats"`` + ``model_args`` (as on lm_eval's command line): the harness loads the checkpoint
    onto the local base directory, in linear mode, batch size 2; the reference loads it separately."""
    student = load_linearized(tiny["checkpoint"], base=tiny["base_dir"], mode="linear").eval()
    ref = reference(student, tiny["tok"])
    teacher = reference(tiny["base"], tiny["tok"])
    flat = lambda scores: [x for row in scores for x in row]  # noqa: E731
    assert flat(ref["mc"]) != pytest.approx(flat(teacher["mc"]), rel=1e-3)  # the linearized model is another model
    out, targets = run_harness("lolcats", tmp_path, ref, batch_size=2,
                               model_args=f"checkpoint={tiny['checkpoint']},base={tiny['base_dir']},mode=linear")
    check_harness_against_reference(out, ref, targets)


def test_importing_the_adapter_keeps_lm_eval_builtin_models():
    """lm_eval loads its built-in model table only into an empty registry; registering "lolcats" must not
    hide "hf" and the others."""
    from lm_eval.api.registry import get_model

    assert get_model("dummy").__name__ == "DummyLM"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback of device='cuda'")
def test_cuda_device_without_cuda_falls_back_to_cpu_with_a_warning(tiny):
    with pytest.warns(UserWarning, match="CUDA is not available"):
        lm = LolcatsLM(tiny["base"], tiny["tok"], device="cuda")
    assert lm.device.type == "cpu"


def test_command_line_entry_runs_the_harness(tiny, tmp_path):
    """``python -m lolcats_lab.lm_eval_adapter`` = lm_eval's CLI with "lolcats" registered; its results file
    holds the same numbers as the direct computation."""
    import subprocess
    import sys

    student = load_linearized(tiny["checkpoint"], base=tiny["base_dir"], mode="linear").eval()
    ref = reference(student, tiny["tok"])
    targets = [ref["gens"][0], ref["gens"][1] + " (not what the model says)"]
    tasks = write_tasks(tmp_path, targets)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lolcats_lab.lm_eval_adapter", "--model", "lolcats",
           "--model_args", f"checkpoint={tiny['checkpoint']},base={tiny['base_dir']},mode=linear",
           "--tasks", ",".join(tasks), "--include_path", str(tmp_path), "--batch_size", "2",
           "--output_path", str(tmp_path / "out"), "--log_samples"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    out = json.loads(results_file.read_text())
    out["samples"] = {}
    for task in tasks:
        (samples_file,) = (tmp_path / "out").rglob(f"samples_{task}_*.jsonl")
        out["samples"][task] = _jsonl(samples_file)
    check_harness_against_reference(out, ref, targets)
