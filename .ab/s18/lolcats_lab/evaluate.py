"""Evaluation in whatever attention mode the model is in: perplexity (packed rows, long texts with
sliding windows, per-group), generation samples, and passkey retrieval probes at growing context.

Nothing here switches the attention mode behind your back: wrap a call in :func:`attention_mode` to
evaluate the same weights as softmax and as linearized attention (the mode is restored afterwards).

Passkey retrieval (Mohtashami & Jaggi, 2023, "Landmark Attention"): a random number is buried at some
depth in repetitive filler text, and the model is asked for it at the end. It needs exact recall of one
token span from far back: softmax attention can look it up, while pure linear attention compresses the
whole context into a fixed-size state and is known to lose it as the context grows (the LoLCATs paper
reports the same weakness on needle-in-a-haystack tasks). The hybrid modes recover it only while the
needle sits inside the sliding window. The probe is scored by teacher forcing: the model "retrieves" the
passkey when the argmax at every answer position is the answer token, which is exactly what greedy
decoding would produce, in one forward pass.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = [
    "GenerationSample",
    "PasskeyResult",
    "attention_mode",
    "generate_samples",
    "group_perplexity",
    "make_passkey_prompt",
    "passkey_by_mode",
    "passkey_retrieval",
    "perplexity",
    "score_tokens",
    "sliding_window_perplexity",
]

IGNORE_INDEX = -100  # label value that is not scored (as in Hugging Face losses)


# ----------------------------------------------------------------------------------------------------------
# attention mode


@contextlib.contextmanager
def attention_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Context manager: run the block with every linearized attention module in ``mode`` ("softmax",
    "linear", ...), then restore the previous mode. A model that is not linearized only accepts "softmax"."""
    from .models.convert import attention_modules, set_attention_mode

    mods = attention_modules(model)
    if not mods:
        if mode != "softmax":
            raise ValueError(f"model is not linearized, so it can only run in mode 'softmax', got {mode!r}; "
                             "call lolcats_lab.linearize(model, ...) first")
        yield model
        return
    previous = mods[0].mode
    set_attention_mode(model, mode)
    try:
        yield model
    finally:
        set_attention_mode(model, previous)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------------------------------------
# perplexity


