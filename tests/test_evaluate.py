"""Evaluation: perplexity (packed, sliding windows, groups), generation samples, passkey probes, and the
lm-eval adapter, on a tiny random Llama with a tiny BPE tokenizer trained in the test (offline, seconds).

References are independent: Hugging Face's own causal-LM loss, ``model.generate`` of the unmodified model,
and stub models whose answer is known in closed form (uniform logits, an induction-head oracle).
"""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from lolcats_lab.evaluate import (
    attention_mode,
    generate_samples,
    group_perplexity,
    make_passkey_prompt,
    passkey_by_mode,
    passkey_retrieval,
    perplexity,
    score_tokens,
    sliding_window_perplexity,
)
from lolcats_lab.lm_eval_adapter import HAVE_LM_EVAL, LolcatsLM
from lolcats_lab.models.convert import attention_modules, linearize

RTOL = 1e-5  # fp32 sums of a few hundred log-probs; measured <= 2e-7 relative, 50x headroom

TEXTS = [
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
    "What is the pass key? The pass key is 12345. Remember it. There is an important piece of information.",
    "Q: What colour is the sky? A: blue. Q: What colour is grass? A: green. Find it and memorize it.",
] * 4


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(TEXTS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", unk_token="<unk>")


def tiny_llama(seed=0, vocab=320):
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=vocab, max_position_embeddings=512,
                      attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


def ids(n=4, t=24, seed=1, vocab=320):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


class StubLM(nn.Module):
    """A causal LM with closed-form logits: ``fn(input_ids [B, T]) -> logits [B, T, V]``."""

    def __init__(self, fn, vocab=320):
        super().__init__()
        self.fn, self.vocab = fn, vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **_):
        return SimpleNamespace(logits=self.fn(input_ids, self.vocab))


def uniform(input_ids, vocab):
    return torch.zeros(*input_ids.shape, vocab)


def induction(input_ids, vocab, match=3):
    """Predict the token that followed the latest earlier occurrence of the last ``match`` tokens."""
    B, T = input_ids.shape
    logits = torch.zeros(B, T, vocab)
    for b in range(B):
        row = input_ids[b].tolist()
        for t in range(match - 1, T):
            key = row[t - match + 1 : t + 1]
            for j in range(t - 1, match - 2, -1):
                if row[j - match + 1 : j + 1] == key:
                    logits[b, t, row[j + 1]] = 10.0
                    break
    return logits


# ----------------------------------------------------------------------------------------------------------
# perplexity


def test_perplexity_matches_hugging_face_loss():
    model, x = tiny_llama(), ids()
    ref = math.exp(model(input_ids=x, labels=x).loss.item())  # HF: mean CE over the N*(T-1) targets
    assert perplexity(model, x, batch_size=3) == pytest.approx(ref, rel=RTOL)
    other = tiny_llama(seed=1)  # negative control: another model scores differently
    assert abs(perplexity(other, x) - ref) / ref > 1e-3


def test_sliding_window_perplexity_matches_hf_strided_reference():
    model = tiny_llama()
    long = ids(1, 100, seed=3)[0]
    L, stride = 32, 12
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, long.numel(), stride):  # the Hugging Face "perplexity of fixed-length models" loop
        end = min(begin + L, long.numel())
        trg = end - prev_end
        window = long[max(0, end - L) : end][None]
        labels = window.clone()
        labels[:, :-trg] = -100
        n_scored = int((labels[:, 1:] != -100).sum())
        nll += model(input_ids=window, labels=labels).loss.item() * n_scored
        count += n_scored
        prev_end = end
        if end == long.numel():
            break
    assert count == long.numel() - 1  # every token but the first, once
    ppl = sliding_window_perplexity(model, long, seq_len=L, stride=stride, batch_size=2)
    # the HF loop starts windows at multiples of stride; ours ends the last window at the last token, so the
    # context of the final few tokens differs: compare with a tolerance that this difference fits (measured 2e-3)
    assert ppl == pytest.approx(math.exp(nll / count), rel=2e-2)
    # exact identity: one window that holds the whole text = plain perplexity of that row
    assert sliding_window_perplexity(model, long, seq_len=200) == pytest.approx(perplexity(model, long[None]), rel=RTOL)


def test_sliding_window_context_helps_a_model_that_needs_it():
    """The induction oracle can only predict a repeat when the earlier copy is inside its window."""
    pattern = torch.arange(10, 30)
    long = pattern.repeat(4)  # [80]
    model = StubLM(induction)
    disjoint = sliding_window_perplexity(model, long, seq_len=20, stride=20)  # each window holds one copy
    overlapping = sliding_window_perplexity(model, long, seq_len=40, stride=10)
    assert overlapping < disjoint


