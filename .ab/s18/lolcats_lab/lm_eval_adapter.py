"""An lm-evaluation-harness model adapter for (linearized) Hugging Face causal LMs.

``lm_eval`` is an optional dependency (``pip install "lm_eval>=0.4"``): this module imports without it, and
:class:`LolcatsLM` then only offers the three request methods, which you can call directly. With lm_eval
installed, the class subclasses ``lm_eval.api.model.LM`` and is registered as ``"lolcats"`` when this module
is imported. lm_eval's own ``lm_eval`` command does not import it, so use this module's command line (the same
arguments as ``lm_eval``, with ``--model lolcats`` available):

    python -m lolcats_lab.lm_eval_adapter --model lolcats --model_args checkpoint=runs/x/checkpoint,mode=linear --tasks hellaswag

or from Python, ``lm_eval.simple_evaluate(model=LolcatsLM(model, tokenizer), tasks=[...])`` (or
``model="lolcats", model_args="checkpoint=...,mode=linear"`` after importing this module).

Requests carry ``.args`` (lm_eval's ``Instance``):

* ``loglikelihood``: (context, continuation) -> (sum log p(continuation tokens | context), is_greedy).
  Context and continuation are tokenised separately and concatenated (lm_eval's HF convention, after moving
  trailing spaces of the context to the continuation); an empty context is replaced by the EOS token. When
  the pair exceeds ``max_length`` the context is cut from the left.
* ``loglikelihood_rolling``: (text,) -> total log-likelihood of every token of the text, the first one
  conditioned on EOS, scored in disjoint windows of ``max_length`` tokens, each window conditioned on the
  ``max_length - window`` tokens before it (lm_eval's rolling windows, context overlap 1).
* ``generate_until``: (context, gen_kwargs) -> greedy continuation, cut at the first stop string of
  ``gen_kwargs["until"]``, at most ``gen_kwargs["max_gen_toks"]`` tokens.

Everything runs in the model's current attention mode (``mode=`` sets it at construction).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

try:  # optional: subclass lm_eval's base class when it is installed
    from lm_eval.api.model import LM as _LMBase

    HAVE_LM_EVAL = True
except ImportError:  # pragma: no cover - depends on the environment
    _LMBase = object
    HAVE_LM_EVAL = False

__all__ = ["HAVE_LM_EVAL", "LolcatsLM"]


def _args(request) -> tuple:
    """The argument tuple of an lm_eval ``Instance`` (``.args``), or a plain tuple."""
    args = getattr(request, "args", request)
    if not isinstance(args, tuple):
        raise TypeError(f"each request must be an lm_eval Instance or a tuple of arguments, got {type(request).__name__}")
    return args


class LolcatsLM(_LMBase):
    """lm-eval LM over a model + tokenizer (or a checkpoint written by ``save_linearized``).

    Args:
        model: a causal LM (linearized or not); or None with ``checkpoint``.
        tokenizer: its Hugging Face tokenizer (needs ``eos_token_id``).
        checkpoint: a ``save_linearized`` directory to load instead (with ``base``: the base model name/path,
            default the one named in the checkpoint).
        mode: attention mode to set ("softmax", "linear"); None keeps the model's current mode.
        max_length: context window in tokens; default ``model.config.max_position_embeddings`` (capped at 4096).
        max_gen_toks: default cap on generated tokens.
        batch_size: requests per forward pass in ``loglikelihood`` (padding is on the right, so causal models
            score each row exactly as alone).
        device: move the model there first; "cuda..." without CUDA runs on the CPU with a warning (lm_eval's
            command line passes "cuda" by default).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        tokenizer=None,
        *,
        checkpoint: str | None = None,
        base: str | None = None,
        mode: str | None = None,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,  # accepted for lm_eval's create_from_arg_string; unused
        device: str | None = None,
    ):
        super().__init__()
        if (model is None) == (checkpoint is None):
            raise ValueError("pass exactly one of model= (with tokenizer=) or checkpoint= (a save_linearized directory)")
        if checkpoint is not None:
            from .models import load_linearized

            model = load_linearized(checkpoint, base=base)
            tokenizer = tokenizer or getattr(model, "lolcats_tokenizer", None)
        if tokenizer is None or getattr(tokenizer, "eos_token_id", None) is None:
            raise ValueError("tokenizer must be given and have an eos_token_id (used for empty contexts and rolling scores)")
        batch_size = int(batch_size) if str(batch_size).isdigit() else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int (lm_eval's 'auto' is not supported), got {batch_size!r}")
        if device is not None:
            if str(device).startswith("cuda") and not torch.cuda.is_available():
                # lm_eval's command line passes device="cuda" unless told otherwise
                warnings.warn(f"device={device!r} but CUDA is not available; running on the CPU (pass --device cpu "
                              "to silence this)", stacklevel=2)
                device = "cpu"
            model = model.to(device)
        if mode is not None:
            from .models.convert import attention_modules, set_attention_mode

            if attention_modules(model):
                set_attention_mode(model, mode)
            elif mode != "softmax":
                raise ValueError(f"model is not linearized, so mode must be 'softmax' or None, got {mode!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        cfg_len = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 2048
        self._max_length = int(max_length or min(cfg_len, 4096))
        if self._max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self._max_length}")
        self.max_gen_toks = int(max_gen_toks)
        self._batch_size = batch_size

    # lm_eval reads these
    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "lolcats")).replace("/", "__")

    def tok_encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------------------------------------
    # scoring

    @torch.no_grad()
    def _score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) -> (sum log p(continuation), greedy?) for each pair, batched."""
        out = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            rows = [(c + x)[-(self.max_length + 1) :][:-1] for c, x in chunk]  # inputs: all but the last token
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), self.eot_token_id, dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = torch.tensor(r)
            mask = (torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
            logp = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                              use_cache=False).logits.float().log_softmax(-1)  # [b, W, V]
            for i, (r, (_, cont)) in enumerate(zip(rows, chunk)):
                n = len(cont)
                pos = torch.arange(len(r) - n, len(r), device=self.device)  # positions predicting the continuation
                target = torch.tensor(cont, device=self.device)
                lp = logp[i, pos]  # [n, V]
                out.append((lp.gather(-1, target[:, None]).sum().item(), bool((lp.argmax(-1) == target).all())))
        return out

    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_space = len(context) - len(context.rstrip())
        if n_space:  # "Q: x " + "A" -> "Q: x" + " A": tokenizers attach spaces to the following word
            context, continuation = context[:-n_space], context[-n_space:] + continuation
        ctx = self.tok_encode(context) if context else [self.eot_token_id]
        cont = self.tok_encode(continuation)
        if not cont:
            raise ValueError(f"continuation {continuation!r} tokenised to no tokens; it cannot be scored")
        if len(cont) > self.max_length:
            raise ValueError(f"continuation has {len(cont)} tokens, more than max_length={self.max_length}")
        return ctx, cont

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """[(context, continuation)] -> [(log-likelihood of the continuation, whether greedy decoding gives it)]."""
        pairs = []
        for req in requests:
            context, continuation = _args(req)[:2]
            pairs.append(self._split(context, continuation))
        return self._score(pairs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """[(text,)] -> [total log-likelihood of the text], first token conditioned on EOS."""
        results = []
        for req in requests:
            (text,) = _args(req)[:1]
            tokens = self.tok_encode(text)
            if not tokens:
                results.append(0.0)
                continue
            seq = [self.eot_token_id] + tokens  # position 0 is the condition, never scored
            N, L = len(seq), self.max_length
            pairs = []
            for s in range(1, N, L):  # disjoint blocks of targets seq[s:e], each with up to L - (e - s) context
                e = min(s + L, N)
                pairs.append((seq[max(0, e - L - 1) : s], seq[s:e]))
            results.append(sum(lp for lp, _ in self._score(pairs)))
        return results

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """[(context, {"until": [...], "max_gen_toks": n})] -> [greedy continuation cut at the first stop string]."""
        out = []
        for req in requests:
            context, gen_kwargs = _args(req)[:2]
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            if gen_kwargs.get("do_sample"):
                raise ValueError("LolcatsLM.generate_until decodes greedily; do_sample=True is not supported")
            ids = self.tok_encode(context) or [self.eot_token_id]
            ids = ids[-(self.max_length - max_new) :] if max_new < self.max_length else ids[-1:]
            inp = torch.tensor([ids], device=self.device)
            gen = self.model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new,
                                      do_sample=False, pad_token_id=self.eot_token_id)
            text = self.tokenizer.decode(gen[0, inp.shape[1] :], skip_special_tokens=True)
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out.append(text)
        return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lolcats_lab.lm_eval_adapter [lm_eval arguments]``: lm_eval's command line with ``--model
    lolcats`` registered (lm_eval's own ``lm_eval`` command never imports this module)."""
    if not HAVE_LM_EVAL:
        raise SystemExit("lm_eval is not installed: pip install -e '.[eval]' (or pip install 'lm_eval>=0.4')")
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if HAVE_LM_EVAL and __name__ != "__main__":  # pragma: no cover - depends on the environment
    # lm_eval fills its registry with the built-in models ("hf", ...) only when the registry is still empty
    # at the first lookup; registering "lolcats" first would hide them, so load that table first
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import register_model

    register_model("lolcats")(LolcatsLM)

if __name__ == "__main__":  # run through the imported module, so "lolcats" is registered exactly once
    from lolcats_lab.lm_eval_adapter import main as _main

    _main()