def _check_ids(name: str, ids, dims: int) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a LongTensor of token ids, got {type(ids).__name__}")
    if ids.dim() != dims or ids.dtype not in (torch.long, torch.int32, torch.int64):
        want = "[N, T]" if dims == 2 else "[T]"
        raise ValueError(f"{name} must be integer token ids {want}, got {ids.dtype} {tuple(ids.shape)}")
    return ids.long()


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def score_tokens(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[float, int]:
    """Summed next-token NLL (nats, fp32 log-softmax) and the number of scored tokens.

    input_ids: [B, T]; labels: [B, T], unshifted (position t predicts ``labels[:, t]`` from tokens < t, as in
    Hugging Face), ``-100`` = not scored; default ``input_ids`` (every token but the first is scored).
    """
    input_ids = _check_ids("input_ids", input_ids, 2)
    labels = input_ids if labels is None else _check_ids("labels", labels, 2)
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
    dev = _device(model)
    logits = model(input_ids=input_ids.to(dev), use_cache=False).logits  # [B, T, V]
    target = labels[:, 1:].to(dev)  # [B, T-1]
    nll = nn.functional.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return nll.item(), int((target != IGNORE_INDEX).sum())


def _finish(nll: float, count: int) -> float:
    if count == 0:
        raise ValueError("no token was scored; give sequences of at least 2 tokens")
    if not math.isfinite(nll):
        raise ValueError("the model produced non-finite log-likelihoods; check the attention mode, dtype and weights")
    return math.exp(nll / count)


def perplexity(model: nn.Module, ids: torch.Tensor, batch_size: int = 4, progress: bool = False) -> float:
    """exp(mean next-token NLL) over ``ids`` [N, T] (each row scored on its own; T-1 targets per row)."""
    ids = _check_ids("ids", ids, 2)
    if ids.shape[1] < 2:
        raise ValueError(f"ids must be token ids [N, T] with T >= 2, got shape {tuple(ids.shape)}")
    _check_batch_size(batch_size)
    from tqdm.auto import tqdm

    nll, count = 0.0, 0
    with _eval_mode(model):
        for start in tqdm(range(0, ids.shape[0], batch_size), desc="perplexity", disable=not progress):
            n, c = score_tokens(model, ids[start : start + batch_size])
            nll, count = nll + n, count + c
    return _finish(nll, count)


def sliding_window_perplexity(
    model: nn.Module,
    token_ids: torch.Tensor,
    seq_len: int,
    stride: int | None = None,
    batch_size: int = 1,
    progress: bool = False,
) -> float:
    """Perplexity of one long text [T] with overlapping windows of ``seq_len`` tokens (see
    :func:`lolcats_lab.data.sliding_windows`): every token but the first is scored exactly once, with at
    least ``seq_len - stride`` tokens of context (except in the first window). ``stride`` defaults to
    ``seq_len // 2``; ``stride == seq_len`` gives disjoint windows (cheaper, less context)."""
    from tqdm.auto import tqdm

    from .data.packing import sliding_windows

    token_ids = _check_ids("token_ids", token_ids, 1)
    _check_batch_size(batch_size)
    inputs, labels = sliding_windows(token_ids, seq_len, stride)  # [N, L], [N, L]
    nll, count = 0.0, 0
    with _eval_mode(model):
        for start in tqdm(range(0, inputs.shape[0], batch_size), desc="perplexity", disable=not progress):
            n, c = score_tokens(model, inputs[start : start + batch_size], labels[start : start + batch_size])
            nll, count = nll + n, count + c
    return _finish(nll, count)


def group_perplexity(model: nn.Module, groups: dict[str, torch.Tensor], batch_size: int = 4) -> dict[str, float]:
    """Perplexity per group of packed rows, e.g. ``PackedData.val_groups`` (register or source -> [N_g, T])."""
    if not isinstance(groups, dict) or not groups:
        raise ValueError("groups must be a non-empty dict of name -> token ids [N, T] (e.g. PackedData.val_groups)")
    return {name: perplexity(model, rows, batch_size=batch_size) for name, rows in groups.items()}


# ----------------------------------------------------------------------------------------------------------
# generation


@dataclass(frozen=True)
class GenerationSample:
    prompt: str
    completion: str  # the generated text only, without the prompt
    new_tokens: int


@torch.no_grad()
def generate_samples(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[GenerationSample]:
    """Generate a completion for each prompt, one prompt at a time (no padding), with ``model.generate``.

    Greedy by default; with ``do_sample`` the torch RNG is seeded with ``seed`` first, so samples repeat.
    Linearized attention in linear mode decodes with its constant-size cache (lolcats_lab.models.cache).
    """
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty strings")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature!r}")
    dev = _device(model)
    eos = getattr(tokenizer, "eos_token_id", None)
    out = []
    with _eval_mode(model):
        for i, prompt in enumerate(prompts):
            ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=dev)  # [1, T]
            if ids.shape[1] == 0:
                raise ValueError(f"prompt {i} tokenised to no tokens: {prompt!r}")
            if do_sample:
                torch.manual_seed(seed + i)
            kwargs = dict(do_sample=do_sample, temperature=temperature) if do_sample else dict(do_sample=False)
            gen = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                pad_token_id=eos, **kwargs,
            )  # [1, T + n]
            new = gen[0, ids.shape[1] :]
            out.append(GenerationSample(prompt, tokenizer.decode(new, skip_special_tokens=True), int(new.numel())))
    return out


# ----------------------------------------------------------------------------------------------------------
# passkey retrieval

PASSKEY_INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. "
                 "Find it and memorize it. I will quiz you about it.")
