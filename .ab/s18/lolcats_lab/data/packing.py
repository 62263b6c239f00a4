"""From documents to training rows: the train/validation split, packing, evaluation windows, batches."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from lolcats_lab.data.text import Document

__all__ = ["IGNORE_INDEX", "TextDataset", "make_dataloader", "pack_sequences", "sliding_windows", "split_documents"]

IGNORE_INDEX = -100  # label value that Hugging Face losses skip


# ----------------------------------------------------------------------------------------------------------
# split


def _unit_hash(text: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``text`` and ``seed``."""
    h = hashlib.sha256(f"{seed}\x00{text}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_documents(
    docs: Sequence[Document], val_fraction: float = 0.05, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """Deterministic document-level train/validation split.

    Each document goes to validation when a hash of ``(seed, text)`` falls below ``val_fraction``: the split
    does not depend on document order or on the other documents, and identical texts always land on the same
    side, so validation never holds training text. When the hash puts no document on one side, the document
    with the lowest (highest) hash is moved there, so both sides are non-empty given two or more documents.
    Both lists are returned in hash order (a fixed pseudo-random shuffle: packed sequences mix sources).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    if len(docs) < 2:
        raise ValueError(f"need at least 2 documents to split into train and validation, got {len(docs)}; "
                         "pass more text (or longer .txt files, which are cut into several documents)")
    keyed = sorted(((_unit_hash(d.text, seed), d.id, d) for d in docs), key=lambda x: (x[0], x[1]))
    n_val = sum(1 for u, _, _ in keyed if u < val_fraction)
    n_val = min(max(n_val, 1), len(keyed) - 1)
    while n_val < len(keyed) and keyed[n_val - 1][0] == keyed[n_val][0]:  # identical texts: keep them together
        n_val += 1
    if n_val == len(keyed):
        raise ValueError(f"cannot split {len(docs)} documents: they all have the same text; pass different texts")
    return [d for _, _, d in keyed[n_val:]], [d for _, _, d in keyed[:n_val]]


# ----------------------------------------------------------------------------------------------------------
# tokenise and pack


def separator_id(tokenizer, sep_token_id: int | None = None) -> int:
    """``sep_token_id`` if given, else the tokenizer's EOS id (an error when it has none)."""
    if sep_token_id is not None:
        return int(sep_token_id)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; pass sep_token_id= the id to put between documents")
    return int(eos)


def _tokenize(texts: list[str], tokenizer, batch: int = 256, progress: bool = False) -> list[list[int]]:
    from tqdm.auto import tqdm

    out: list[list[int]] = []
    for i in tqdm(range(0, len(texts), batch), desc="tokenize", disable=not progress, unit="batch"):
        out.extend(tokenizer(texts[i : i + batch], add_special_tokens=False)["input_ids"])
    return out


def pack_sequences(
    texts: Iterable[str | Document],
    tokenizer,
    seq_len: int,
    *,
    num_sequences: int | None = None,
    sep_token_id: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Tokenise texts and pack them into fixed-length rows.

    Every text is tokenised without special tokens and followed by one separator (the tokenizer's EOS unless
    ``sep_token_id`` is given); the concatenation is cut into consecutive rows of ``seq_len`` tokens and the
    ragged tail (fewer than ``seq_len`` tokens) is DROPPED, so no row holds padding. Rows can span documents.

    Args:
        texts: strings or :class:`Document` s, packed in the given order.
        tokenizer: a Hugging Face tokenizer (called as ``tokenizer(list_of_str, add_special_tokens=False)``).
        seq_len: tokens per row.
        num_sequences: return exactly this many rows (the first ones); an error if fewer can be made.
        sep_token_id: the id between documents; default ``tokenizer.eos_token_id``.
        progress: tqdm progress while tokenising.

    Returns:
        LongTensor ``[N, seq_len]``.

    Raises:
        ValueError: ``seq_len`` < 2, or too little text for one row (or for ``num_sequences`` rows); the
            message gives the tokens found and needed.
    """
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an integer >= 2 (a next-token target needs two tokens), got {seq_len!r}")
    if num_sequences is not None and num_sequences < 1:
        raise ValueError(f"num_sequences must be a positive integer or None (all), got {num_sequences!r}")
    strings = [t.text if isinstance(t, Document) else t for t in texts]
    sep = separator_id(tokenizer, sep_token_id)
    ids = [tok for seq in _tokenize(strings, tokenizer, progress=progress) for tok in (*seq, sep)]
    n_rows = len(ids) // seq_len
    need = num_sequences or 1
    if n_rows < need:
        raise ValueError(
            f"too little text: found {len(ids)} tokens in {len(strings)} documents (separators included), which "
            f"make {n_rows} sequences of seq_len={seq_len}; {need} sequences need {need * seq_len} tokens. "
            "Pass more text, a smaller seq_len, or fewer sequences."
        )
    n_rows = num_sequences or n_rows
    return torch.tensor(ids[: n_rows * seq_len], dtype=torch.long).view(n_rows, seq_len)  # [N, T]


def sliding_windows(
    token_ids: torch.Tensor, seq_len: int, stride: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping windows over one long token sequence, for perplexity with context (HF's strided method).

    Window ``k`` covers tokens ``[k * stride, k * stride + seq_len)`` (the last window ends at the last token).
    Its labels equal its tokens where that token is scored and ``-100`` elsewhere: each token is scored in
    the first window that holds it with at least one token of context, so with ``stride < seq_len`` every
    token but the very first is scored exactly once, and later windows give their scored tokens
    ``seq_len - stride`` tokens of earlier context. (With ``stride == seq_len`` the windows do not overlap and
    each window's first token goes unscored.) Labels are not shifted: Hugging Face models shift them.

    Args:
        token_ids: LongTensor ``[T]``.
        seq_len: window length; a sequence shorter than that gives one window ``[1, T]``.
        stride: step between window starts, ``1 <= stride <= seq_len``; default ``seq_len // 2``.

    Returns:
        ``(input_ids, labels)``, both LongTensor ``[N, L]`` with ``L = min(seq_len, T)``.
    """
    if token_ids.dim() != 1:
        raise ValueError(f"token_ids must be 1-D [T], got shape {tuple(token_ids.shape)}")
    T = token_ids.numel()
    if T < 2:
        raise ValueError(f"token_ids must hold at least 2 tokens to score one, got {T}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    stride = max(seq_len // 2, 1) if stride is None else stride
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride must satisfy 1 <= stride <= seq_len={seq_len}, got {stride}")
    L = min(seq_len, T)
    starts = list(range(0, max(T - L, 0) + 1, stride))
    if starts[-1] != T - L:
        starts.append(T - L)  # a last window that ends exactly at the last token
    inputs, labels = [], []
    scored_until = 1  # absolute index of the first token not yet scored (token 0 has no context)
    for s in starts:
        window = token_ids[s : s + L]  # [L]
        lab = torch.full_like(window, IGNORE_INDEX)
        first = max(scored_until, s + 1) - s  # position 0 of a window has no context inside it
        lab[first:] = window[first:]
        scored_until = s + L
        inputs.append(window)
        labels.append(lab)
    return torch.stack(inputs), torch.stack(labels)  # [N, L], [N, L]


class TextDataset(Dataset):
    """Rows of a packed ``[N, T]`` tensor as ``{"input_ids": [T], "labels": [T]}`` (labels unshifted, as
    Hugging Face causal-LM losses expect)."""

    def __init__(self, sequences: torch.Tensor):
        if sequences.dim() != 2 or sequences.dtype != torch.long:
            raise ValueError(f"sequences must be a LongTensor [N, T], got {sequences.dtype} {tuple(sequences.shape)}")
        self.sequences = sequences

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.sequences[i]  # [T]
        return {"input_ids": row, "labels": row}


def make_dataloader(
    sequences: torch.Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    """A DataLoader over packed rows giving ``{"input_ids": [B, T], "labels": [B, T]}``; the shuffle order is
    fixed by ``seed`` (the same on every run and machine)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(TextDataset(sequences), batch_size=batch_size, shuffle=shuffle, generator=generator,
                      drop_last=drop_last)