def test_group_perplexity_is_perplexity_per_group():
    model = tiny_llama()
    groups = {"web": ids(2, 16, seed=4), "code": ids(3, 16, seed=5)}
    got = group_perplexity(model, groups, batch_size=2)
    assert set(got) == {"web", "code"}
    for name, rows in groups.items():
        assert got[name] == pytest.approx(perplexity(model, rows), rel=RTOL)


def test_score_tokens_counts_only_labelled_tokens():
    x = ids(2, 10)
    labels = x.clone()
    labels[:, :6] = -100
    nll, count = score_tokens(StubLM(uniform), x, labels)
    assert count == 2 * 4 and nll == pytest.approx(8 * math.log(320), rel=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda m: perplexity(m, torch.zeros(4, dtype=torch.long)), r"ids must be integer token ids \[N, T\]"),
    (lambda m: perplexity(m, torch.zeros(2, 1, dtype=torch.long)), r"T >= 2"),
    (lambda m: perplexity(m, torch.zeros(2, 4)), r"ids must be integer token ids"),
    (lambda m: perplexity(m, ids(), batch_size=0), r"batch_size must be a positive int"),
    (lambda m: sliding_window_perplexity(m, ids(1, 20)[0], seq_len=8, stride=9), r"stride must satisfy"),
    (lambda m: group_perplexity(m, {}), r"groups must be a non-empty dict"),
    (lambda m: score_tokens(m, ids(2, 8), ids(2, 9)), r"labels must have the shape of input_ids"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(tiny_llama())


def test_non_finite_model_output_is_reported():
    bad = StubLM(lambda x, v: torch.full((*x.shape, v), float("nan")))
    with pytest.raises(ValueError, match="non-finite log-likelihoods"):
        perplexity(bad, ids())


# ----------------------------------------------------------------------------------------------------------
# attention modes


def test_attention_mode_switches_and_restores():
    x = ids()
    ref = perplexity(tiny_llama(), x)  # the unmodified model
    model = linearize(tiny_llama(), attention="hybrid-tk", window=4, feature_dim=8)
    assert attention_modules(model)[0].mode == "linear"
    with attention_mode(model, "softmax"):
        assert perplexity(model, x) == pytest.approx(ref, rel=RTOL)
    assert attention_modules(model)[0].mode == "linear"
    assert abs(perplexity(model, x) - ref) / ref > 1e-3  # linear mode really is different
    with pytest.raises(ValueError, match="model is not linearized"):
        with attention_mode(tiny_llama(), "linear"):
            pass


# ----------------------------------------------------------------------------------------------------------
# generation


def test_generate_samples_equals_hugging_face_greedy(tok):
    model = tiny_llama()
    prompts = ["The sky is", "What is the pass key?"]
    got = generate_samples(model, tok, prompts, max_new_tokens=6)
    for prompt, sample in zip(prompts, got):
        x = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        ref = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.eos_token_id)
        assert sample.completion == tok.decode(ref[0, x.shape[1]:], skip_special_tokens=True)
        assert sample.prompt == prompt and 1 <= sample.new_tokens <= 6


def test_generate_samples_sampling_is_seeded(tok):
    model = tiny_llama()
    a = generate_samples(model, tok, ["The sun"], max_new_tokens=8, do_sample=True, seed=3)
    b = generate_samples(model, tok, ["The sun"], max_new_tokens=8, do_sample=True, seed=3)
    assert a == b
    with pytest.raises(ValueError, match="prompts must be a non-empty list"):
        generate_samples(model, tok, "a string, not a list")
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        generate_samples(model, tok, ["x"], max_new_tokens=0)


def test_generate_samples_in_linear_mode_runs_with_the_linear_cache(tok):
    model = linearize(tiny_llama(), attention="hybrid-sw", window=4, feature_dim=8)
    (sample,) = generate_samples(model, tok, ["The grass is green. The sky"], max_new_tokens=5)
    assert sample.new_tokens == 5


