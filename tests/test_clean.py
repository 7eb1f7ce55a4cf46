"""data_tools.clean: Gopher's and C4's filters against datatrove's, exact and near dedup,
decontamination, normalization, the manifest, bad inputs, and preprocess recording the cleaning.
All in-process (datatrove's spaCy import is the largest cost)."""

from __future__ import annotations

import glob
import json
import os
import random
import re
import sysconfig

import pytest
from helpers import missing

from data_tools import clean as clean_mod
from data_tools.clean_config import CleanConfig, build_config
from data_tools.errors import DataToolsError, run_cli
from data_tools.gopher_quality import quality_failure
from data_tools.gopher_repetition import repetition_failure
from data_tools.normalize import normalize

STDLIB = sysconfig.get_paths()["stdlib"]

# datatrove's reason -> ours (the same rule under its name in the manifest)
DATATROVE_RULE = {
    "gopher_short_doc": "words", "gopher_long_doc": "words",
    "gopher_below_avg_threshold": "mean_word_length", "gopher_above_avg_threshold": "mean_word_length",
    "gopher_too_many_hashes": "hash_ratio", "gopher_too_many_ellipsis": "ellipsis_ratio",
    "gopher_too_many_bullets": "bullet_lines", "gopher_too_many_end_ellipsis": "ellipsis_lines",
    "gopher_below_alpha_threshold": "alpha_words", "gopher_enough_stop_words": "stop_words",
    "dup_para_frac": "dup_para_frac", "dup_para_char_frac": "dup_para_chars",
    "dup_line_frac": "dup_line_frac", "dup_line_char_frac": "dup_line_chars",
    **{f"top_{n}_gram": f"top_{n}gram_chars" for n in (2, 3, 4)},
    **{f"duplicated_{n}_n_grams": f"dup_{n}gram_chars" for n in range(5, 11)},
}


# -- the documents: real stdlib prose and code, and planted junk that each rule should catch --------
def _paragraph_docs(path: str, per_doc: int) -> list[str]:
    with open(path, encoding="utf-8") as f:
        paras = [p for p in re.split(r"\n\s*\n", f.read()) if p.strip()]
    return ["\n\n".join(paras[i:i + per_doc]) for i in range(0, len(paras), per_doc)]


def _module_docstrings(folder: str) -> list[str]:
    out = []
    for path in sorted(glob.glob(os.path.join(STDLIB, folder, "*.py"))):
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        while lines and (not lines[0].strip() or lines[0].startswith("#")):
            lines.pop(0)
        body = "\n".join(lines).removeprefix("r").removeprefix("R")
        if body.startswith('"""') and '"""' in body[3:]:
            out.append(body[3:body.index('"""', 3)])
    return out


def _code_docs(folder: str, lines_per_doc: int, limit: int) -> list[str]:
    out = []
    for path in sorted(glob.glob(os.path.join(STDLIB, folder, "*.py"))):
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        out += ["\n".join(lines[i:i + lines_per_doc]) for i in range(0, len(lines), lines_per_doc)]
    return out[:limit]


def _planted(prose: list[str]) -> dict[str, str]:
    """A document per rule, built from real sentences, that the rule removes (the first to fail)."""
    rng = random.Random(0)
    words = [w for w in " ".join(prose).split() if w.isalpha()]
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(" ".join(prose).split()))
    long_sent = [s for s in sentences if 10 < len(s.split()) < 30 and "#" not in s]
    sample = lambda k: " ".join(rng.sample(words, k))
    intro = lambda: " ".join(rng.sample(long_sent, 2))
    return {
        "words": "The cat and the dog sat with that hat to be seen.",
        "mean_word_length": " ".join(rng.choice(["internationalization", "characteristically", "the",
                                                 "telecommunications", "with", "representationally"])
                                     for _ in range(80)),
        "hash_ratio": intro() + " " + " ".join(f"{w} #{v}" for w, v in zip(rng.sample(words, 60),
                                                                            rng.sample(words, 60))),
        "ellipsis_ratio": intro() + " " + " ".join(f"{w}…" for w in rng.sample(words, 80)),
        "bullet_lines": "\n".join(f"- {' '.join(s.split()[:8])}" for s in rng.sample(long_sent, 30)),
        "ellipsis_lines": "\n".join(f"{' '.join(s.split()[:9])}…" if i % 2 else s
                                    for i, s in enumerate(rng.sample(long_sent, 20))),
        "alpha_words": sample(30) + " " + " ".join(str(rng.randint(0, 10**6)) for _ in range(120)),
        "stop_words": " ".join(rng.choice(["lorem", "ipsum", "dolor", "sit", "amet", "consectetur",
                                           "adipiscing", "elit", "sed", "eiusmod"]) for _ in range(90)),
        "dup_para_frac": "\n\n".join([rng.choice(long_sent)] * 5 + rng.sample(long_sent, 4)),
        "dup_line_frac": "\n".join(rng.sample(long_sent, 6) + ["Click here to subscribe."] * 5),
        "top_2gram_chars": intro() + " " + " ".join(sample(2) + " click here" for _ in range(30)),
        "dup_6gram_chars": " ".join([intro(), sample(40), *[sample(12)] * 5, sample(50)]),
        "mojibake_kept": "\n\n".join(rng.sample(long_sent, 12)).replace("the", "thÃ©", 1),
    }


