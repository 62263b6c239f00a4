"""Where text comes from: ``load_texts(source) -> list[Document]``.

Sources: ``"default"`` (the corpus :func:`~lolcats_lab.data.corpus.build_default_corpus` builds from PyPI
packages), ``"sample"`` (the ~50 KB sample shipped in ``data/sample.jsonl``), a ``.txt`` file, a ``.jsonl``
file (one record per line with a text field), a folder of those, ``"hf:<name>"`` for a Hugging Face
``datasets`` dataset (needs ``pip install datasets`` and the hub), or a list of strings/Documents.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from lolcats_lab.data.corpus import build_default_corpus, iter_corpus
from lolcats_lab.data.text import Document, decode_text, split_paragraphs

__all__ = ["FILE_DOC_CHARS", "SAMPLE_PATH", "format_alpaca", "load_texts"]

SAMPLE_PATH = Path(__file__).resolve().parents[2] / "data" / "sample.jsonl"
FILE_DOC_CHARS = 12_000  # .txt files are cut into documents of at most this many characters (paragraph bounds)


def format_alpaca(record: dict) -> str:
    """Alpaca-style record (``instruction``, optional ``input``, ``output``) -> one text, parts joined by
    blank lines (the paper's default data, ``yahma/alpaca-cleaned``, has this form)."""
    parts = [record.get("instruction", ""), record.get("input", ""), record.get("output", "")]
    return "\n\n".join(p.strip() for p in parts if p and p.strip())


def _record_text(record: dict, text_field: str | Callable[[dict], str], where: str) -> str:
    if callable(text_field):
        return text_field(record)
    if text_field in record:
        value = record[text_field]
        if not isinstance(value, str):
            raise ValueError(f"{where}: field {text_field!r} must be a string, got {type(value).__name__}")
        return value
    if "instruction" in record and "output" in record:  # Alpaca format without a text field
        return format_alpaca(record)
    raise ValueError(
        f"{where}: record has no {text_field!r} field (fields: {sorted(record)}); pass text_field= the name "
        "of the field that holds the text, or a function record -> str"
    )


def _read_text_file(path: Path) -> str:
    """A text file's contents, newlines normalised; clear errors for unreadable and binary files."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise OSError(f"cannot read text file {path}: {e.strerror or e}; check that it exists and is readable") from e
    if b"\x00" in raw[:8192]:
        raise ValueError(f"{path} looks like a binary file (it contains NUL bytes); pass UTF-8 text files")
    return decode_text(raw)  # UTF-8, else latin-1 (every byte maps to a character)


def _load_txt(path: Path, root: Path) -> list[Document]:
    rel = path.relative_to(root).as_posix() if path != root else path.name
    pieces = split_paragraphs(_read_text_file(path), FILE_DOC_CHARS)
    return [Document(text=p, id=f"{rel}#{i}", source=path.stem, register="text", title=path.stem)
            for i, p in enumerate(pieces)]


def _load_jsonl(path: Path, root: Path, text_field: str | Callable[[dict], str]) -> list[Document]:
    rel = path.relative_to(root).as_posix() if path != root else path.name
    docs = []
    for lineno, line in enumerate(_read_text_file(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} is not valid JSON ({e.msg}); a .jsonl file holds one JSON object per "
                             "line") from e
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object per line, got {type(rec).__name__}")
        text = _record_text(rec, text_field, where)
        docs.append(Document(
            text=text,
            id=str(rec.get("id", f"{rel}:{lineno}")),
            source=str(rec.get("source", path.stem)),
            register=str(rec.get("register", "text")),
            title=str(rec.get("title", "")),
        ))
    return docs


def _load_hf(name: str, *, split: str, config: str | None, text_field) -> list[Document]:
    try:
        import datasets  # optional: only this source needs it
    except ImportError as e:
        raise ImportError(
            f"source 'hf:{name}' needs the Hugging Face `datasets` package: pip install datasets "
            "(and the hub must be reachable: unset HF_HUB_OFFLINE). Offline, pass local .txt/.jsonl files "
            "or 'default'."
        ) from e
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # the hub, the network or the name: datasets raises many types
        raise RuntimeError(f"datasets.load_dataset({name!r}, {config!r}, split={split!r}) failed: {e}; check the "
                           "name, that the hub is reachable and that HF_HUB_OFFLINE is unset") from e
    tag = name.rsplit("/", 1)[-1]
    return [Document(text=_record_text(rec, text_field, f"hf:{name}[{i}]"), id=f"{name}:{split}:{i}",
                     source=tag, register="text", title=name) for i, rec in enumerate(ds)]


def load_texts(
    source: str | os.PathLike | Sequence[str | Document] = "default",
    *,
    text_field: str | Callable[[dict], str] = "text",
    hf_split: str = "train",
    hf_config: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[Document]:
    """Read documents from a source.

    Args:
        source: ``"default"`` (the built default corpus, built on first use: see
            :func:`~lolcats_lab.corpus.build_default_corpus`), ``"sample"`` (``data/sample.jsonl``), a path to a
            ``.txt`` file (cut at paragraph boundaries into documents of at most ``FILE_DOC_CHARS`` characters,
            tagged with the file stem), a ``.jsonl`` file (one object per line; optional ``id``, ``source``,
            ``register``, ``title`` fields are kept), a folder (every ``.txt``/``.jsonl`` below it, in sorted
            order), ``"hf:<dataset name>"`` (Hugging Face ``datasets``; online only), or a list of strings or
            :class:`Document` s.
        text_field: the JSON field with the text, or a function record -> str. Records without it but with
            ``instruction`` and ``output`` (Alpaca) are joined with :func:`format_alpaca`.
        hf_split, hf_config: the split and configuration for ``"hf:"`` sources.
        cache_dir: the default corpus's cache folder (see ``build_default_corpus``).
        progress: tqdm progress while the default corpus is built.

    Returns:
        The documents, in a deterministic order. Empty texts are dropped.

    Raises:
        ValueError: unknown source, unsupported file type, bad JSON, missing text field, empty result.
        OSError: a file cannot be read. ImportError: ``"hf:"`` without ``datasets`` installed.
    """
    if isinstance(source, (list, tuple)):
        docs = [d if isinstance(d, Document) else Document(text=_check_str(d, i), id=f"text:{i}")
                for i, d in enumerate(source)]
        where = "the given list"
    elif not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a string, a path or a list of texts, got {type(source).__name__}")
    elif source == "default":
        docs = list(iter_corpus(build_default_corpus(cache_dir=cache_dir, progress=progress)))
        where = "the default corpus"
    elif source == "sample":
        if not SAMPLE_PATH.is_file():
            raise FileNotFoundError(f"the shipped sample {SAMPLE_PATH} is missing (it lives in the source tree's "
                                    "data/ folder; install the project with `pip install -e .`)")
        docs = list(iter_corpus(SAMPLE_PATH))
        where = str(SAMPLE_PATH)
    elif isinstance(source, str) and source.startswith("hf:"):
        docs = _load_hf(source[3:], split=hf_split, config=hf_config, text_field=text_field)
        where = source
    else:
        path = Path(source)
        where = str(path)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
            if not files:
                raise ValueError(f"folder {path} holds no .txt or .jsonl files; put text files there or pass a file")
            docs = [d for f in files for d in _load_file(f, path, text_field)]
        elif path.exists():
            docs = _load_file(path, path, text_field)
        else:
            raise ValueError(
                f"unknown source {os.fspath(source)!r}: expected 'default', 'sample', an existing .txt/.jsonl file "
                "or folder, 'hf:<dataset name>', or a list of texts"
            )
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise ValueError(f"no text found in {where}: every document is empty")
    return docs


def _check_str(x, i: int) -> str:
    if not isinstance(x, str):
        raise TypeError(f"source list item {i} must be a str or Document, got {type(x).__name__}")
    return x


def _load_file(path: Path, root: Path, text_field) -> list[Document]:
    if path.suffix == ".txt":
        return _load_txt(path, root)
    if path.suffix == ".jsonl":
        return _load_jsonl(path, root, text_field)
    raise ValueError(f"unsupported file type {path.suffix!r} for {path}: pass a .txt or .jsonl file (or a folder)")
