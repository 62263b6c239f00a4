"""Everything at once, cached: ``prepare_data(source, tokenizer, seq_len) -> PackedData``."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lolcats_lab.data.corpus import corpus_cache_dir
from lolcats_lab.data.packing import separator_id, pack_sequences, split_documents
from lolcats_lab.data.sources import load_texts
from lolcats_lab.data.text import Document

__all__ = ["PackedData", "prepare_data", "texts_fingerprint", "tokenizer_fingerprint"]

PACK_FORMAT = 1  # bump when packing changes: older packed caches are then ignored


def texts_fingerprint(docs: Sequence[Document]) -> str:
    """sha256 over the documents' ids, tags and texts, in order."""
    h = hashlib.sha256()
    for d in docs:
        for part in (d.id, d.source, d.register, d.text):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's full serialisation when it has one (fast tokenizers), else of its class,
    name and vocabulary size."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        ident = backend.to_str()
    else:
        ident = f"{type(tokenizer).__name__}|{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}"
    return hashlib.sha256(ident.encode("utf-8")).hexdigest()


@dataclass
class PackedData:
    """Packed train and validation rows, with validation also split by a document tag.

    Attributes:
        train: LongTensor ``[N_train, T]``.
        val: LongTensor ``[N_val, T]``.
        val_groups: tag -> LongTensor ``[N_g, T]``: each group's validation documents packed on their own (a
            group with too little text for one row is left out).
        info: counts (documents, tokens, rows per split), the settings and the cache key.
    """

    train: torch.Tensor
    val: torch.Tensor
    val_groups: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def _packed_cache_dir(pack_cache_dir) -> Path:
    return Path(pack_cache_dir) if pack_cache_dir is not None else corpus_cache_dir().parent / "packed"


def prepare_data(
    source: str | os.PathLike | Sequence[str | Document] = "default",
    tokenizer=None,
    seq_len: int = 256,
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    train_sequences: int | None = None,
    val_sequences: int | None = None,
    group_by: str = "register",
    sep_token_id: int | None = None,
    cache: bool = True,
    pack_cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    **load_kwargs,
) -> PackedData:
    """Load, split, tokenise and pack a source; the packed tensors are cached on disk.

    The cache (safetensors under ``$LOLCATS_CACHE/packed``, or ``pack_cache_dir``) is keyed by the texts'
    fingerprint, the tokenizer's fingerprint, ``seq_len``, ``val_fraction``, ``seed``, ``group_by`` and the
    separator, so a repeated call returns at once and any change re-packs.

    Args:
        source, load_kwargs: passed to :func:`load_texts` (e.g. ``text_field``, or ``cache_dir`` for the
            default corpus's folder).
        tokenizer: a Hugging Face tokenizer (required).
        seq_len: tokens per row.
        val_fraction, seed: the document-level split (:func:`split_documents`).
        train_sequences, val_sequences: take exactly this many rows (the first, which mix all sources);
            ``None`` takes all. Asking for more than the text makes is an error naming tokens found vs needed.
        group_by: ``"register"`` or ``"source"``: the tag ``val_groups`` is keyed by.
        sep_token_id: separator between documents; default ``tokenizer.eos_token_id``.
        cache: read and write the packed cache.
        pack_cache_dir: the packed cache's folder; default ``$LOLCATS_CACHE/packed``
            (``~/.cache/lolcats-lab/packed``).
        progress: tqdm progress bars.

    Returns:
        :class:`PackedData`: ``train [N_train, seq_len]``, ``val [N_val, seq_len]`` (validation documents
        only), ``val_groups`` and ``info``.

    Raises:
        ValueError: no tokenizer, bad settings, or too little text for a split or for the requested number
            of sequences (the message gives the tokens found and needed).
    """
    if tokenizer is None:
        raise ValueError("prepare_data needs a tokenizer, e.g. the one load_model() returns")
    if group_by not in ("register", "source"):
        raise ValueError(f"group_by must be 'register' or 'source', got {group_by!r}")
    docs = load_texts(source, progress=progress, **load_kwargs)
    sep = separator_id(tokenizer, sep_token_id)
    settings = {"format": PACK_FORMAT, "seq_len": seq_len, "val_fraction": val_fraction, "seed": seed,
                "group_by": group_by, "sep_token_id": sep}
    key_fields = {**settings, "texts": texts_fingerprint(docs), "tokenizer": tokenizer_fingerprint(tokenizer)}
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()
    path = _packed_cache_dir(pack_cache_dir) / f"{key[:32]}.safetensors"
    data = _read_packed(path) if cache and path.is_file() else None
    if data is None:
        data = _pack_all(docs, tokenizer, seq_len, val_fraction, seed, group_by, sep, progress)
        data.info.update(settings=settings, cache_key=key)
        if cache:
            _write_packed(path, data)
    return _take(data, train_sequences, val_sequences, seq_len)


