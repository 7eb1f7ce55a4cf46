"""Every input tool reads what preprocess reads (data_tools.inputs): the same records as jsonl,
parquet or Arrow give byte-identical outputs from train_tokenizer, sft and classify; and every
tool prints plain progress lines off a terminal (a SLURM log), every --log-interval seconds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_tools import classify, sft, train_tokenizer
from data_tools.errors import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRESS = r"^{tool}: \d+ {unit}, [\d.]+/[\d.]+ MB \(\d+%\), [\d.]+ MB/s"


def call(main, argv, capsys) -> tuple[int, str, str]:
    """A data tool's main in-process through run_cli (as `python -m` runs it); (rc, stdout, stderr)."""
    rc = run_cli(main, argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _records(path: str, n: int | None = None) -> list[dict]:
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f][:n]


def _write_all(records: list[dict], stem: str) -> dict[str, str]:
    """The records as jsonl, parquet (two row groups) and an Arrow IPC stream (as datasets writes)."""
    paths = {fmt: f"{stem}.{fmt}" for fmt in ("jsonl", "parquet", "arrow")}
    with open(paths["jsonl"], "wb") as f:
        f.writelines(orjson.dumps(r) + b"\n" for r in records)
    table = pa.Table.from_pylist(records)
    pq.write_table(table, paths["parquet"], row_group_size=max(1, len(records) // 2))
    with pa.OSFile(paths["arrow"], "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return paths


def _bytes(*paths: str) -> list[bytes]:
    return [open(p, "rb").read() for p in paths]


def test_train_tokenizer_reads_parquet_and_arrow_as_jsonl(tiny_data, tmp_path):
    docs = _write_all(_records(tiny_data["corpus"], 150), str(tmp_path / "docs"))
    out = {}
    for fmt, path in docs.items():
        model = train_tokenizer.train_tokenizer([path], tmp_path / f"tok_{fmt}", vocab_size=512, quiet=True)
        out[fmt] = _bytes(model, model[: -len(".model")] + ".vocab")
    assert out["parquet"] == out["jsonl"] and out["arrow"] == out["jsonl"]


def test_train_tokenizer_missing_column_is_one_line(tiny_data, tmp_path, capsys):
    docs = _write_all(_records(tiny_data["corpus"], 5), str(tmp_path / "docs"))
    rc, _, err = call(train_tokenizer.main, ["--input", docs["parquet"], "--output-prefix", str(tmp_path / "t"),
                                             "--json-keys", "content"], capsys)
    assert rc == 2 and "no column 'content'" in err and "its columns: " in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("source", ["chats", "docsig"])  # messages (list of structs); prompt/response
def test_sft_reads_parquet_and_arrow_as_jsonl(tiny_data, tmp_path, source):
    records = _records(tiny_data[source], 200)
    inputs = _write_all(records, str(tmp_path / source))
    out = {}
    for fmt, path in inputs.items():
        s = sft.sft_preprocess([path], str(tmp_path / fmt), tiny_data["tokenizer_model"], max_length=256, quiet=True)
        assert s.samples > 0
        out[fmt] = _bytes(*(p + ext for p in s.outputs for ext in (".bin", ".idx")))
    assert out["parquet"] == out["jsonl"] and out["arrow"] == out["jsonl"]


def test_sft_bad_parquet_row_is_named_by_row(tiny_data, tmp_path, capsys):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    rc, _, err = call(sft.main, ["--input", str(tmp_path / "bad.parquet"), "--output-prefix", str(tmp_path / "o"),
                                 "--tokenizer-model", tiny_data["tokenizer_model"], "--max-length", "16"], capsys)
    assert rc == 2 and f"{tmp_path / 'bad.parquet'}:1: missing key 'response'" in err
    assert not list(tmp_path.glob("o*"))


def test_classify_reads_parquet_and_arrow_as_jsonl(tiny_data, tmp_path):
    records = _records(tiny_data["code_prose"], 200)
    for i, r in enumerate(records):  # a second segment on some rows, null (no pair) on the others
        if i % 3 == 0:
            r["text_pair"] = r["text"][:40]
    inputs = _write_all(records, str(tmp_path / "cls"))
    out = {}
    for fmt, path in inputs.items():
        s = classify.classify_preprocess([path], str(tmp_path / fmt), tiny_data["tokenizer_model"], quiet=True)
        assert s.pairs == 67
        label_set = json.load(open(classify.label_set_path(s.output)))
        del label_set["inputs"]  # the input paths, which differ
        out[fmt] = _bytes(s.output + ".bin", s.output + ".idx", classify.labels_path(s.output)) + [label_set]
    assert out["parquet"] == out["jsonl"] and out["arrow"] == out["jsonl"]


def test_classify_parquet_without_its_columns_is_one_line(tiny_data, tmp_path, capsys):
    pq.write_table(pa.Table.from_pylist([{"body": "x", "y": 1}]), tmp_path / "c.parquet")
    rc, _, err = call(classify.main, ["--input", str(tmp_path / "c.parquet"), "--output-prefix", str(tmp_path / "o"),
                                      "--tokenizer-model", tiny_data["tokenizer_model"]], capsys)
    assert rc == 2 and "none of the columns ['text', 'text_pair', 'label']; its columns: body, y" in err


def test_preprocess_prints_progress_lines_off_a_terminal(tiny_data, tmp_path):
    """stderr a pipe, as under SLURM: plain progress lines, not a tqdm bar, and only then the summary."""
    p = subprocess.run([sys.executable, "-m", "data_tools.preprocess", "--input", tiny_data["corpus"],
                        "--output-prefix", str(tmp_path / "p"), "--tokenizer-model", tiny_data["tokenizer_model"],
                        "--append-eod", "--workers", "1", "--log-interval", "0"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = re.findall(PROGRESS.format(tool="preprocess", unit="docs"), p.stderr, re.MULTILINE)
    assert lines and "\r" not in p.stderr, p.stderr
    assert "(100%)" in p.stderr.splitlines()[-2]


def test_tools_print_progress_lines_off_a_terminal(tiny_data, tmp_path, capsys):
    tok = tiny_data["tokenizer_model"]
    runs = {
        ("train_tokenizer", "docs"): (train_tokenizer.main, ["--input", tiny_data["corpus"], "--vocab-size", "512",
                                                             "--input-sentence-size", "2000",
                                                             "--output-prefix", str(tmp_path / "t")]),
        ("sft", "samples"): (sft.main, ["--input", tiny_data["chats"], "--max-length", "48",
                                        "--output-prefix", str(tmp_path / "s"), "--tokenizer-model", tok]),
        ("classify", "samples"): (classify.main, ["--input", tiny_data["code_prose"],
                                                  "--output-prefix", str(tmp_path / "c"), "--tokenizer-model", tok]),
    }
    for (tool, unit), (main, argv) in runs.items():
        rc, _, err = call(main, argv + ["--log-interval", "0"], capsys)
        assert rc == 0, err
        assert re.search(PROGRESS.format(tool=tool, unit=unit), err, re.MULTILINE), err
        rc, _, err = call(main, argv + ["--log-interval", "0", "--quiet"], capsys)
        assert rc == 0 and err == ""


def test_corpus_copies_parquet_and_arrow_rows_as_jsonl_lines(tiny_data, tmp_path):
    from data_tools.corpus import build_corpus

    records = _records(tiny_data["code_prose"], 50)
    inputs = _write_all(records, str(tmp_path / "rows"))
    out = {}
    for fmt, path in inputs.items():
        s = build_corpus(tmp_path / f"{fmt}.out.jsonl", [path], quiet=True)
        assert s.jsonl_lines == 50
        out[fmt] = _bytes(str(tmp_path / f"{fmt}.out.jsonl"))
    assert out["parquet"] == out["jsonl"] and out["arrow"] == out["jsonl"]


def test_classify_reads_a_folder_and_a_glob_of_parquet_shards(tiny_data, tmp_path):
    """Shards in a folder (sorted by name) or named by a quoted glob read as their concatenation."""
    records = _records(tiny_data["code_prose"], 100)
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(3):
        pq.write_table(pa.Table.from_pylist(records[k * 34:(k + 1) * 34]), shards / f"part-{k:05d}.parquet")
    jsonl = _write_all(records, str(tmp_path / "all"))["jsonl"]
    out = {}
    for name, inputs in {"jsonl": [jsonl], "folder": [str(shards)], "glob": [str(shards / "part-*.parquet")]}.items():
        s = classify.classify_preprocess(inputs, str(tmp_path / name), tiny_data["tokenizer_model"], quiet=True)
        out[name] = _bytes(s.output + ".bin", s.output + ".idx", classify.labels_path(s.output))
    assert out["folder"] == out["jsonl"] and out["glob"] == out["jsonl"]