@pytest.fixture(scope="module")
def docs() -> dict[str, str]:
    """name -> normalized text: ~300 stdlib documents (prose, release notes, licences, code) and the planted ones."""
    found: dict[str, str] = {}
    texts = [f for f in ("LICENSE.txt", "email/architecture.rst", "idlelib/NEWS.txt", "idlelib/README.txt",
                         "idlelib/HISTORY.txt", "idlelib/TODO.txt", "idlelib/idle_test/README.txt")
             if os.path.isfile(os.path.join(STDLIB, f))]
    for f in texts:
        for i, d in enumerate(_paragraph_docs(os.path.join(STDLIB, f), 6)):
            found[f"{f}#{i}"] = d
    prose = _module_docstrings("email") + _module_docstrings("json") + _module_docstrings("xml/dom")
    found.update({f"docstring#{i}": d for i, d in enumerate(prose)})
    found.update({f"code#{i}": d for i, d in enumerate(_code_docs("json", 50, 6) + _code_docs("email", 60, 6))})
    found.update({f"planted:{k}": v for k, v in _planted(prose + list(found.values())[:40]).items()})
    return {k: n for k, v in found.items() if (n := normalize(v))}


@pytest.fixture(scope="module")
def datatrove():
    try:
        from datatrove.data import Document
        from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
        from datatrove.utils.text import split_into_words
    except ImportError as e:
        missing(f"datatrove (the reference) is not installed: {e}; pip install -e '.[test]'")
    quality, repetition = GopherQualityFilter(), GopherRepetitionFilter()

    def decide(text: str) -> str | None:
        for f in (quality, repetition):
            verdict = f.filter(Document(text=text, id="x"))
            if verdict is not True:
                return DATATROVE_RULE[verdict[1]]
        return None

    return decide, lambda text: split_into_words(text, "en")


@pytest.fixture(scope="module")
def reference(docs, datatrove):
    decide, split = datatrove
    return {k: (decide(t), split(t)) for k, t in docs.items()}


def ours(text: str, words: list[str], cfg: CleanConfig) -> str | None:
    return quality_failure(text, words, cfg) or repetition_failure(text, words, cfg)


def test_with_datatrove_words_every_decision_and_rule_equals_datatrove(docs, reference):
    """Gopher's quality and repetition rules on datatrove's own words: the same first failing rule as
    datatrove's GopherQualityFilter then GopherRepetitionFilter (paper defaults) for every document."""
    cfg = CleanConfig(word_splitter="datatrove")
    got = {k: ours(t, reference[k][1], cfg) for k, t in docs.items()}
    want = {k: reference[k][0] for k in docs}
    assert {k: (got[k], want[k]) for k in docs if got[k] != want[k]} == {}
    assert len(docs) > 150 and 25 < sum(v is None for v in want.values()) < len(docs) - 100
    for name, text in docs.items():  # each planted document is removed by its rule
        if name.startswith("planted:"):
            rule = name.split(":")[1]
            assert want[name] == (None if rule == "mojibake_kept" else rule), name


def test_with_whitespace_words_decisions_differ_only_where_documented(docs, reference):
    """The default (whitespace words) against datatrove: every difference is a document datatrove
    drops for alpha_words, because its tokenizer makes each punctuation mark a word (Gopher, A1:
    "80% of words in a document contain at least one alphabetic character"; a comma is not a word),
    or one whose counts sit so near a threshold that the two word lists fall on either side of it."""
    cfg = CleanConfig()
    diffs = {}
    for k, t in docs.items():
        mine, theirs = ours(t, t.split(), cfg), reference[k][0]
        if (mine is None) != (theirs is None):
            diffs[k] = (mine, theirs)
    explained = {k for k, (mine, theirs) in diffs.items() if mine is None and theirs == "alpha_words"}
    print(f"{len(docs)} documents, {len(diffs)} decisions differ, {len(explained)} of them alpha_words")
    assert set(diffs) - explained == set(), {k: diffs[k] for k in set(diffs) - explained}


