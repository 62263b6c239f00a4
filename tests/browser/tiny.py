"""A tiny random Llama and a word-level tokenizer, built offline, for the widget tests and the browser
check's notebook (no hub access, loads in well under a second)."""

from __future__ import annotations

import torch

WORDS = ["<unk>", "<s>"] + [f"w{i}" for i in range(8)] + (
    "the cat sat on mat a dog ran to park and then slept in sun it was warm day bird sang tree".split()
)


def tiny_tokenizer():
    """A ``PreTrainedTokenizerFast`` over whitespace-separated words (unknown words map to <unk>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")


def tiny_linearized_llama(seed: int = 0, max_positions: int = 64, attention: str = "hybrid-tk", window: int = 4):
    """LlamaConfig(hidden 32, 2 layers, 4 heads / 2 KV heads, vocab 100), linearized with Hedgehog maps."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lolcats_lab.models import linearize

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=100, max_position_embeddings=max_positions,
                         initializer_range=0.2, attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()
    return linearize(model, attention=attention, feature_map="hedgehog", window=window, feature_dim=8,
                     feature_map_kwargs={"init": "random"})
