"""preprocess --input beyond jsonl: parquet, Arrow / datasets save_to_disk folders, folders, globs."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_tools import inspect_data, preprocess
from data_tools.columnar_reader import iter_column_chunks
from data_tools.errors import run_cli


@pytest.fixture(scope="module")
def texts(tiny_data) -> list[str]:
    with open(tiny_data["corpus"], encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def sp(tiny_data):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=tiny_data["tokenizer_model"])


def _pair(prefix: str) -> tuple[bytes, bytes]:
    return tuple(open(prefix + ext, "rb").read() for ext in (".bin", ".idx"))


def _decoded(prefix: str, sp) -> list[str]:
    ds = inspect_data.open_indexed_dataset(prefix)
    return [sp.decode(ds[i][:-1].tolist()) for i in range(len(ds))]


def _write_arrow_stream(path, table: pa.Table, batch_rows: int = 2) -> str:
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        for b in table.to_batches(max_chunksize=batch_rows):
            w.write_batch(b)
    return str(path)


def _run(tiny_data, tmp_path, capsys, *inputs, extra=()):
    rc = run_cli(preprocess.main, ["--input", *map(str, inputs), "--output-prefix", str(tmp_path / "o"),
                                   "--tokenizer-model", tiny_data["tokenizer_model"], "--append-eod",
                                   "--workers", "1", *extra])
    return rc, capsys.readouterr().err


# -- the same corpus in every format gives the same bytes ---------------------------------------------
def test_parquet_and_save_to_disk_outputs_are_byte_identical_to_jsonl(tiny_data, texts, tmp_path):
    import datasets

    ref = _pair(tiny_data["prefix"])  # the jsonl corpus, preprocessed with --append-eod
    path = str(tmp_path / "c.parquet")
    # Several row groups, one of them cut into chunks; an extra column that is not read.
    pq.write_table(pa.table({"id": np.arange(len(texts)), "text": texts}), path, row_group_size=5)
    assert pq.ParquetFile(path).metadata.num_row_groups > 3
    s = preprocess.preprocess([path], str(tmp_path / "pq"), tiny_data["tokenizer_model"], workers=2, quiet=True)
    assert s.documents == len(texts) and _pair(str(tmp_path / "pq_text_document")) == ref

    saved = str(tmp_path / "saved")
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(saved, num_shards=3)
    assert sorted(n for n in os.listdir(saved) if n.endswith(".arrow")) == [
        f"data-0000{i}-of-00003.arrow" for i in range(3)]
    preprocess.preprocess([saved], str(tmp_path / "ds"), tiny_data["tokenizer_model"], workers=1, quiet=True)
    assert _pair(str(tmp_path / "ds_text_document")) == ref


def test_a_row_group_is_read_in_small_self_contained_chunks(tmp_path):
    """One 2 MB row group comes out as ~64 KB chunks, in order, each pickling to its own size only."""
    path = str(tmp_path / "big.parquet")
    rows = [f"{i:05d} " + "x" * 1000 for i in range(2000)]
    pq.write_table(pa.table({"text": rows}), path, row_group_size=len(rows))
    chunks = list(iter_column_chunks(path, "parquet", ["text"], max_bytes=64_000, max_rows=4096))
    assert [c.first_row for c in chunks] == list(np.cumsum([0] + [len(c.columns[0]) for c in chunks[:-1]]))
    assert sum(len(c.columns[0]) for c in chunks) == 2000 and len(chunks) >= 30
    assert all(len(c.columns[0]) <= 64 for c in chunks)
    assert [t for c in chunks for t in c.columns[0].to_pylist()] == rows
    assert max(len(pickle.dumps(c)) for c in chunks) < 2 * 64_000
    assert chunks[-1].input_pos == os.path.getsize(path)


# -- bad cells are skipped like bad lines ----------------------------------------------------------
def test_null_non_string_and_non_utf8_cells_are_skipped_with_their_rows(tiny_data, tmp_path, sp, capsys):
    a = str(tmp_path / "a.parquet")  # a string column: null, empty and blank cells
    pq.write_table(pa.table({"text": ["good one", None, "", "good two", "  \n", "good three"]}), a, row_group_size=2)
    b = str(tmp_path / "b.parquet")  # a binary column: bytes that are not UTF-8
    pq.write_table(pa.table({"text": pa.array([b"bytes ok", b"caf\xe9"], pa.binary())}), b)
    # A union column (Arrow only; parquet has no union type): a cell that is an integer.
    union = pa.UnionArray.from_dense(pa.array([0, 1, 0], pa.int8()), pa.array([0, 0, 1], pa.int32()),
                                     [pa.array(["union text", "union more"]), pa.array([7])], ["s", "i"])
    c = _write_arrow_stream(tmp_path / "c.arrow", pa.table({"text": union}))
    j = tmp_path / "d.jsonl"
    j.write_text('{"text": "from jsonl"}\n{"text": null}\n')
    rc, err = _run(tiny_data, tmp_path, capsys, j, a, b, c)
    assert rc == 0, err
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("preprocess: 7 documents,")
    assert "skipped lines: 2 empty, 3 non_string, 1 non_utf8" in summary
    assert (f"empty at {a}:2, {a}:4; non_string at {j}:2, {a}:1, {c}:1; non_utf8 at {b}:1") in summary
    assert _decoded(str(tmp_path / "o_text_document"), sp) == [  # inputs read in the order given
        "from jsonl", "good one", "good two", "good three", "bytes ok", "union text", "union more"]


def test_strict_stops_at_a_null_cell(tiny_data, tmp_path, capsys):
    a = str(tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": ["ok", "ok too", None]}), a, row_group_size=2)
    rc, err = _run(tiny_data, tmp_path, capsys, a, extra=["--strict"])
    assert rc == 2
    assert err == f"error: {a}:2: value is not a string ('text' is null) (--strict; fix the line or drop --strict to skip it)\n"
    assert os.listdir(tmp_path) == ["a.parquet"]


# -- folders, globs, mixed inputs -----------------------------------------------------------------
def test_folders_globs_and_mixed_inputs_keep_their_order(tiny_data, tmp_path, sp, capsys):
    shards = tmp_path / "shards"
    for d in ("sub", "00dir"):
        (shards / d).mkdir(parents=True)

    def docs(name):
        return [f"shard {name} doc {i}" for i in range(2)]

    for name in ("01.parquet", "00.parquet", "sub/02.parquet", "00dir/04.parquet"):
        pq.write_table(pa.table({"text": docs(name)}), str(shards / name))
    with pa.OSFile(str(shards / "03.arrow"), "wb") as f, pa.ipc.new_file(f, pa.schema([("text", pa.string())])) as w:
        w.write_table(pa.table({"text": docs("03.arrow")}))  # the IPC *file* layout (datasets writes streams)
    (shards / "README.md").write_text("not an input")  # ignored inside a folder
    (shards / "_SUCCESS").write_text("")
    j = tmp_path / "first.jsonl"
    j.write_text('{"text": "jsonl first"}\n')
    # The glob is quoted (no shell here): we expand it, sorted; the folder is walked recursively,
    # sorted by path part by part.
    rc, err = _run(tiny_data, tmp_path, capsys, j, str(shards / "*.parquet"), shards)
    assert rc == 0, err
    globbed = docs("00.parquet") + docs("01.parquet")
    walked = [d for n in ("00.parquet", "00dir/04.parquet", "01.parquet", "03.arrow", "sub/02.parquet") for d in docs(n)]
    assert _decoded(str(tmp_path / "o_text_document"), sp) == ["jsonl first", *globbed, *walked]


# -- bad inputs: one line, before any work, nothing written ----------------------------------------
def _bad_inputs(tmp_path) -> dict:
    """case -> (--input arguments, extra flags, expected error line)."""
    tbl = pa.table({"text": ["a", "b"], "id": [1, 2]})
    good = str(tmp_path / "good.parquet")
    pq.write_table(tbl, good)
    cols = str(tmp_path / "cols.parquet")
    pq.write_table(pa.table({"content": ["a"], "url": ["u"]}), cols)
    saved = tmp_path / "saved"
    saved.mkdir()
    _write_arrow_stream(saved / "data-00000-of-00001.arrow", pa.table({"body": ["x"]}))
    (saved / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not really parquet" * 10)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(open(good, "rb").read()[:-20])
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    (empty / "notes.txt").write_text("no inputs here")
    dd = tmp_path / "dsdict"
    for split in ("test", "train"):
        (dd / split).mkdir(parents=True)
    (dd / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    pattern = str(tmp_path / "nothing-*.parquet")
    return {
        # the bad file comes after a good one: the check reads every schema before any work
        "missing_column": ([good, cols], [], f"{cols}: no column 'text' (--json-keys); its columns: content, url"),
        "missing_column_save_to_disk": ([str(saved)], [], f"{saved / 'data-00000-of-00001.arrow'}: no column "
                                        "'text' (--json-keys); its columns: body"),
        "not_a_text_column": ([good], ["--json-keys", "id"], f"{good}: column 'id' is int64, not text (string or "
                              "binary); its columns: text (string), id (int64)"),
        "glob_matches_nothing": ([pattern], [], f"{pattern}: no files match this pattern"),
        "folder_without_inputs": ([str(empty)], [], f"{empty}: no .parquet, .arrow or .jsonl(.gz/.zst) files "
                                  "in this folder"),
        "datasetdict_folder": ([str(dd)], [], f"{dd}: a datasets DatasetDict (splits: test, train); give one "
                               f"split's folder, e.g. {dd / 'test'}"),
        "corrupt_parquet": ([good, str(garbage)], [], f"{garbage}: not a readable parquet file ("),
        "truncated_parquet": ([str(truncated)], [], f"{truncated}: not a readable parquet file ("),
    }


@pytest.mark.parametrize("case", ["missing_column", "missing_column_save_to_disk", "not_a_text_column",
                                  "glob_matches_nothing", "folder_without_inputs", "datasetdict_folder",
                                  "corrupt_parquet", "truncated_parquet"])
def test_bad_inputs_are_one_line_before_any_work(tiny_data, tmp_path, capsys, case):
    inputs, extra, expected = _bad_inputs(tmp_path)[case]
    before = sorted(os.listdir(tmp_path))
    rc, err = _run(tiny_data, tmp_path, capsys, *inputs, extra=extra)
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {expected}"), err
    assert sorted(os.listdir(tmp_path)) == before  # no outputs, no temp files


def test_a_damaged_row_group_is_one_line_and_nothing_is_written(tiny_data, tmp_path, capsys):
    """The footer reads, so the run starts; row group 1's page header is garbage."""
    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.table({"text": [f"document {i} " * 20 for i in range(30)]}), path, row_group_size=10)
    off = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    raw = bytearray(open(path, "rb").read())
    raw[off : off + 40] = b"\xff" * 40
    open(path, "wb").write(raw)
    rc, err = _run(tiny_data, tmp_path, capsys, path)
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {path}: row group 1 (rows 10-19) cannot be read, the file is damaged ("), err
    assert os.listdir(tmp_path) == ["d.parquet"]
