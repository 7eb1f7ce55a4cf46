"""Turn text files (a directory tree, globs, or jsonl inputs) into jsonl documents.

    python -m data_tools.corpus --output corpus.jsonl [--stdlib] [INPUT ...]

Each text file becomes one document `{"text": ..., "source": relpath}`; `.jsonl`,
`.jsonl.gz` and `.jsonl.zst` inputs are copied through line by line as they are, and `.parquet` /
`.arrow` inputs row by row, one json line of the row's columns each (null cells left out; read
through data_tools.inputs, as preprocess reads them). The order is
deterministic (sorted paths), so the same inputs always give the same bytes. With `--stdlib`,
or with no input at all, the corpus is the running interpreter's standard library (`.py`
sources plus `.rst`/`.txt` docs, ~30 MB): the embedded default corpus, nothing downloaded.
Files that are not valid UTF-8 are skipped and counted.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import sysconfig
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import orjson

from data_tools.errors import DataToolsError, run_cli
from data_tools.inputs import InputFile, format_of, iter_records
from data_tools.io_utils import JSONL_SUFFIXES, atomic_outputs, check_output_prefix, open_binary_lines

TEXT_SUFFIXES = (".py", ".rst", ".txt", ".md")
STDLIB_SUFFIXES = (".py", ".rst", ".txt")
COLUMNAR_SUFFIXES = (".parquet", ".arrow")
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass
class CorpusSummary:
    documents: int = 0
    bytes: int = 0
    skipped_non_utf8: int = 0
    skipped_empty: int = 0
    jsonl_lines: int = 0


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def walk_files(root: str, suffixes: Sequence[str]) -> list[str]:
    """All files under `root` ending in one of `suffixes`, sorted, skipping installed packages
    (site-packages/dist-packages: not part of the stdlib, and they vary between machines)."""
    found = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS)
        found.extend(os.path.join(d, f) for f in files if f.endswith(tuple(suffixes)))
    return sorted(found)


def expand_inputs(inputs: Sequence[str], suffixes: Sequence[str] = TEXT_SUFFIXES) -> list[tuple[str, str]]:
    """(path, relpath-for-`source`) for every input: directories are walked, globs expanded."""
    out: list[tuple[str, str]] = []
    for item in inputs:
        if os.path.isdir(item):
            root = item
            out.extend((p, os.path.relpath(p, root))
                       for p in walk_files(root, tuple(suffixes) + JSONL_SUFFIXES + COLUMNAR_SUFFIXES))
            continue
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        if not matches:
            raise DataToolsError(f"{item}: no files match")
        for p in matches:
            if not os.path.isfile(p):
                raise DataToolsError(f"{p}: input file not found")
            out.append((p, os.path.basename(p)))
    return out


def _is_jsonl(path: str) -> bool:
    return path.endswith(JSONL_SUFFIXES)


def iter_documents(files: Iterable[tuple[str, str]], summary: CorpusSummary) -> Iterable[bytes]:
    """Serialized jsonl lines (with trailing newline) for each input file, in order."""
    for path, rel in files:
        if _is_jsonl(path):
            with open_binary_lines(path) as (stream, _):
                for line in stream:
                    if line.strip():
                        summary.jsonl_lines += 1
                        yield line if line.endswith(b"\n") else line + b"\n"
            continue
        if path.endswith(COLUMNAR_SUFFIXES):
            for chunk in iter_records([InputFile(path, format_of(path))]):
                for i, row in enumerate(chunk.records):
                    try:
                        line = orjson.dumps(row)
                    except TypeError as e:  # e.g. a binary column: not JSON
                        raise DataToolsError(f"{chunk.where(i)}: row cannot be written as JSON ({e})") from None
                    summary.jsonl_lines += 1
                    yield line + b"\n"
            continue
        with open(path, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            summary.skipped_non_utf8 += 1
            continue
        if not text.strip():
            summary.skipped_empty += 1
            continue
        summary.documents += 1
        summary.bytes += len(raw)
        yield orjson.dumps({"text": text, "source": rel.replace(os.sep, "/")}) + b"\n"


def build_corpus(output: str | os.PathLike, inputs: Sequence[str] = (), stdlib: bool = False,
                 quiet: bool = False) -> CorpusSummary:
    """Write the jsonl corpus to `output` (temp name, renamed when complete)."""
    output = check_output_prefix(output)
    files: list[tuple[str, str]] = []
    if stdlib or not inputs:
        root = stdlib_root()
        files += [(p, os.path.relpath(p, root)) for p in walk_files(root, STDLIB_SUFFIXES)]
    files += expand_inputs(inputs)
    summary = CorpusSummary()
    t0 = time.perf_counter()
    with atomic_outputs([output]) as (tmp,):
        with open(tmp, "wb") as out:
            for line in iter_documents(files, summary):
                out.write(line)
    if not quiet:
        print(
            f"corpus: {output}: {summary.documents} files ({summary.bytes / 1e6:.1f} MB)"
            f" + {summary.jsonl_lines} jsonl lines; skipped {summary.skipped_non_utf8} non-UTF-8,"
            f" {summary.skipped_empty} empty; {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="*", help="directories, files or globs (text, .jsonl(.gz/.zst), .parquet, .arrow)")
    p.add_argument("--output", "-o", required=True, help="jsonl file to write")
    p.add_argument("--stdlib", action="store_true",
                   help="include the interpreter's standard library (the default when no input is given)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    build_corpus(a.output, a.inputs, stdlib=a.stdlib, quiet=a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