# ----------------------------------------------------------------------------------------------------------
# passkey retrieval


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_prompt_hides_the_answer_and_fits(tok, depth):
    prompt, answer = make_passkey_prompt(tok, 200, passkey=73019, depth=depth)
    assert prompt.numel() + answer.numel() <= 200
    assert tok.decode(answer) == " 73019"
    text = tok.decode(prompt)
    assert text.count("73019") == 2 and text.endswith("The pass key is")
    long_text = tok.decode(make_passkey_prompt(tok, 1000, passkey=73019, depth=depth)[0])
    needle_at = long_text.index("73019") / len(long_text)
    assert abs(needle_at - depth) < 0.15  # roughly where asked (the intro and question take some room)
    with pytest.raises(ValueError, match="too short for a passkey prompt"):
        make_passkey_prompt(tok, 20, passkey=1)
    with pytest.raises(ValueError, match=r"depth must be in \[0, 1\]"):
        make_passkey_prompt(tok, 200, passkey=1, depth=1.5)


def test_passkey_oracle_retrieves_and_uniform_model_does_not(tok):
    oracle = passkey_retrieval(StubLM(induction), tok, [250, 400], trials=3)
    assert [r.accuracy for r in oracle] == [1.0, 1.0]
    assert [r.context_len for r in oracle] == [250, 400] and all(r.mean_tokens <= r.context_len for r in oracle)
    blind = passkey_retrieval(StubLM(uniform), tok, [250], trials=3)  # negative control
    assert blind[0].accuracy == 0.0
    assert blind[0].mean_answer_logprob < oracle[0].mean_answer_logprob


def test_passkey_table_for_softmax_and_linear_modes(tok):
    model = linearize(tiny_llama(), attention="linear", feature_dim=8)
    table = passkey_by_mode(model, tok, [200], modes=("softmax", "linear"), trials=1)
    assert attention_modules(model)[0].mode == "linear"  # restored
    assert all(len(rows) == 1 for rows in table.values())
    # same prompts in both modes, different model: log-probs differ
    assert table["softmax"][0].mean_answer_logprob != table["linear"][0].mean_answer_logprob
    with pytest.raises(ValueError, match="context_lengths must be a non-empty list"):
        passkey_retrieval(model, tok, 100)


# ----------------------------------------------------------------------------------------------------------
# lm-eval adapter (its methods against manual computations; the harness itself when lm_eval is installed)


def manual_loglik(model, tok, context, continuation):
    c = tok(context, add_special_tokens=False)["input_ids"]
    x = tok(continuation, add_special_tokens=False)["input_ids"]
    full = torch.tensor([c + x])
    logp = model(input_ids=full).logits[0].float().log_softmax(-1)
    return sum(logp[len(c) - 1 + i, t].item() for i, t in enumerate(x))


def test_loglikelihood_matches_manual_and_batching_does_not_change_it(tok):
    model = tiny_llama()
    reqs = [("The sky is", " blue"), ("Q: What colour is grass? A:", " green. Find it"), ("The pass key is", " 12345")]
    one = LolcatsLM(model, tok, batch_size=1).loglikelihood(reqs)
    many = LolcatsLM(model, tok, batch_size=3).loglikelihood(reqs)  # right padding: same scores
    for (ctx, cont), (ll1, g1), (ll3, g3) in zip(reqs, one, many):
        assert ll1 == pytest.approx(manual_loglik(model, tok, ctx, cont), rel=RTOL)
        assert ll3 == pytest.approx(ll1, rel=RTOL, abs=1e-5) and g1 == g3


def test_loglikelihood_is_greedy_flag_and_trailing_space(tok):
    oracle = LolcatsLM(StubLM(induction), tok)
    text = "Here we go. The sky is blue. The sky is"  # both copies tokenise alike
    (ll, greedy), = oracle.loglikelihood([(text, " blue")])
    assert greedy
    (_, not_greedy), = oracle.loglikelihood([(text, " green")])
    assert not not_greedy
    # a trailing space on the context moves to the continuation (tokenizers attach it to the next word)
    (ll_space, _), = oracle.loglikelihood([(text + " ", "blue")])
    assert ll_space == pytest.approx(ll)


