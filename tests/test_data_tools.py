"""data_tools: corpus -> tokenizer -> preprocess -> merge / inspect, on a small corpus.

A ~1 MB corpus (stdlib files) and a 512-piece tokenizer are built once per session; tools are
called in-process through their `main()` / Python API (one subprocess for all --help, and
subprocesses for the kill tests).
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data_tools import corpus as corpus_mod
from data_tools import default_dataset, inspect_data, merge, preprocess, train_tokenizer
from data_tools.errors import DataToolsError, run_cli

N_FILES = 60


def _small_docs() -> list[str]:
    files = corpus_mod.walk_files(corpus_mod.stdlib_root(), (".py",))[:N_FILES]
    docs = []
    for p in files:
        with open(p, encoding="utf-8", errors="strict") as f:
            text = f.read()
        if text.strip():
            docs.append(text)
    # Prose with sentences, non-ASCII and odd whitespace, for the round trips.
    docs += [
        "Hello there. This is Dr. Smith speaking. He said hi!  Bye.\n\nA new paragraph starts here.",
        "Ünïcödé — “quotes”, emoji 🐍, CJK 漢字, tabs\tand  double  spaces.  ",
        "x",
    ]
    return docs


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("data_tools")


@pytest.fixture(scope="session")
def docs():
    return _small_docs()


@pytest.fixture(scope="session")
def corpus_jsonl(workdir, docs):
    path = workdir / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tok(workdir, corpus_jsonl):
    rc = run_cli(train_tokenizer.main, ["--input", corpus_jsonl, "--output-prefix", str(workdir / "tok"),
                                         "--vocab-size", "512", "--quiet"])
    assert rc == 0
    return str(workdir / "tok.model")


@pytest.fixture(scope="session")
def sp(tok):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=tok)


@pytest.fixture(scope="session")
def doc_prefix(workdir, corpus_jsonl, tok):
    out = workdir / "ds"
    preprocess.preprocess([corpus_jsonl], str(out), tok, workers=2, quiet=True)
    return str(out) + "_text_document"


def _indexed(prefix):
    return inspect_data.open_indexed_dataset(prefix)


def _files(d) -> set[str]:
    return set(os.listdir(d))


def _write_lines(path, lines: list[bytes]):
    with open(path, "wb") as f:
        f.write(b"".join(l + b"\n" for l in lines))
    return str(path)


# -- CLI --------------------------------------------------------------------------------------
def test_all_tools_have_help():
    tools = ["corpus", "train_tokenizer", "preprocess", "merge", "inspect_data", "default_dataset"]
    script = " && ".join(f"{sys.executable} -m data_tools.{t} --help" for t in tools)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("usage: python -m data_tools.") == len(tools)


# -- corpus -----------------------------------------------------------------------------------
def test_corpus_is_deterministic_and_skips_non_utf8(tmp_path):
    src = tmp_path / "src"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "b.py").write_text("print('b')\n")
    (src / "pkg" / "a.txt").write_text("alpha\n")
    (src / "pkg" / "__pycache__" / "c.py").write_text("skipped\n")
    (src / "bad.py").write_bytes(b"\xff\xfe not utf-8")
    (src / "empty.py").write_text("")
    (src / "ignored.bin").write_bytes(b"\x00")
    outs = []
    for i in range(2):
        out = tmp_path / f"c{i}.jsonl"
        summary = corpus_mod.build_corpus(str(out), [str(src)], quiet=True)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    rows = [json.loads(l) for l in outs[0].splitlines()]
    assert [r["source"] for r in rows] == ["b.py", "pkg/a.txt"]
    assert rows[1]["text"] == "alpha\n"
    assert (summary.documents, summary.skipped_non_utf8, summary.skipped_empty) == (2, 1, 1)
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_corpus_passes_compressed_jsonl_through(tmp_path):
    import zstandard

    lines = [json.dumps({"text": f"doc {i}"}).encode() for i in range(3)]
    raw = b"".join(l + b"\n" for l in lines)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    out = tmp_path / "out.jsonl"
    assert run_cli(corpus_mod.main, ["-o", str(out), "--quiet", str(tmp_path / "a.jsonl.gz"),
                                     str(tmp_path / "b.jsonl.zst")]) == 0
    assert out.read_bytes() == raw + raw


def test_stdlib_default_corpus(tmp_path):
    out = tmp_path / "stdlib.jsonl"
    summary = corpus_mod.build_corpus(str(out), quiet=True)
    assert summary.documents > 500 and summary.bytes > 5_000_000
    first = json.loads(out.open("rb").readline())
    assert "site-packages" not in first["source"] and first["text"]


# -- tokenizer --------------------------------------------------------------------------------
def test_tokenizer_layout_and_exact_round_trip(sp, docs):
    pieces = [sp.id_to_piece(i) for i in range(7)]
    assert pieces == ["<pad>", "<unk>", "<s>", "</s>", "[CLS]", "[SEP]", "[MASK]"]
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
    assert sp.get_piece_size() == 512
    for d in docs:
        assert sp.decode(sp.encode(d)) == d  # identity normalization + byte fallback
    code = "def f(x):\n\tif x:\n        return  x + 12345\n\n"
    assert sp.decode(sp.encode(code)) == code


def test_tokenizer_training_is_deterministic_when_sampling(tmp_path, corpus_jsonl):
    models = []
    for i in range(2):
        path = train_tokenizer.train_tokenizer([corpus_jsonl], tmp_path / f"t{i}", vocab_size=400,
                                               input_sentence_size=3000, quiet=True)
        models.append(open(path, "rb").read())
    assert models[0] == models[1]


def test_tokenizer_errors(tmp_path, corpus_jsonl, capsys):
    assert run_cli(train_tokenizer.main, ["--input", str(tmp_path / "nope.jsonl"), "--output-prefix",
                                          str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.jsonl'}: input file not found"
    assert run_cli(train_tokenizer.main, ["--input", corpus_jsonl, "--output-prefix", str(tmp_path / "t"),
                                          "--vocab-size", "100000", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sentencepiece training failed:") and err.count("\n") == 1
    assert not os.listdir(tmp_path)


# -- preprocess round trips -------------------------------------------------------------------
def test_preprocess_round_trip_with_eod(doc_prefix, docs, sp):
    ds = _indexed(doc_prefix)
    assert len(ds) == len(docs)
    assert ds.index.dtype == np.uint16
    assert list(ds.document_indices) == list(range(len(docs) + 1))
    for i, d in enumerate(docs):
        ids = ds[i]
        assert ids[-1] == sp.eos_id()  # EOD appended ...
        assert ds.sequence_lengths[i] == len(sp.encode(d)) + 1  # ... and counted in the length
        assert sp.decode(ids[:-1].tolist()) == d


def test_workers_and_bulk_writer_match_megatron_add_document(tok, tmp_path, corpus_jsonl, doc_prefix, docs, sp):
    """1 worker == 2 workers == one builder.add_document per document (Megatron-LM's way)."""
    preprocess.preprocess([corpus_jsonl], str(tmp_path / "w1"), tok, workers=1, quiet=True)
    from data_tools.indexed_writer import import_indexed_dataset

    idx = import_indexed_dataset()
    builder = idx.IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=np.uint16)
    for d in docs:
        ids = sp.encode(d) + [sp.eos_id()]
        builder.add_document(ids, [len(ids)])
    builder.finalize(str(tmp_path / "ref.idx"))
    for ext in (".bin", ".idx"):
        ref = (tmp_path / f"ref{ext}").read_bytes()
        assert (tmp_path / f"w1_text_document{ext}").read_bytes() == ref
        assert open(doc_prefix + ext, "rb").read() == ref