PASSKEY_FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_NEEDLE = (" The pass key is", ". Remember it. The pass key is", ".")
PASSKEY_QUESTION = " What is the pass key? The pass key is"


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_passkey_prompt(tokenizer, context_len: int, passkey: int, depth: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """One passkey prompt of at most ``context_len`` tokens (answer included).

    Built from separately tokenised pieces (intro, filler repeats, needle, filler, question), so the answer
    tokens ``" <passkey>"`` appear verbatim in the needle. ``depth`` in [0, 1] places the needle among the
    filler repeats (0 = right after the intro, 1 = right before the question).

    Returns (prompt_ids [T_p], answer_ids [T_a]) with T_p + T_a <= context_len.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1] (0 = start, 1 = end of the filler), got {depth!r}")
    answer = _encode(tokenizer, f" {passkey}")
    needle = (_encode(tokenizer, PASSKEY_NEEDLE[0]) + answer + _encode(tokenizer, PASSKEY_NEEDLE[1]) + answer
              + _encode(tokenizer, PASSKEY_NEEDLE[2]))
    intro, filler, question = (_encode(tokenizer, s) for s in (PASSKEY_INTRO, PASSKEY_FILLER, PASSKEY_QUESTION))
    fixed = len(intro) + len(needle) + len(question) + len(answer)
    n_fill = (context_len - fixed) // len(filler)
    if n_fill < 1:
        raise ValueError(f"context_len={context_len} is too short for a passkey prompt: the fixed parts take "
                         f"{fixed} tokens and one filler sentence {len(filler)}; use at least {fixed + len(filler)}")
    before = round(depth * n_fill)
    prompt = intro + filler * before + needle + filler * (n_fill - before) + question
    return torch.tensor(prompt), torch.tensor(answer)


@dataclass(frozen=True)
class PasskeyResult:
    context_len: int  # requested length (prompts are at most this long)
    mean_tokens: float  # actual prompt + answer length, mean over trials
    trials: int
    correct: int  # greedy decoding would reproduce the whole passkey
    accuracy: float
    mean_answer_logprob: float  # log p(answer | prompt), summed over answer tokens, mean over trials

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def passkey_retrieval(
    model: nn.Module,
    tokenizer,
    context_lengths: Sequence[int],
    *,
    trials: int = 5,
    digits: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> list[PasskeyResult]:
    """Passkey accuracy per context length, in the model's current attention mode.

    For each length, ``trials`` prompts with random ``digits``-digit passkeys at evenly spread depths
    (0 .. 1). The passkeys and depths depend only on ``seed`` and the trial index, so two attention modes
    see the same prompts. Returns one :class:`PasskeyResult` per length, in order.
    """
    if isinstance(context_lengths, int) or not context_lengths:
        raise ValueError("context_lengths must be a non-empty list of ints, e.g. [256, 512, 1024]")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a positive int, got {trials!r}")
    if not isinstance(digits, int) or not 1 <= digits <= 12:
        raise ValueError(f"digits must be an int in [1, 12], got {digits!r}")
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    keys = [rng.randrange(10 ** (digits - 1), 10**digits) for _ in range(trials)]
    depths = [i / max(trials - 1, 1) for i in range(trials)]
    dev = _device(model)
    results = []
    with _eval_mode(model):
        for context_len in tqdm(context_lengths, desc="passkey", disable=not progress):
            correct, logps, lengths = 0, [], []
            for key, depth in zip(keys, depths):
                prompt, answer = make_passkey_prompt(tokenizer, int(context_len), key, depth)
                ids = torch.cat([prompt, answer])[None].to(dev)  # [1, T]
                logits = model(input_ids=ids, use_cache=False).logits[0].float()  # [T, V]
                pred = logits[prompt.numel() - 1 : -1]  # [T_a, V]: the positions that predict the answer
                answer = answer.to(dev)
                correct += bool((pred.argmax(-1) == answer).all())
                logps.append(pred.log_softmax(-1).gather(-1, answer[:, None]).sum().item())
                lengths.append(ids.shape[1])
            results.append(PasskeyResult(
                context_len=int(context_len), mean_tokens=sum(lengths) / trials, trials=trials, correct=correct,
                accuracy=correct / trials, mean_answer_logprob=sum(logps) / trials,
            ))
    return results


def passkey_by_mode(
    model: nn.Module, tokenizer, context_lengths: Sequence[int], modes: Sequence[str] = ("softmax", "linear"), **kwargs
) -> dict[str, list[PasskeyResult]]:
    """:func:`passkey_retrieval` in each attention mode (same prompts), restoring the model's mode after.

    Note: "softmax" mode of a model with LoRA adapters still applies them, so it is not the teacher; evaluate
    the base model for that.
    """
    out = {}
    for mode in modes:
        with attention_mode(model, mode):
            out[mode] = passkey_retrieval(model, tokenizer, context_lengths, **kwargs)
    return out


# ----------------------------------------------------------------------------------------------------------
# sentence embeddings (bidirectional encoders such as all-MiniLM-L6-v2)


@torch.no_grad()
def embedding_similarity(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    reference_mode: str = "softmax",
    batch_size: int = 8,
    max_length: int = 128,
) -> torch.Tensor:
    """Cosine similarity [N] between each text's mean-pooled last hidden state in the model's current attention
    mode and in ``reference_mode`` (default: the softmax teacher). all-MiniLM-L6-v2 is trained for mean pooling,
    so this is how close a linearized encoder's sentence embeddings stay to the original's."""
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("texts must be a non-empty list of non-empty strings")
    _check_batch_size(batch_size)
    from .train.transfer import backbone

    def embed() -> torch.Tensor:
        out = []
        with _eval_mode(model):
            for start in range(0, len(texts), batch_size):
                enc = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt").to(_device(model))
                hidden = backbone(model)(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                mask = enc["attention_mask"][..., None].to(hidden.dtype)  # [B, T, 1]
                out.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1))  # [B, hidden]
        return torch.cat(out).float()

    current = embed()
    with attention_mode(model, reference_mode):
        reference = embed()
    return torch.nn.functional.cosine_similarity(current, reference, dim=-1)