# -- the stage end to end: dedup, manifest, normalization, bad inputs -----------------------------
def _write_jsonl(path, texts, **extra) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t, "id": i, **extra}) + "\n")


def _read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_exact_dedup_removes_every_planted_copy_and_nothing_else(docs, tmp_path):
    """Copies across two inputs (jsonl and parquet), some differing only in what normalization
    removes (CRLF, trailing spaces): every copy removed, every first occurrence kept, in input order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    originals = sorted(set(docs.values()))[:120]
    rng = random.Random(1)
    first, second, copies = [], [], 0
    for t in originals:
        first.append(t)
        if rng.random() < 0.3:  # a copy later in the same file, or in the second file, or both
            first.append(t.replace("\n", "\r\n") + "  ")
            copies += 1
        if rng.random() < 0.3:
            second.append(t)
            copies += 1
    second += ["A document only the second input has, long enough to be kept by itself."]
    _write_jsonl(tmp_path / "a.jsonl", first)
    pq.write_table(pa.table({"text": second, "source": ["b"] * len(second)}), tmp_path / "b.parquet")
    out = tmp_path / "clean.jsonl"
    m = clean_mod.clean([tmp_path / "a.jsonl", tmp_path / "b.parquet"], out,
                        build_config(off=["quality", "repetition", "near_dedup"]), quiet=True)
    kept = [r["text"] for r in _read_jsonl(out)]
    assert kept == originals + [second[-1]]
    assert m["rules"]["exact_duplicate"]["documents"] == copies > 20
    assert m["documents"] == {"in": len(first) + len(second), "kept": len(kept), "removed": copies}
    assert list(m["rules"]) == ["empty", "exact_duplicate"]


def test_the_manifest_counts_hashes_and_samples(docs, tmp_path):
    """Per-rule documents and bytes add up to what was read; hashes are the files'; the same run
    twice (1 and 2 worker processes) writes the same output and samples (seeded); the kept records
    keep their other fields."""
    from data_tools.clean_manifest import file_hash

    texts = list(docs.values())[:150] + ["\x00\x01"]  # the last: empty once normalized
    _write_jsonl(tmp_path / "in.jsonl", texts, lang="en")
    with open(tmp_path / "in.jsonl", "a") as f:
        f.write('{"text": \n')  # a malformed line: skipped and counted
    outs = [clean_mod.clean([tmp_path / "in.jsonl"], tmp_path / f"{name}.jsonl", quiet=True, workers=workers)
            for name, workers in (("one", 1), ("two", 2))]
    m = outs[0]
    per_rule = m["rules"]
    assert m["documents"]["in"] == len(texts) and m["skipped"] == {"malformed_json": 1}
    assert sum(r["documents"] for r in per_rule.values()) == m["documents"]["removed"] > 20
    assert sum(r["bytes"] for r in per_rule.values()) == m["bytes"]["removed"]
    assert per_rule["empty"]["documents"] == 1
    assert all(len(r["sample"]) == min(5, r["documents"]) for r in per_rule.values())
    assert m["inputs"][0]["xxh3_128"] == file_hash(str(tmp_path / "in.jsonl"))
    assert m["output"]["xxh3_128"] == file_hash(str(tmp_path / "one.jsonl"))
    assert m["config"]["min_words"] == 50 and m["config"]["unicode_form"] == "NFC"
    on_disk = json.loads((tmp_path / "one.jsonl.manifest.json").read_text())
    assert on_disk["rules"] == outs[1]["rules"]  # the same sample both times, with 1 or 2 workers
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
    rows = _read_jsonl(tmp_path / "one.jsonl")
    assert len(rows) == m["documents"]["kept"] and all(r["lang"] == "en" for r in rows)


def test_normalize_is_idempotent_and_repairs_what_it_should():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    cases = {
        "CafÃ© au lait": "Café au lait",  # mojibake (UTF-8 read as cp1252)
        "e\u0301te\u0301": "été",  # NFC composes
        "a\r\nb\rc\x0cd\u2028e": "a\nb\nc\nd\ne",  # line endings
        "x\x00y\x1bz\x7f\ufeff": "xyz",  # control characters, BOM
        "a \x1b[1;31mred\x1b[0m b": "a red b",  # terminal escapes (ASCII text: without ftfy)
        "é \x1b[1;31mred\x1b[0m b": "é red b",  # (the same through ftfy)
        "line  \t\n\n\n\n  next\n\n": "line\n\n  next",  # trailing spaces, blank runs; indentation kept
        "“quoted” ﬁ Ａ": "“quoted” ﬁ Ａ",  # NFC keeps curly quotes, ligatures, full width
    }
    for raw, want in cases.items():
        assert normalize(raw) == want
        assert normalize(want) == want
    assert normalize("ﬁ Ａ …", "NFKC") == "fi A ..."

    # ASCII, Latin-1 (mojibake's raw material), C0/C1 controls, combining marks, line separators,
    # compatibility forms, CJK, emoji (sampled from a list: no Unicode table to build, fast)
    chars = [chr(c) for c in [*range(0x100), *range(0x300, 0x310), 0x2028, 0x2029, 0x2026, 0xfb01, 0xff21,
                              0x00b2, 0x4e2d, 0x1f600, 0x200d, 0xfeff, 0x2019, 0x201c, 0x20ac]]

    @settings(max_examples=60, deadline=None, database=None)
    @given(st.text(alphabet=st.sampled_from(chars), max_size=60)
           | st.text(alphabet="aé\u0301Ã©\r\n\t \x00\x85\u2028Â€™", max_size=40))
    def idempotent(text):
        once = normalize(text)
        assert normalize(once) == once
        assert normalize(once, "NFKC") == normalize(normalize(once, "NFKC"), "NFKC")

    idempotent()


@pytest.mark.parametrize("case", ["missing_input", "missing_column", "empty_corpus", "min_above_max", "bands_x_rows",
                                  "missing_eval_file", "shard_out_of_range", "more_shards_than_files",
                                  "shard_without_work_dir",
                                  "fraction_above_one", "unknown_rule", "output_is_input", "output_not_jsonl"])
def test_bad_inputs_and_rules_are_one_line_and_nothing_is_written(case, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "in.jsonl"
    _write_jsonl(good, ["Some text that is here."])
    out = tmp_path / "out" / "clean.jsonl"
    out.parent.mkdir()
    args = {"missing_input": ["--input", str(tmp_path / "nope.jsonl")],
            "min_above_max": ["--set", "min_words=500", "--set", "max_words=100"],
            "fraction_above_one": ["--set", "max_dup_line_frac=1.5"],
            "bands_x_rows": ["--set", "minhash_bands=20", "--set", "minhash_rows=13"],
            "missing_eval_file": ["--decontaminate", str(tmp_path / "no_eval.jsonl")],
            "unknown_rule": ["--off", "no_such_rule"],
            "output_is_input": ["--output", str(good)],
            "output_not_jsonl": ["--output", str(tmp_path / "out" / "clean.parquet")],
            "shard_out_of_range": ["--work-dir", str(out.parent / "w"), "--shard", "3/3"],
            "more_shards_than_files": ["--work-dir", str(out.parent / "w"), "--shards", "2"],
            "shard_without_work_dir": ["--shard", "0/2"]}.get(case, [])
    if case == "missing_column":
        pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
        args = ["--input", str(tmp_path / "t.parquet")]
    if case == "empty_corpus":
        (tmp_path / "empty.jsonl").write_text("\n\n")
        args = ["--input", str(tmp_path / "empty.jsonl")]
    argv = ["--input", str(good), "--output", str(out), "--quiet"]
    for flag in ("--input", "--output"):
        if flag in args:
            i = argv.index(flag)
            del argv[i:i + 2]
    rc = run_cli(clean_mod.main, argv + args)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert os.listdir(out.parent) == [] and good.read_text().count("\n") == 1


def test_every_bad_threshold_is_its_own_line():
    with pytest.raises(DataToolsError) as e:
        build_config(sets=["min_words=500", "max_words=100", "min_mean_word_length=-1", "nope=1"], off=["stop_word"])
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == 4 and all(lines), lines


def test_preprocess_records_the_cleaning_manifest_beside_the_idx(docs, tiny_data, tmp_path, capsys):
    """A cleaned corpus -> preprocess: `{prefix}.provenance.json` names the manifest and its hash (and
    the data identity checkpoints record carries it); a corpus edited after cleaning is one line; an
    uncleaned input writes no provenance."""
    import xxhash

    from data_tools import preprocess

    _write_jsonl(tmp_path / "raw.jsonl", list(docs.values())[:60])
    clean_mod.clean([tmp_path / "raw.jsonl"], tmp_path / "c.jsonl", quiet=True)
    manifest = tmp_path / "c.jsonl.manifest.json"
    preprocess.preprocess([tmp_path / "c.jsonl"], tmp_path / "tok", tiny_data["tokenizer_model"], workers=1,
                          quiet=True)
    prov = json.loads((tmp_path / "tok_text_document.provenance.json").read_text())
    assert prov == {"cleaning_manifests": {str(tmp_path / "c.jsonl"): {
        "path": str(manifest), "xxh3_128": xxhash.xxh3_128_hexdigest(manifest.read_bytes())}}}
    from mtds.data.sources import data_identity  # what every checkpoint records about its data

    assert data_identity(str(tmp_path / "tok_text_document"))["cleaning_manifests"] == prov["cleaning_manifests"]
    preprocess.preprocess([tmp_path / "raw.jsonl"], tmp_path / "tok", tiny_data["tokenizer_model"], workers=1,
                          quiet=True)
    assert not (tmp_path / "tok_text_document.provenance.json").exists()  # the stale record went
    with open(tmp_path / "c.jsonl", "a") as f:
        f.write('{"text": "added after cleaning"}\n')
    rc = run_cli(preprocess.main, ["--input", str(tmp_path / "c.jsonl"), "--output-prefix", str(tmp_path / "t2"),
                                   "--tokenizer-model", tiny_data["tokenizer_model"], "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "changed since data_tools.clean wrote it" in err and err.count("\n") == 1
    assert not glob.glob(str(tmp_path / "t2*"))


# -- near duplicates ---------------------------------------------------------------------------
def _edited(words: list[str], fraction: float, vocab: list[str], rng: random.Random) -> list[str]:
    out = list(words)
    for i in rng.sample(range(len(out)), round(fraction * len(out))):
        out[i] = rng.choice(vocab)
    return out


def test_near_dedup_catches_pairs_above_its_threshold_and_few_below():
    """Pairs of 300-word documents with random word substitutions, their true Jaccard similarity of
    5-gram shingles measured: recall >= 0.95 for pairs at 0.85 or more (the band test's chance there
    is >= 0.99; at the printed threshold ~0.72 itself it is 1/2 by construction), false positives
    <= 1% for pairs at 0.4 or less."""
    from data_tools.near_dedup import NearDedup, effective_threshold, shingles, signature

    cfg = CleanConfig()
    assert abs(effective_threshold(cfg.minhash_bands, cfg.minhash_rows) - 0.719) < 0.001
    rng = random.Random(5)
    vocab = [f"w{i}" for i in range(5000)]
    high, low = [], []
    for i in range(500):
        base = rng.choices(vocab, k=300)
        other = _edited(base, rng.choice([0.005, 0.01, 0.02, 0.08, 0.12, 0.2]), vocab, rng)
        a, b = (" ".join(x) for x in (base, other))
        sa, sb = set(shingles(a, 5)), set(shingles(b, 5))
        jaccard = len(sa & sb) / len(sa | sb)
        index = NearDedup(cfg.minhash_bands, cfg.minhash_rows)
        index.is_duplicate(signature(a, 5, cfg.minhash_permutations, cfg.minhash_seed))
        flagged = index.is_duplicate(signature(b, 5, cfg.minhash_permutations, cfg.minhash_seed))
        if jaccard >= 0.85:
            high.append(flagged)
        elif jaccard <= 0.4:
            low.append(flagged)
    assert len(high) > 100 and len(low) > 100, (len(high), len(low))
    print(f"recall {sum(high)}/{len(high)} at >= 0.85, false positives {sum(low)}/{len(low)} at <= 0.4")
    assert sum(high) / len(high) >= 0.95 and sum(low) / len(low) <= 0.01, (sum(high), len(high), sum(low), len(low))


def test_clean_removes_planted_near_copies_and_keeps_the_first(docs, tmp_path, capsys):
    """Near copies (1-2% of words replaced) after their originals: each removed as near_duplicate;
    the effective threshold is printed before the run and recorded in the manifest."""
    rng = random.Random(3)
    originals = [t for t in sorted(set(docs.values())) if len(t.split()) > 200][:30]
    vocab = " ".join(originals).split()
    copies = [" ".join(_edited(t.split(), 0.015, vocab, rng)) for t in originals[::3]]
    _write_jsonl(tmp_path / "in.jsonl", originals + copies)
    m = clean_mod.clean([tmp_path / "in.jsonl"], tmp_path / "out.jsonl", build_config(off=["quality", "repetition"]))
    err = capsys.readouterr().err
    assert "effective Jaccard threshold ~0.72" in err.splitlines()[0]
    assert [r["text"] for r in _read_jsonl(tmp_path / "out.jsonl")] == originals
    assert m["rules"]["near_duplicate"]["documents"] == len(copies) == 10
    assert m["near_dedup"]["effective_threshold"] == round((1 / 14) ** (1 / 8), 4)


def test_decontamination_removes_documents_sharing_a_13gram_with_evaluation_texts(docs, tmp_path):
    """Evaluation texts (parquet): a 20-word span of one document, recased and repunctuated, removes
    it and every other document holding one of its 13-word windows ("contaminated", checked by plain
    substring search); a 12-word span of another (no 13-gram) removes nothing; report mode keeps
    them all and lists the same documents in the manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    originals = [t for t in sorted(set(docs.values())) if len(t.split()) > 100][:20]
    plain = lambda t: " " + " ".join(re.sub(r"[\W_]+", " ", t.lower()).split()) + " "
    a, b = plain(originals[3]).split(), plain(originals[7]).split()
    evals = [" ".join(a[40:60]).upper().replace(" ", ", ", 3), " ".join(b[40:52]), "an unrelated question?"]
    pq.write_table(pa.table({"question": evals}), tmp_path / "eval.parquet")
    _write_jsonl(tmp_path / "in.jsonl", originals)
    off = build_config(off=["quality", "repetition", "near_dedup"])
    m = clean_mod.clean([tmp_path / "in.jsonl"], tmp_path / "out.jsonl", off, quiet=True,
                        decontaminate=[tmp_path / "eval.parquet"], eval_key="question")
    span = a[40:60]
    windows = [" " + " ".join(span[i:i + 13]) + " " for i in range(len(span) - 12)]
    hit = [i for i, t in enumerate(originals) if any(w in plain(t) for w in windows)]
    assert 3 in hit and 7 not in hit
    kept = [t for i, t in enumerate(originals) if i not in hit]
    assert [r["text"] for r in _read_jsonl(tmp_path / "out.jsonl")] == kept
    where = [f"{tmp_path / 'in.jsonl'}:{i + 1}" for i in hit][:5]
    assert [d["where"] for d in m["rules"]["contaminated"]["sample"]] == where
    assert m["decontamination"]["texts"] == 3 and m["decontamination"]["shorter_than_n"] == 2
    report = build_config(sets=["decontam_action=report"], off=["quality", "repetition", "near_dedup"])
    m = clean_mod.clean([tmp_path / "in.jsonl"], tmp_path / "out2.jsonl", report, quiet=True,
                        decontaminate=[tmp_path / "eval.parquet"], eval_key="question")
    assert m["documents"]["kept"] == len(originals) and "contaminated" not in m["rules"]
    assert [d["where"] for d in m["decontamination"]["reported"]["sample"]] == where


