"""Documents and the text handling the corpus builder and the file loaders share: decoding, Gutenberg
headers, cutting long texts at paragraph boundaries, and atomic file writes."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from lolcats_lab.io import atomic_write_text, sha256_file  # noqa: F401  (re-exported: data's public helpers)

__all__ = [
    "DOC_CHARS",
    "Document",
    "atomic_write_text",
    "decode_text",
    "sha256_file",
    "split_paragraphs",
    "strip_gutenberg",
]

DOC_CHARS = 12_000  # max characters per document (~3.5k SmolLM2 tokens): fine-grained split, whole paragraphs


@dataclass(frozen=True)
class Document:
    """One unit of text with the tags that survive into evaluation.

    Args:
        text: the text itself.
        id: unique and stable within its corpus, e.g. ``"shakespeare/hamlet/003"`` or ``"notes.txt#2"``.
        source: fine-grained origin tag (``"kjv"``, ``"django-docs"``, a file stem, ...).
        register: coarse kind of text for per-register perplexity: ``"verse"``, ``"prose"``,
            ``"scripture"``, ``"docs"``, or ``"text"`` when unknown.
        title: human-readable title of the work the document comes from.
    """

    text: str
    id: str
    source: str = "local"
    register: str = "text"
    title: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


_GUTENBERG_START = re.compile(
    r"^\s*\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$", re.M | re.I
)
_GUTENBERG_END = re.compile(
    r"^\s*\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$|^\s*End of (the )?Project Gutenberg.*$", re.M | re.I
)


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg licence header (up to its ``*** START OF ...`` line) and footer (from its
    ``*** END OF ...`` / ``End of Project Gutenberg`` line). Text without the markers is returned as is."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


def decode_text(raw: bytes) -> str:
    """UTF-8 where valid, else latin-1 (older Gutenberg files); newlines normalised to ``\\n``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")


def split_paragraphs(text: str, max_chars: int = DOC_CHARS) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars`` characters at paragraph boundaries.

    Paragraphs (separated by blank lines) are packed greedily and re-joined with one blank line; a paragraph
    longer than ``max_chars`` is cut at line boundaries, a line longer than that at ``max_chars``. Trailing
    spaces are stripped, leading indentation (verse) is kept. Returns no empty pieces.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be a positive number of characters, got {max_chars}")
    paragraphs = [p.strip("\n") for p in re.split(r"\n[ \t]*\n", text)]
    paragraphs = ["\n".join(line.rstrip() for line in p.split("\n")) for p in paragraphs if p.strip()]
    units: list[str] = []
    for p in paragraphs:
        if len(p) <= max_chars:
            units.append(p)
            continue
        # an overlong paragraph (a whole book of blank verse): groups of whole lines, overlong lines cut hard
        lines = [ln[i : i + max_chars] for ln in p.split("\n") for i in range(0, max(len(ln), 1), max_chars)]
        units.extend(_greedy_join(lines, "\n", max_chars))
    return [p for p in _greedy_join(units, "\n\n", max_chars) if p.strip()]


def _greedy_join(parts: list[str], sep: str, max_chars: int) -> list[str]:
    """Join consecutive ``parts`` with ``sep`` into pieces of at most ``max_chars`` (each part fits alone)."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for part in parts:
        if current and size + len(sep) + len(part) > max_chars:
            pieces.append(sep.join(current))
            current, size = [], 0
        size += len(part) + (len(sep) if current else 0)
        current.append(part)
    if current:
        pieces.append(sep.join(current))
    return pieces