def _pack_all(docs, tokenizer, seq_len, val_fraction, seed, group_by, sep, progress) -> PackedData:
    train_docs, val_docs = split_documents(docs, val_fraction, seed)
    packed = {}
    for side, side_docs in (("train", train_docs), ("validation", val_docs)):
        try:
            packed[side] = pack_sequences(side_docs, tokenizer, seq_len, sep_token_id=sep,
                                          progress=progress and side == "train")
        except ValueError as e:
            raise ValueError(f"the {side} split ({len(train_docs)} train / {len(val_docs)} validation documents, "
                             f"val_fraction={val_fraction}): {e}") from e
    train, val = packed["train"], packed["validation"]
    groups: dict[str, torch.Tensor] = {}
    for tag in sorted({getattr(d, group_by) for d in val_docs}):
        try:
            groups[tag] = pack_sequences([d for d in val_docs if getattr(d, group_by) == tag], tokenizer, seq_len,
                                         sep_token_id=sep)
        except ValueError:  # too little validation text of this kind for one row
            continue
    info = {"documents": {"train": len(train_docs), "val": len(val_docs)},
            "rows": {"train": train.shape[0], "val": val.shape[0]},
            "tokens": {"train": train.numel(), "val": val.numel()},
            "val_groups": {k: v.shape[0] for k, v in groups.items()}}
    return PackedData(train=train, val=val, val_groups=groups, info=info)


def _take(data: PackedData, n_train: int | None, n_val: int | None, seq_len: int) -> PackedData:
    for name, n, rows in (("train", n_train, data.train), ("val", n_val, data.val)):
        if n is not None and not 1 <= n <= rows.shape[0]:
            raise ValueError(
                f"asked for {n} {name} sequences of seq_len={seq_len} ({n * seq_len} tokens) but the {name} split "
                f"packs into {rows.shape[0]} sequences ({rows.numel()} tokens); pass more text, a smaller seq_len, "
                f"fewer sequences{', or a larger val_fraction' if name == 'val' else ''}"
            )
    train = data.train if n_train is None else data.train[:n_train]
    val = data.val if n_val is None else data.val[:n_val]
    return PackedData(train=train, val=val, val_groups=data.val_groups, info=data.info)


def _write_packed(path: Path, data: PackedData) -> None:
    from safetensors.torch import save_file

    from lolcats_lab.io import atomic_path

    tensors = {"train": data.train.contiguous(), "val": data.val.contiguous()}
    tensors.update({f"val_group/{k}": v.contiguous() for k, v in data.val_groups.items()})
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"info": json.dumps(data.info)})


def _read_packed(path: Path) -> PackedData | None:
    """The cached tensors, or None when the file cannot be read (it is then rebuilt and overwritten)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads(f.metadata()["info"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # a damaged cache file is just re-packed
        return None
    groups = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("val_group/")}
    return PackedData(train=tensors["train"], val=tensors["val"], val_groups=groups, info=info)
