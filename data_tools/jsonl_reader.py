"""Read jsonl inputs in chunks of raw lines and classify every line: a document or a skip reason.

Kept separate from the tokenizer so it can be fuzzed on its own: for any bytes, `parse_lines`
returns each line either as a document (one str per json key) or as a skip with a reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import orjson

from data_tools.io_utils import open_binary_lines

# reason code -> how the one-line messages describe it
SKIP_REASONS = {
    "blank_line": "blank line",
    "non_utf8": "not valid UTF-8",
    "malformed_json": "malformed JSON",
    "not_an_object": "not a JSON object",
    "missing_key": "missing key",
    "non_string": "value is not a string",
    "empty": "empty document",
}


@dataclass
class Chunk:
    """A run of consecutive raw lines of one input file."""

    path: str
    first_line: int  # 1-based line number of lines[0]
    lines: list[bytes]
    input_pos: int  # bytes of the file on disk consumed so far (for progress / ETA)


@dataclass
class Skip:
    path: str
    line: int
    reason: str
    detail: str = ""

    def message(self) -> str:
        what = SKIP_REASONS[self.reason]
        return f"{self.path}:{self.line}: {what}{' ' + self.detail if self.detail else ''}"


@dataclass
class Parsed:
    """Documents of one chunk: texts[k][i] is key k of document i, read from line lines[i]."""

    texts: list[list[str]]
    lines: list[int] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)


def iter_chunks(paths: Sequence[str], max_bytes: int = 1 << 20, max_lines: int = 4096) -> Iterator[Chunk]:
    """Stream every input file as chunks of at most ~max_bytes / max_lines raw lines."""
    for path in paths:
        with open_binary_lines(path) as (stream, counter):
            line_no, lines, size = 1, [], 0
            for raw in stream:
                lines.append(raw)
                size += len(raw)
                if size >= max_bytes or len(lines) >= max_lines:
                    yield Chunk(path, line_no, lines, counter.nbytes)
                    line_no += len(lines)
                    lines, size = [], 0
            if lines:
                yield Chunk(path, line_no, lines, counter.nbytes)


def total_input_bytes(paths: Sequence[str]) -> int:
    return sum(os.path.getsize(p) for p in paths)


class UnparsableLine(ValueError):
    """A line that is not JSON; `reason` is its SKIP_REASONS key, the message its description."""

    def __init__(self, reason: str):
        super().__init__(SKIP_REASONS[reason])
        self.reason = reason


def load_json_line(raw: bytes):
    """The JSON value of one line, or UnparsableLine: "non_utf8" or "malformed_json" (orjson rejects
    invalid UTF-8 as malformed JSON too; the reports tell the two causes apart)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UnparsableLine("non_utf8") from None
        raise UnparsableLine("malformed_json") from None


def parse_lines(chunk: Chunk, json_keys: Sequence[str]) -> Parsed:
    """Classify each line of `chunk`; documents keep every key's text, in `json_keys` order."""
    out = Parsed(texts=[[] for _ in json_keys])
    for i, raw in enumerate(chunk.lines):
        line_no = chunk.first_line + i
        if not raw.strip():
            out.skips.append(Skip(chunk.path, line_no, "blank_line"))
            continue
        try:
            doc = load_json_line(raw)
        except UnparsableLine as e:
            out.skips.append(Skip(chunk.path, line_no, e.reason))
            continue
        if not isinstance(doc, dict):
            out.skips.append(Skip(chunk.path, line_no, "not_an_object"))
            continue
        values, skip = [], None
        for key in json_keys:
            if key not in doc:
                skip = Skip(chunk.path, line_no, "missing_key", repr(key))
                break
            v = doc[key]
            if not isinstance(v, str):
                skip = Skip(chunk.path, line_no, "non_string", f"({key!r} is {type(v).__name__})")
                break
            if not v.strip():
                skip = Skip(chunk.path, line_no, "empty", f"({key!r})")
                break
            values.append(v)
        if skip is not None:
            out.skips.append(skip)
            continue
        for k, v in enumerate(values):
            out.texts[k].append(v)
        out.lines.append(line_no)
    return out