def test_a_dead_worker_is_an_error_not_a_hang(tok, corpus_jsonl):
    """A worker that dies (here: its start-up fails) ends preprocess with one line; Pool would wait."""
    from data_tools.jsonl_reader import iter_chunks

    bad_initargs = ("/nonexistent/tok.model", ("text",), True, False, "<u2", 1)
    with pytest.raises(DataToolsError, match="^preprocess: a worker process died .* rerun, or with --workers 1"):
        list(preprocess._ordered_results(iter_chunks([corpus_jsonl]), 2, bad_initargs))


def test_preprocess_split_sentences(tok, tmp_path, corpus_jsonl, docs, sp):
    s = preprocess.preprocess([corpus_jsonl], str(tmp_path / "s"), tok, split_sentences=True,
                              workers=2, quiet=True)
    prefix = str(tmp_path / "s_text_sentence")
    assert s.outputs == [prefix]
    ds = _indexed(prefix)
    di = ds.document_indices
    assert len(di) == len(docs) + 1 and len(ds) > len(docs)
    for i, d in enumerate(docs):
        sents = [ds[j] for j in range(di[i], di[i + 1])]
        assert all(len(x) for x in sents)
        assert sents[-1][-1] == sp.eos_id() and all(x[-1] != sp.eos_id() for x in sents[:-1])
        assert "".join(sp.decode(x.tolist()) for x in sents) == d  # decode drops the EOD control token
    prose = docs[-3]
    i = len(docs) - 3
    decoded = [sp.decode(ds[j].tolist()) for j in range(di[i], di[i + 1])]
    assert decoded[0] == "Hello there. " and "This is Dr. Smith speaking. " in decoded
    assert "".join(decoded) == prose