def test_loglikelihood_rolling_scores_every_token_once(tok):
    text = TEXTS[0]
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    for max_length in (4, 7, 64):  # uniform logits: each scored token costs exactly log(V)
        (ll,) = LolcatsLM(StubLM(uniform), tok, max_length=max_length).loglikelihood_rolling([(text,)])
        assert ll == pytest.approx(-n * math.log(320), rel=1e-6)
    model = tiny_llama()  # one window: equals the full-sequence log-likelihood given EOS
    (ll,) = LolcatsLM(model, tok, max_length=256).loglikelihood_rolling([(text,)])
    full = torch.tensor([[tok.eos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
    assert ll == pytest.approx(-model(input_ids=full, labels=full).loss.item() * n, rel=RTOL)


def test_generate_until_cuts_at_stop_strings(tok):
    model = tiny_llama()
    lm = LolcatsLM(model, tok)
    (free,) = lm.generate_until([("The sky is", {"max_gen_toks": 8})])
    ref = generate_samples(model, tok, ["The sky is"], max_new_tokens=8)[0].completion
    assert free == ref
    stop = free[2:4] if len(free) >= 4 else free[:1]
    (cut,) = lm.generate_until([("The sky is", {"until": [stop], "max_gen_toks": 8})])
    assert cut == free[: free.index(stop)]


def test_adapter_bad_arguments(tok):
    with pytest.raises(ValueError, match="pass exactly one of model="):
        LolcatsLM()
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        LolcatsLM(tiny_llama(), tok, batch_size="auto")
    with pytest.raises(ValueError, match="model is not linearized"):
        LolcatsLM(tiny_llama(), tok, mode="linear")
    with pytest.raises(TypeError, match="each request must be an lm_eval Instance"):
        LolcatsLM(tiny_llama(), tok).loglikelihood(["not a tuple"])


MC_DOCS = [  # a tiny local multiple-choice task; the oracle copies, so the gold answer is the repeated word
    {"question": "Here we go. The sky is blue. The sky is", "choices": [" blue", " green", " red"], "gold": 0},
    {"question": "Here we go. The grass is green. The grass is", "choices": [" blue", " green", " yellow"], "gold": 1},
    {"question": "Here we go. The sun is yellow. The sun is", "choices": [" red", " blue", " yellow"], "gold": 2},
]


def multiple_choice_accuracy(lm, docs):
    correct = 0
    for d in docs:
        scores = [ll for ll, _ in lm.loglikelihood([(d["question"], c) for c in d["choices"]])]
        correct += max(range(len(scores)), key=scores.__getitem__) == d["gold"]
    return correct / len(docs)


def test_local_multiple_choice_task_through_the_adapter(tok):
    assert multiple_choice_accuracy(LolcatsLM(StubLM(induction), tok), MC_DOCS) == 1.0
    assert multiple_choice_accuracy(LolcatsLM(StubLM(uniform), tok), MC_DOCS) == pytest.approx(1 / 3)  # ties: first


@pytest.mark.skipif(not HAVE_LM_EVAL, reason="lm_eval is not installed (optional extra: pip install 'lm_eval>=0.4'); "
                    "the adapter's methods are tested above against manual computations")
def test_harness_runs_the_local_task(tok, tmp_path):  # pragma: no cover - needs lm_eval
    import lm_eval
    from lm_eval.tasks import TaskManager

    data = tmp_path / "tiny_mc.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in MC_DOCS))
    (tmp_path / "tiny_mc.yaml").write_text(
        "task: lolcats_tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\n'
        "target_delimiter: \"\"\nmetric_list:\n  - metric: acc\n"
    )
    out = lm_eval.simple_evaluate(model=LolcatsLM(StubLM(induction), tok), tasks=["lolcats_tiny_mc"],
                                  task_manager=TaskManager(include_path=str(tmp_path)))
    assert out["results"]["lolcats_tiny_mc"]["acc,none"] == 1.0


def _tiny_bert_with_tokenizer():
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from lolcats_lab.models import load_model

    _, tok = load_model("minilm")  # the embedded MiniLM's real tokenizer; the model here is tiny and random
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, attn_implementation="eager")
    return BertModel(cfg).eval(), tok


@pytest.mark.embedded
def test_embedding_similarity_is_one_in_softmax_mode_and_drops_when_linearized():
    from lolcats_lab.evaluate import embedding_similarity
    from lolcats_lab.models import linearize, set_attention_mode

    model, tok = _tiny_bert_with_tokenizer()
    linearize(model, attention="hybrid-sw", window=2, feature_dim=8)
    texts = ["the cat sat on the mat", "a much longer sentence about attention, windows and features", "hi"]
    set_attention_mode(model, "softmax")
    torch.testing.assert_close(embedding_similarity(model, tok, texts), torch.ones(3), rtol=0, atol=1e-6)
    set_attention_mode(model, "linear")
    sim = embedding_similarity(model, tok, texts)
    assert sim.shape == (3,) and (sim < 1 - 1e-6).any() and (sim > -1).all()
    assert model.lolcats_config["attention"] == "hybrid-sw"
    from lolcats_lab.models.convert import attention_modules

    assert attention_modules(model)[0].mode == "linear"  # the reference pass restored the mode
    with pytest.raises(ValueError, match="texts must be a non-empty list"):
        embedding_similarity(model, tok, [])
