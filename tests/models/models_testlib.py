"""Tiny random Hugging Face models for the model-conversion tests (saved once per session, loaded
through ``load_model(local_dir)`` like any user directory)."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
from transformers import Qwen2Config, Qwen2ForCausalLM

VOCAB = 101
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, max_position_embeddings=256,
               initializer_range=0.2)  # spikier attention than the default 0.02, so linear != softmax


def tiny_model(arch: str, seed: int = 0):
    """A randomly initialised tiny model: llama (GQA 4/2), mistral (sliding window 8, GQA 4/1), qwen2
    (q/k/v biases, MHA 4/4), bert (encoder, 4 heads)."""
    torch.manual_seed(seed)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**_COMMON, num_attention_heads=4, num_key_value_heads=2))
    if arch == "mistral":
        return MistralForCausalLM(MistralConfig(**_COMMON, num_attention_heads=4, num_key_value_heads=1, sliding_window=8))
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**_COMMON, num_attention_heads=4, num_key_value_heads=4))
    if arch == "bert":
        return BertModel(BertConfig(**_COMMON, num_attention_heads=4))
    raise ValueError(arch)


ARCHS = ("llama", "mistral", "qwen2", "bert")


def save_tiny(arch: str, directory) -> str:
    model = tiny_model(arch)
    model.save_pretrained(str(directory))
    return str(directory)


def batch(B: int = 2, T: int = 13, seed: int = 1, left_pad: int = 3, right_pad: int = 0):
    """input_ids [B, T] and attention_mask [B, T]: row 1 has ``left_pad`` padding tokens at the start and
    ``right_pad`` at the end."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if left_pad:
        mask[1, :left_pad] = 0
    if right_pad:
        mask[1, T - right_pad :] = 0
    return ids, mask


def outputs(model, ids, mask=None, **kw) -> torch.Tensor:
    """Logits of a causal LM or last hidden states of an encoder, fp32."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=False, **kw) if hasattr(model, "lm_head") else model(
            input_ids=ids, attention_mask=mask, **kw
        )
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float()


def perturb_feature_maps(model, seed: int = 0, scale: float = 0.3) -> None:
    """Move every trainable parameter (feature maps, window logits) away from its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_((torch.randn(p.shape, generator=g) * scale).to(p))