def test_preprocess_compressed_inputs_and_multiple_keys(tok, tmp_path, sp):
    import zstandard

    rows = [{"text": f"document number {i}.", "title": f"title {i}"} for i in range(50)]
    raw = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    (tmp_path / "a.jsonl").write_bytes(raw)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    outs = {}
    for name in ("a.jsonl", "a.jsonl.gz", "a.jsonl.zst"):
        pre = str(tmp_path / name.replace(".", "_"))
        s = preprocess.preprocess([str(tmp_path / name)], pre, tok, json_keys=("text", "title"),
                                  workers=1, quiet=True)
        assert s.documents == 50 and len(s.outputs) == 2
        outs[name] = [open(p + ".bin", "rb").read() for p in s.outputs]
    assert outs["a.jsonl"] == outs["a.jsonl.gz"] == outs["a.jsonl.zst"]
    ds = _indexed(str(tmp_path / "a_jsonl_title_document"))
    assert sp.decode(ds[7][:-1].tolist()) == "title 7"


# -- bad input --------------------------------------------------------------------------------
BAD_LINES = [
    b'{"text": ""}',  # empty FIRST document (crashed Megatron once)
    b'{"text": "good one"}',
    b'{"text": "broken',  # malformed JSON
    b'{"text": "caf\xe9 latin-1"}',  # not UTF-8
    b'{"title": "no text key"}',
    b'{"text": 42}',
    b'[1, 2]',
    b"",
    b'{"text": "   \\n  "}',
    b'{"text": "good two"}',
]


def test_bad_lines_are_skipped_and_counted(tok, tmp_path, sp, capsys):
    path = _write_lines(tmp_path / "bad.jsonl", BAD_LINES)
    assert run_cli(preprocess.main, ["--input", path, "--output-prefix", str(tmp_path / "o"), "--tokenizer-model",
                                     tok, "--append-eod", "--workers", "1"]) == 0
    s = capsys.readouterr().err.strip().splitlines()[-1]
    assert s.startswith("preprocess: 2 documents, 2 sequences,")
    assert ("skipped lines: 1 blank_line, 2 empty, 1 malformed_json, 1 missing_key, 1 non_string, "
            "1 non_utf8, 1 not_an_object") in s
    assert f"empty at {path}:1, {path}:9" in s and f"malformed_json at {path}:3" in s
    ds = _indexed(str(tmp_path / "o_text_document"))
    assert [sp.decode(ds[i][:-1].tolist()) for i in range(len(ds))] == ["good one", "good two"]