def test_progress_counts_a_file_given_twice_twice():
    """`--input a.jsonl a.jsonl` (as the README's dedup example could be run): the progress counts
    the second pass from 0 instead of going back (it showed 30.4 MB, then 7.3 MB of 66.5 MB)."""
    from data_tools.progress import Progress

    p = Progress("clean", 200, quiet=True)
    for pos in (50, 100, 40, 100):
        p.update("a.jsonl", pos, 1)
    assert p.bytes == 200


C4_RULE = {"lorem_ipsum": "c4_lorem_ipsum", "curly_bracket": "c4_curly_bracket",
           "too_few_sentences": "c4_too_few_sentences"}


def test_c4_line_filters_equal_datatrove_c4_quality_filter(docs, datatrove, tmp_path):
    """C4's line filters with datatrove's sentence splitter against datatrove's C4QualityFilter: the
    same decision, rule and kept text for every document (stdlib prose, code and planted lines); and
    the same through data_tools.clean (--set c4_lines=true), its removed lines counted."""
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter

    from data_tools.c4_lines import c4_filter, sentence_counter

    planted = {
        "c4:web": "Home | About | Contact\nWe use cookies to improve your experience.\nThe river rises in the hills "
                  "and runs to the sea. It is long. It floods in spring. Farmers like it. Boats use it.\n"
                  "Enable JavaScript to view this page.\nRead more...\nSee the map [1] and the notes [edit].",
        "c4:lorem": "Lorem ipsum dolor sit amet, it is a placeholder. " * 6,
        "c4:braces": "This line is fine and ends well.\nfunction f() { return 1; } is code.",
    }
    reference, counter, got = C4QualityFilter(), sentence_counter("datatrove"), {}
    for name, text in {**docs, **planted}.items():
        d = Document(text=text, id="x")
        verdict = reference.filter(d)
        want = (d.text, None) if verdict is True else (None, C4_RULE[verdict[1]])
        got[name] = c4_filter(text, 3, 5, counter)[:2], want
    assert {k: v for k, v in got.items() if v[0] != v[1]} == {}
    rules = [want[1] for _, want in got.values()]
    assert rules.count(None) > 10 and {"c4_lorem_ipsum", "c4_curly_bracket", "c4_too_few_sentences"} <= set(rules)
    assert got["c4:web"][0][0] == ("The river rises in the hills and runs to the sea. It is long. It floods in "
                                   "spring. Farmers like it. Boats use it.\nSee the map  and the notes .")
    # through data_tools.clean, with nltk Punkt's sentences (the default)
    _write_jsonl(tmp_path / "web.jsonl", list(planted.values()))
    m = clean_mod.clean([tmp_path / "web.jsonl"], tmp_path / "out.jsonl",
                        build_config(sets=["c4_lines=true"], off=["quality", "repetition"]), quiet=True)
    assert [r["text"] for r in _read_jsonl(tmp_path / "out.jsonl")] == [got["c4:web"][0][0]]
    assert m["c4_lines"] == {"lines_removed": 4} and m["rules"]["c4_lorem_ipsum"]["documents"] == 1
    assert m["rules"]["c4_curly_bracket"]["documents"] == 1


