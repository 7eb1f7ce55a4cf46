"""Property tests of preprocess's jsonl reader: any bytes in, never a crash, and every line is
either a document or a skip with a known reason (no line lost, none counted twice)."""

from __future__ import annotations

import json
import os
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from data_tools.jsonl_reader import SKIP_REASONS, iter_chunks, parse_lines

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
json_lines = st.one_of(
    st.dictionaries(st.sampled_from(["text", "title", "x"]), json_values, max_size=3).map(
        lambda d: json.dumps(d).encode()),
    st.builds(lambda t: json.dumps({"text": t}, ensure_ascii=False).encode(), st.text()),
    json_values.map(lambda v: json.dumps(v).encode()),
)
any_line = st.one_of(json_lines, st.binary(max_size=40)).map(lambda b: b.replace(b"\n", b" "))


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(any_line, max_size=30), max_lines=st.integers(1, 7),
       keys=st.sampled_from([("text",), ("text", "title")]))
def test_every_line_is_a_document_or_a_counted_skip(lines, max_lines, keys):
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as f:
        f.write(b"".join(l + b"\n" for l in lines))
    try:
        seen = []
        for chunk in iter_chunks([f.name], max_bytes=64, max_lines=max_lines):
            parsed = parse_lines(chunk, keys)
            assert all(len(t) == len(parsed.lines) for t in parsed.texts)
            for k in range(len(keys)):
                assert all(isinstance(t, str) and t.strip() for t in parsed.texts[k])
            assert all(s.reason in SKIP_REASONS for s in parsed.skips)
            seen += parsed.lines + [s.line for s in parsed.skips]
            for s in parsed.skips:
                assert s.message().startswith(f"{f.name}:{s.line}: ")
        assert sorted(seen) == list(range(1, len(lines) + 1))
    finally:
        os.remove(f.name)


@given(st.text())
def test_valid_documents_come_back_unchanged(text):
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as f:
        f.write(json.dumps({"text": text}).encode() + b"\n")
    try:
        (chunk,) = iter_chunks([f.name])
        parsed = parse_lines(chunk, ("text",))
        if text.strip():
            assert parsed.texts == [[text]] and parsed.lines == [1]
        else:
            assert [s.reason for s in parsed.skips] == ["empty"]
    finally:
        os.remove(f.name)