@pytest.mark.parametrize("bad,line,msg", [
    (b'{"text": "broken', 3, "malformed JSON"),
    (b'{"text": "caf\xe9"}', 3, "not valid UTF-8"),
    (b'{"title": "x"}', 3, "missing key 'text'"),
    (b'{"text": ""}', 3, "empty document ('text')"),
])
def test_strict_stops_at_first_bad_line(tok, tmp_path, sp, capsys, bad, line, msg):
    path = _write_lines(tmp_path / "in.jsonl", [b'{"text": "ok"}', b'{"text": "ok too"}', bad, b'{"text": "x"}'])
    rc = run_cli(preprocess.main, ["--input", path, "--output-prefix", str(tmp_path / "o"), "--tokenizer-model",
                                   tok, "--strict", "--workers", "1"])
    assert rc == 2
    assert capsys.readouterr().err == (f"error: {path}:{line}: {msg} (--strict; fix the line or drop --strict "
                                       "to skip it)\n")
    assert _files(tmp_path) == {"in.jsonl"}  # temps removed, nothing published


def test_fatal_errors_before_any_work(tok, tmp_path, sp, corpus_jsonl, capsys):
    def run(*args):
        rc = run_cli(preprocess.main, ["--quiet", *args])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1, err
        return err.strip()

    out = str(tmp_path / "o")
    missing = str(tmp_path / "missing.jsonl")
    assert run("--input", missing, "--output-prefix", out, "--tokenizer-model", tok) == \
        f"error: {missing}: input file not found"
    nodir = str(tmp_path / "nodir" / "o")
    assert run("--input", corpus_jsonl, "--output-prefix", nodir, "--tokenizer-model", tok) == \
        f"error: {nodir}: output directory {tmp_path / 'nodir'} does not exist; create it first"
    # /proc refuses new files even for root (a chmod'ed directory does not stop root).
    assert run("--input", corpus_jsonl, "--output-prefix", "/proc/mtds_o", "--tokenizer-model", tok).startswith(
        "error: /proc/mtds_o: output directory /proc is not writable")
    bad_tok = tmp_path / "bad.model"
    bad_tok.write_bytes(b"this is not a protobuf" * 10)
    assert run("--input", corpus_jsonl, "--output-prefix", out, "--tokenizer-model", str(bad_tok)).startswith(
        f"error: {bad_tok}: not a sentencepiece model")
    assert run("--input", corpus_jsonl, "--output-prefix", out, "--tokenizer-model", str(tmp_path / "no.model")) \
        .startswith(f"error: {tmp_path / 'no.model'}: tokenizer model not found")
    assert _files(tmp_path) == {"bad.model"}


def test_read_only_output_dir(tok, tmp_path, sp, corpus_jsonl, capsys, read_only):
    ro = tmp_path / "ro"
    ro.mkdir()
    read_only(ro)  # for root too (CI runs as root): a read-only mount
    rc = run_cli(preprocess.main, ["--input", corpus_jsonl, "--output-prefix", str(ro / "o"),
                                   "--tokenizer-model", tok])
    assert rc == 2 and "is not writable" in capsys.readouterr().err
    assert not os.listdir(ro)