# -- dedup on disk, shards and their merge ---------------------------------------------------------
def test_disk_dedup_flags_equal_the_in_memory_indexes():
    """Random digests and band keys with many collisions, cut into ~100 hash-range files by a 4 KB
    budget: every candidate gets the decision ExactDedup then NearDedup give it one after another."""
    import numpy as np

    from data_tools.disk_dedup import EXACT, NEAR, dedup_flags, sig_dtype

    rng = np.random.default_rng(0)
    n, bands = 3000, 4
    rec = np.zeros(n, sig_dtype(bands))
    spread = np.uint64(0x9E3779B97F4A7C15)  # small numbers to keys with every top bit in use
    rec["digest"][:, 0] = rng.integers(0, 2000, n, dtype=np.uint64) * spread
    rec["digest"][:, 1] = rng.integers(0, 2, n, dtype=np.uint64)
    rec["bands"] = rng.integers(0, 3 * n, (n, bands), dtype=np.uint64) * spread
    want, seen, index = [], set(), [set() for _ in range(bands)]
    for r in rec:
        digest, keys = tuple(int(x) for x in r["digest"]), [int(k) for k in r["bands"]]
        if digest in seen:
            want.append(EXACT)
            continue
        seen.add(digest)
        want.append(NEAR if any(k in b for k, b in zip(keys, index)) else 0)
        for k, b in zip(keys, index):
            b.add(k)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for i, part in enumerate(np.array_split(rec, 3)):  # three shards' files
            part.tofile(os.path.join(d, f"{i}.sig"))
        flags = dedup_flags([os.path.join(d, f"{i}.sig") for i in range(3)], os.path.join(d, "scratch"), bands,
                            True, True, memory_mb=4096 / 2**20, quiet=True)
        assert list(flags) == want
        assert 300 < want.count(EXACT) and 300 < want.count(NEAR) and 300 < want.count(0)


