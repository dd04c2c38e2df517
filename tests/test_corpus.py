"""Corpora of documents: folders, JSONL, Parquet and gzip read strictly, the split by document,
end-of-text after each document, and a run that refuses a corpus changed under it."""

import gzip
import json

from conftest import read_documents, split_documents
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blu.config import Budget, TextSettings
from blu.data.sources import Source
from blu.data.split import Corpus
from blu.errors import BluError
from blu.runs import create_run, resume_run


def plays(shakespeare, n=60) -> list[str]:
    """n documents of a few hundred characters each."""
    parts = shakespeare.read_text(encoding="utf-8").split("\n\n")
    return ["\n\n".join(parts[i : i + 5]) for i in range(0, 5 * n, 5)]


@pytest.fixture
def folder(tmp_path, shakespeare):
    root = tmp_path / "books"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    for i, text in enumerate(plays(shakespeare, 12)):
        (root / ("sub" if i % 3 else "") / f"play{i:02}.txt").write_text(text, encoding="utf-8")
    (root / "empty.txt").write_text("")
    (root / "notes.md").write_text("# notes\nnot a play\n")
    (root / ".git" / "index").write_bytes(b"\x00\x01 hidden files are left out")
    return root


def test_a_folder_is_every_file_below_it_in_sorted_order(folder):
    """A folder is every file below it in sorted order, hidden ones left out, --ext filtering, an empty
    file no document."""
    names = [f["path"] for f in Source(folder).manifest()]
    assert names == sorted(names) and "sub/play01.txt" in names and ".git/index" not in names
    assert "empty.txt" in names and len(read_documents(folder)) == 13  # 12 plays and the notes; the empty file is no document
    assert [f["path"] for f in Source(folder, ext=[".md"]).manifest()] == ["notes.md"]


def test_a_bad_file_is_named_with_the_reason_or_skipped_and_listed(folder):
    """A non-UTF-8 file in a folder is named with the offset of its bad byte; with --skip-bad-files it
    is left out and listed."""
    (folder / "sub" / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(BluError, match=r"sub/latin1.txt is not UTF-8: invalid byte 0xe9 at offset 3.*--skip-bad-files"):
        Corpus(Source(folder), None, 0.1, 0).scan()
    plan = Corpus(Source(folder, skip_bad=True), None, 0.1, 0).scan()
    assert len(plan.skipped) == 1 and "latin1.txt" in plan.skipped[0] and plan.documents == [13]
    assert plan.skipped_files == ["sub/latin1.txt"]


def test_jsonl_parquet_and_gzip_give_the_same_documents(tmp_path, shakespeare):
    """JSONL, gzip of it, Parquet (over several row groups) and a gzip text give the same documents,
    and a missing field or column is named."""
    documents = plays(shakespeare, 30)
    lines = "".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(documents))
    (tmp_path / "docs.jsonl").write_text(lines + "\n", encoding="utf-8")  # a blank line is no document
    (tmp_path / "docs.jsonl.gz").write_bytes(gzip.compress(lines.encode("utf-8")))
    pq.write_table(pa.table({"content": documents}), tmp_path / "docs.parquet", row_group_size=7)  # 5 row groups
    (tmp_path / "play.txt.gz").write_bytes(gzip.compress(documents[0].encode("utf-8")))
    assert read_documents(tmp_path / "docs.jsonl") == documents
    assert read_documents(tmp_path / "docs.jsonl.gz") == documents
    assert read_documents(tmp_path / "docs.parquet", text_field="content") == documents
    assert read_documents(tmp_path / "play.txt.gz") == documents[:1]
    with pytest.raises(BluError, match="has no column 'text'.*content"):
        read_documents(tmp_path / "docs.parquet")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"title": "no text"}\n')
    with pytest.raises(BluError, match="bad.jsonl: line 2 has no string field 'text'"):
        read_documents(tmp_path / "bad.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(BluError, match="bad.jsonl: line 2 is not JSON"):
        read_documents(tmp_path / "bad.jsonl")


def test_the_split_by_document_does_not_move_when_documents_are_added(shakespeare):
    """The document split is fixed by each document's seeded hash: adding documents never moves one,
    the seed chooses, and both sides get at least one."""
    documents = plays(shakespeare, 200)
    train, validation = split_documents(documents[:100], 0.1, seed=7)
    more_train, more_validation = split_documents(documents, 0.1, seed=7)
    assert set(validation) <= set(more_validation) and set(train) <= set(more_train)
    assert 2 <= len(validation) <= 25 and not set(train) & set(validation)
    assert split_documents(documents[:100], 0.1, seed=8)[1] != validation  # the seed chooses
    one, other = split_documents(documents[:2], 0.01, seed=7)
    assert len(one) == len(other) == 1  # at least one document each way, even for a tiny fraction


def test_a_bpe_run_on_a_folder_ends_each_document_and_refuses_a_changed_corpus(folder, tmp_path):
    """A bpe run on a folder puts one end-of-text after each document, scores validation bytes exactly,
    resumes on the same tokens, and refuses the corpus once a file changed."""
    run = create_run(tmp_path / "run", TextSettings(data=str(folder), tokenizer="bpe", vocab_size=300), preset="cpu",
                     overrides=dict(dim=32, n_layer=1, n_head=2, context=32), budget=Budget(iters=2), device="cpu")
    train, validation = split_documents(read_documents(folder), 0.1, run.train_config.seed)
    end = run.tokenizer.end_id
    assert int(np.sum(run.train_tokens.read() == end)) == len(train)  # one end-of-text after each training document
    assert int(np.sum(run.val_tokens == end)) == len(validation) >= 1
    assert run.val_bytes[run.val_tokens == end].sum() == 0
    assert int(run.val_bytes.sum()) == sum(len(d.encode("utf-8")) for d in validation)
    record = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert record["kind"] == "documents" and record["validation"]["documents"] == len(validation)
    assert resume_run(tmp_path / "run").train_tokens.read().tolist() == run.train_tokens.read().tolist()
    play = folder / "sub" / "play01.txt"
    play.write_text(play.read_text() + "!")
    with pytest.raises(BluError, match="has changed since this run was trained on it"):
        resume_run(tmp_path / "run")


def test_explicit_validation_data(folder, tmp_path, shakespeare):
    """--val-data validates on all of that file and trains on all of --data, the same after a resume."""
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(shakespeare.read_text(encoding="utf-8")[-5_000:], encoding="utf-8")
    run = create_run(tmp_path / "run", TextSettings(data=str(folder), val_data=str(held_out), tokenizer="char"),
                     preset="cpu", overrides=dict(dim=32, n_layer=1, n_head=2, context=32), budget=Budget(iters=2),
                     device="cpu")
    assert len(run.val_tokens) == 5_000  # char: the whole held-out file, one token per character
    assert len(run.train_tokens) == sum(len(d) for d in read_documents(folder))
    assert resume_run(tmp_path / "run").val_tokens.tolist() == run.val_tokens.tolist()