# -- interrupted runs -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def big_jsonl(workdir, docs):
    """~25 MB, enough for a run of several seconds."""
    path = workdir / "big.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for r in range(25_000_000 // sum(len(d) for d in docs) + 1):
            for d in docs:
                f.write(json.dumps({"text": d}) + "\n")
    return str(path)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_preprocess_leaves_no_pair(tok, tmp_path, big_jsonl, sp, sig):
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "data_tools.preprocess", "--input", big_jsonl, "--output-prefix",
                             str(out), "--tokenizer-model", tok, "--workers", "2", "--quiet"],
                            stderr=subprocess.PIPE, text=True,
                            # a shell's background job (`make test &`) inherits SIGINT ignored, and Python
                            # then installs no KeyboardInterrupt: give the child Ctrl-C's default back
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    tmp_bin = None
    while time.time() < deadline and proc.poll() is None:
        tmp_bin = [f for f in os.listdir(tmp_path) if f.startswith("o_text_document.bin.tmp-")]
        if tmp_bin and os.path.getsize(tmp_path / tmp_bin[0]) > 100_000:  # mid-write: the input makes ~100x that
            break
        time.sleep(0.05)
    assert proc.poll() is None and tmp_bin, "preprocess finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    names = _files(tmp_path)
    assert "o_text_document.bin" not in names and "o_text_document.idx" not in names
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and err.strip() == "error: interrupted"
        assert names == set()  # temps cleaned up too