def _planted_corpus(docs, folder) -> tuple[list[str], int, int]:
    """Three jsonl files: 30 originals, near copies of every third (1.5% of words replaced), exact
    copies (CRLF) of every fifth, one a chain (a near copy of a near copy, in the last file), junk."""
    rng = random.Random(3)
    originals = [t for t in sorted(set(docs.values())) if len(t.split()) > 200][:30]
    vocab = " ".join(originals).split()
    near = [" ".join(_edited(t.split(), 0.015, vocab, rng)) for t in originals[::3]]
    chain = " ".join(_edited(near[0].split(), 0.015, vocab, rng))
    exact = [t.replace("\n", "\r\n") for t in originals[::5]]
    texts = originals[:12] + near[:4] + exact[:3] + originals[12:] + near[4:] + exact[3:] + [chain, "\x00"]
    files = [texts[:15], texts[15:30], texts[30:]]
    for i, part in enumerate(files):
        _write_jsonl(folder / f"part_{i}.jsonl", part)
    with open(folder / "part_1.jsonl", "a") as f:
        f.write('{"text": \n')
    return originals, len(near) + 1, len(exact)


def test_disk_dedup_and_shards_keep_what_one_pass_in_memory_keeps(docs, tmp_path, capsys):
    """The same planted corpus cleaned four ways: in memory; with --work-dir (keys on disk, a tiny
    memory budget: many hash ranges); as 3 shards in one command; and shard by shard through the CLI
    then --merge. The same output bytes and the same manifest counts and samples each time."""
    (tmp_path / "in").mkdir()
    originals, n_near, n_exact = _planted_corpus(docs, tmp_path / "in")
    cfg = build_config(off=["quality", "repetition"])
    inputs = [tmp_path / "in"]
    runs = {"memory": clean_mod.clean(inputs, tmp_path / "memory.jsonl", cfg, quiet=True),
            "disk": clean_mod.clean(inputs, tmp_path / "disk.jsonl", cfg, quiet=True, work_dir=tmp_path / "w1",
                                    memory_mb=0.01),
            "shards": clean_mod.clean(inputs, tmp_path / "shards.jsonl", cfg, quiet=True, work_dir=tmp_path / "w3",
                                      shards=3, workers=2)}
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "cli.jsonl"), "--off", "quality", "--off",
            "repetition", "--work-dir", str(tmp_path / "wc"), "--log-interval", "0"]
    for i in range(3):
        assert run_cli(clean_mod.main, [*argv, "--shard", f"{i}/3"]) == 0
    capsys.readouterr()
    assert run_cli(clean_mod.main, [*argv, "--shards", "3", "--merge"]) == 0
    err = capsys.readouterr().err
    assert "effective Jaccard threshold ~0.72" in err.splitlines()[0] and "clean: dedup: " in err
    runs["cli"] = json.loads((tmp_path / "cli.jsonl.manifest.json").read_text())
    assert [r["text"] for r in _read_jsonl(tmp_path / "memory.jsonl")] == originals
    m = runs["memory"]
    assert m["rules"]["near_duplicate"]["documents"] == n_near
    assert m["rules"]["exact_duplicate"]["documents"] == n_exact
    assert m["skipped"] == {"malformed_json": 1} and m["rules"]["empty"]["documents"] == 1
    for name, other in runs.items():
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (tmp_path / "memory.jsonl").read_bytes(), name
        for k in ("documents", "bytes", "rules", "skipped", "first_skipped", "normalize", "inputs"):
            assert other[k] == m[k], (name, k)