# -- merge / inspect --------------------------------------------------------------------------
def test_merge_and_verify(tok, tmp_path, doc_prefix, docs, sp, capsys):
    out = str(tmp_path / "m")
    assert run_cli(merge.main, ["--input", doc_prefix, doc_prefix + ".bin", "--output-prefix", out, "--quiet"]) == 0
    ds = _indexed(out)
    assert len(ds) == 2 * len(docs) and list(ds.document_indices) == list(range(2 * len(docs) + 1))
    assert sp.decode(ds[len(docs) + 1][:-1].tolist()) == docs[1]
    assert run_cli(inspect_data.main, [out, "--verify"]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {out}: {2 * len(docs)} documents")
    assert run_cli(inspect_data.main, [out, "--decode", "1", "--tokenizer-model", tok]) == 0
    shown = capsys.readouterr().out
    assert "documents  %d" % (2 * len(docs)) in shown and docs[0][:200] in shown and "histogram" in shown


def test_verify_checks_token_ids_against_the_tokenizer(tok, tmp_path, doc_prefix, sp, capsys):
    vocab = sp.vocab_size()
    assert run_cli(inspect_data.main, [doc_prefix, "--verify", "--tokenizer-model", tok]) == 0
    assert capsys.readouterr().out.strip().endswith(f", every id below the tokenizer's {vocab}")
    p = str(tmp_path / "wide")
    _copy_pair(doc_prefix, p)
    data = np.memmap(p + ".bin", dtype=np.uint16, mode="r+")
    data[-1] = vocab + 7  # the last token: data built with a bigger tokenizer
    data.flush()
    assert run_cli(inspect_data.main, [p, "--verify", "--tokenizer-model", tok]) == 2
    assert capsys.readouterr().err == (f"error: {p}.bin holds token id {vocab + 7} but {tok} has only {vocab} pieces: "
                                       "the data was built with another tokenizer; give that tokenizer, or rebuild "
                                       f"the data with `python -m data_tools.preprocess --tokenizer-model {tok}`\n")
    assert inspect_data.max_token_id(p, sample_tokens=64) == vocab + 7  # the sample windows reach the end
    data[-1] = 0
    data.flush()
    assert inspect_data.max_token_id(p, sample_tokens=64) < vocab


def test_merge_refuses_mixed_dtypes(tmp_path, doc_prefix, capsys):
    from data_tools.indexed_writer import BinIdxWriter

    w = BinIdxWriter(str(tmp_path / "wide"), np.int32)
    w.add_documents(np.arange(5, dtype=np.int32), np.array([5], np.int32), np.array([1]))
    w.finalize()
    rc = run_cli(merge.main, ["--input", doc_prefix, str(tmp_path / "wide"), "--output-prefix", str(tmp_path / "m")])
    assert rc == 2
    assert capsys.readouterr().err == (f"error: cannot merge datasets with different dtypes: {doc_prefix} (uint16), "
                                       f"{tmp_path / 'wide'} (int32); preprocess them with the same tokenizer\n")
    assert not [f for f in os.listdir(tmp_path) if f.startswith("m")]


def _copy_pair(src_prefix, dst_prefix, bin_src=None):
    for ext in (".bin", ".idx"):
        src = (bin_src if (ext == ".bin" and bin_src) else src_prefix) + ext
        with open(src, "rb") as f, open(dst_prefix + ext, "wb") as g:
            g.write(f.read())


@pytest.mark.parametrize("damage,expected", [
    ("bin", "{p}.bin: {n} bytes but {p}.idx describes {m} (uint16): truncated or not the matching .bin; "
            "rebuild it with `python -m data_tools.preprocess`"),
    ("idx", "{p}.idx: {n} bytes but its header"),
    ("pair", "{p}.bin: {n} bytes but {p}.idx describes {m} (uint16): truncated or not the matching .bin"),
    ("header", "{p}.idx: not a Megatron index (bad or truncated header)"),
])
def test_verify_rejects_broken_pairs(tok, tmp_path, doc_prefix, workdir, corpus_jsonl, sp, capsys, damage, expected):
    p = str(tmp_path / "x")
    if damage == "pair":
        other = str(tmp_path / "other")
        preprocess.preprocess([_write_lines(tmp_path / "o.jsonl", [b'{"text": "tiny"}'])], other, tok,
                              workers=1, quiet=True)
        _copy_pair(doc_prefix, p, bin_src=other + "_text_document")
    else:
        _copy_pair(doc_prefix, p)
    target = p + (".bin" if damage == "bin" else ".idx")
    size = os.path.getsize(target)
    if damage in ("bin", "idx"):
        os.truncate(target, size - 7)
    elif damage == "header":
        os.truncate(target, 20)
    n = os.path.getsize(p + (".idx" if damage == "idx" else ".bin"))
    m = os.path.getsize(doc_prefix + ".bin")
    assert run_cli(inspect_data.main, [p, "--verify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + expected.format(p=p, n=n, m=m)) and err.count("\n") == 1, err
    with pytest.raises(Exception) as e:  # the loader the training code uses says the same
        inspect_data.open_indexed_dataset(p)
    assert str(e.value) == err[len("error: "):].strip()


# -- default dataset --------------------------------------------------------------------------
def test_default_dataset_is_idempotent(tmp_path, corpus_jsonl, tok):
    """With corpus and tokenizer present only preprocess runs; a second call touches nothing."""
    out = tmp_path / "dd"
    out.mkdir()
    for src, name in ((corpus_jsonl, "corpus.jsonl"), (tok, "tokenizer.model")):
        (out / name).write_bytes(open(src, "rb").read())
    r = default_dataset.build_default_dataset(out, quiet=True)
    assert r["prefix"] == str(out / "stdlib_text_document") and r["tokenizer_model"] == str(out / "tokenizer.model")
    mtimes = {f: os.path.getmtime(out / f) for f in os.listdir(out)}
    r2 = default_dataset.build_default_dataset(out, split_sentences=True, quiet=True)
    assert r2["prefix"] == str(out / "stdlib_text_sentence")
    assert {f: os.path.getmtime(out / f) for f in mtimes} == mtimes
    assert os.path.isfile(str(out / "stdlib_text_sentence.idx"))
    inspect_data.verify_pair(r2["prefix"])
    # T5's layout: another tokenizer, with sentinels, and its _sentence data; the others untouched
    t5 = default_dataset.build_default_dataset(out, vocab_size=400, sentinel_tokens=16, quiet=True)
    assert (t5["prefix"], t5["tokenizer_model"]) == (str(out / "stdlib_t5_text_sentence"), str(out / "tokenizer_t5.model"))
    inspect_data.verify_pair(t5["prefix"])
    assert {f: os.path.getmtime(out / f) for f in mtimes} == mtimes
    import sentencepiece

    t5_sp = sentencepiece.SentencePieceProcessor(model_file=t5["tokenizer_model"])
    assert t5_sp.piece_to_id("<extra_id_15>") != t5_sp.unk_id()