def test_a_rerun_skips_finished_shards_and_the_merge_names_what_is_missing(docs, tmp_path, capsys):
    """Rerunning the sharded command redoes only the shard whose marker is gone (or whose input
    changed); --merge with a shard missing, or done with other rules, is one line and writes nothing."""
    (tmp_path / "in").mkdir()
    _planted_corpus(docs, tmp_path / "in")
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out.jsonl"), "--off", "quality",
            "--work-dir", str(tmp_path / "w"), "--shards", "3"]
    assert run_cli(clean_mod.main, argv) == 0
    first = (tmp_path / "out.jsonl").read_bytes()
    capsys.readouterr()
    os.remove(tmp_path / "w" / "shard_00001.json")
    os.utime(tmp_path / "in" / "part_2.jsonl", ns=(1, 1))  # "changed": its mtime differs from the marker's
    assert run_cli(clean_mod.main, argv) == 0
    err = capsys.readouterr().err
    assert "shard 0/3 done before" in err and "shard 1/3 done:" in err and "shard 2/3 done:" in err
    assert "shard 1/3 done before" not in err and "shard 2/3 done before" not in err
    assert (tmp_path / "out.jsonl").read_bytes() == first
    os.remove(tmp_path / "out.jsonl")
    os.remove(tmp_path / "w" / "shard_00002.json")
    assert run_cli(clean_mod.main, [*argv, "--merge"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shard 2/3" in err and "not done" in err
    assert run_cli(clean_mod.main, [*argv[:-4], "--off", "repetition", *argv[-4:], "--merge"]) == 2
    assert "other rules or inputs" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_sharded_decontamination_equals_one_pass_and_an_edited_eval_file_redoes_the_shards(docs, tmp_path, capsys):
    """--decontaminate through shards: the same output and manifest (report samples too) as one
    pass in memory; evaluation texts changed since (mtime) make a rerun redo every shard."""
    (tmp_path / "in").mkdir()
    originals, _, _ = _planted_corpus(docs, tmp_path / "in")
    spans = [" ".join(originals[4].split()[30:50]), " ".join(originals[20].split()[:40])]
    _write_jsonl(tmp_path / "eval.jsonl", spans)
    argv = ["--input", str(tmp_path / "in"), "--off", "quality", "--off", "repetition", "--decontaminate",
            str(tmp_path / "eval.jsonl")]
    assert run_cli(clean_mod.main, [*argv, "--output", str(tmp_path / "one.jsonl"), "--quiet"]) == 0
    sharded = [*argv, "--output", str(tmp_path / "three.jsonl"), "--work-dir", str(tmp_path / "w"), "--shards", "3"]
    assert run_cli(clean_mod.main, [*sharded, "--quiet"]) == 0
    one, three = (json.loads((tmp_path / f"{n}.jsonl.manifest.json").read_text()) for n in ("one", "three"))
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "three.jsonl").read_bytes()
    assert one["rules"]["contaminated"]["documents"] >= 2 and one["rules"] == three["rules"]
    assert one["decontamination"] == three["decontamination"]
    os.utime(tmp_path / "eval.jsonl", ns=(1, 1))
    capsys.readouterr()
    assert run_cli(clean_mod.main, [*sharded, "--log-interval", "60"]) == 0
    err = capsys.readouterr().err
    assert "done before" not in err and err.count("clean: shard ") == 3
