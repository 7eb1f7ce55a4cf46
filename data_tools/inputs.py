"""What `--input` names: files of which format, in which order, read as which chunks.

An argument is a file, a folder or a glob pattern, and arguments keep their order:
  - a file: `.parquet`, `.arrow`, or jsonl (`.jsonl`, `.jsonl.gz`, `.jsonl.zst`; any other
    name is read as jsonl, as before this module existed);
  - a folder: its `.parquet`, `.arrow` and jsonl files, recursively, names sorted; a `datasets`
    `save_to_disk` folder (`state.json` beside its `.arrow` shards) in the order state.json lists;
  - a glob (`'data/*.parquet'`, `'shards/**/*.jsonl.zst'`): expanded here, so it works quoted,
    matches sorted and taken as if listed one by one.
Every problem (nothing found, a missing column, an unreadable file) is one line before any work.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

from data_tools.errors import DataToolsError
from data_tools.io_utils import JSONL_SUFFIXES

FORMAT_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", **{s: "jsonl" for s in JSONL_SUFFIXES}}
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class InputFile:
    path: str
    format: str  # "jsonl" | "parquet" | "arrow"


def format_of(path: str) -> str | None:
    """The format a file name says, or None for a name this tool does not recognise."""
    for suffix, fmt in FORMAT_SUFFIXES.items():
        if path.endswith(suffix):
            return fmt
    return None


def resolve_inputs(args: Sequence[str | os.PathLike]) -> list[InputFile]:
    """Every input file behind `args`, in order; a one-line DataToolsError for the first bad one."""
    if not args:
        raise DataToolsError("no input files given (--input)")
    out: list[InputFile] = []
    for arg in map(os.fspath, args):
        if os.path.isdir(arg):
            out += _folder(arg)
        elif os.path.isfile(arg):
            out.append(_file(arg))
        elif any(c in arg for c in _GLOB_CHARS):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                raise DataToolsError(f"{arg}: no files match this pattern")
            # Matches are what the shell would have passed: files as named, folders as folders.
            for m in matches:
                out += _folder(m) if os.path.isdir(m) else [_file(m)]
        else:
            raise DataToolsError(f"{arg}: input file not found")
    return out


def _file(path: str) -> InputFile:
    if not os.access(path, os.R_OK):
        raise DataToolsError(f"{path}: input file is not readable")
    return InputFile(path, format_of(path) or "jsonl")


def _folder(root: str) -> list[InputFile]:
    if os.path.isfile(os.path.join(root, "dataset_dict.json")):
        splits = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        raise DataToolsError(f"{root}: a datasets DatasetDict (splits: {', '.join(splits)}); "
                             f"give one split's folder, e.g. {os.path.join(root, splits[0] if splits else 'train')}")
    found: list[tuple[list[str], list[InputFile]]] = []  # (relative path as parts, its inputs)
    for d, subdirs, files in os.walk(root):
        subdirs[:] = [s for s in subdirs if not s.startswith((".", "_"))]  # caches, _temporary/
        rel = os.path.relpath(d, root).split(os.sep) if d != root else []
        if "state.json" in files and any(f.endswith(".arrow") for f in files):
            found.append((rel, [InputFile(p, "arrow") for p in _save_to_disk_shards(d)]))
            subdirs[:] = []
            continue
        found += [(rel + [name], [_file(os.path.join(d, name))]) for name in files
                  if not name.startswith((".", "_")) and format_of(name) is not None]
    if not found:
        raise DataToolsError(f"{root}: no .parquet, .arrow or .jsonl(.gz/.zst) files in this folder")
    # Sorted by path, part by part: 'a/z.parquet' before 'a.parquet' before 'b/x.parquet'.
    return [f for _, files in sorted(found, key=lambda t: t[0]) for f in files]


def _save_to_disk_shards(folder: str) -> list[str]:
    """The `.arrow` shards of a `datasets.Dataset.save_to_disk` folder, in the dataset's row order."""
    state_path = os.path.join(folder, "state.json")
    try:
        with open(state_path) as f:
            names = [d["filename"] for d in json.load(f)["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataToolsError(f"{state_path}: not a datasets save_to_disk state file ({e})") from None
    paths = [os.path.join(folder, n) for n in names]
    for p in paths:
        if not os.path.isfile(p):
            raise DataToolsError(f"{p}: listed in {state_path} but missing")
    return paths


def check_inputs(inputs: Sequence[InputFile], json_keys: Sequence[str]) -> None:
    """Read every columnar file's schema now, so a missing column or a damaged footer is one line
    before any work, not an error after hours of it."""
    columnar = [f for f in inputs if f.format != "jsonl"]
    if columnar:
        from data_tools.columnar_reader import check_columns  # pyarrow only when needed

        for f in columnar:
            check_columns(f.path, f.format, json_keys)


def iter_chunks(inputs: Sequence[InputFile], json_keys: Sequence[str]) -> Iterator:
    """Stream every input, in order, as jsonl `Chunk`s or columnar `ColumnChunk`s."""
    from data_tools import jsonl_reader

    for f in inputs:
        if f.format == "jsonl":
            yield from jsonl_reader.iter_chunks([f.path])
        else:
            from data_tools.columnar_reader import iter_column_chunks

            yield from iter_column_chunks(f.path, f.format, json_keys)


def parse_chunk(chunk, json_keys: Sequence[str]):
    """Documents and skips of one chunk of either kind (runs in the worker processes)."""
    from data_tools.jsonl_reader import Chunk, parse_lines

    if isinstance(chunk, Chunk):
        return parse_lines(chunk, json_keys)
    from data_tools.columnar_reader import parse_columns

    return parse_columns(chunk, json_keys)


@dataclass
class RecordChunk:
    """A run of consecutive records of one input, for the tools that read whole records (sft,
    classify, train_tokenizer): jsonl lines as raw bytes (each tool parses them, so its messages
    name a bad line its own way), or parquet/Arrow rows as dicts of Python values (pyarrow's
    `to_pylist`: a list-of-structs column gives lists of dicts, as json does). A null cell is left
    out of its dict: a columnar file gives every row every column, and null is how a row lacks a key."""

    path: str
    first: int  # jsonl: 1-based line number of records[0]; parquet/Arrow: 0-based row
    records: list
    input_pos: int  # bytes of the file consumed so far (for progress)
    columnar: bool

    def where(self, i: int) -> str:
        """FILE:LINE (jsonl) or FILE:ROW (parquet/Arrow) of records[i]."""
        return f"{self.path}:{self.first + i}"


def iter_records(inputs: Sequence[InputFile], keys: Sequence[str] | None = None) -> Iterator[RecordChunk]:
    """Stream every input, in order, as RecordChunks. `keys`: the fields the tool reads; a
    parquet/Arrow file's other columns are not read (None: every column), and a file with none of
    them is one DataToolsError listing its columns."""
    from data_tools import jsonl_reader

    for f in inputs:
        if f.format == "jsonl":
            for c in jsonl_reader.iter_chunks([f.path]):
                yield RecordChunk(c.path, c.first_line, c.lines, c.input_pos, False)
            continue
        from data_tools.columnar_reader import _to_python, iter_column_chunks, read_schema

        names = read_schema(f.path, f.format).names
        cols = list(names) if keys is None else [k for k in keys if k in names]
        if not cols:
            raise DataToolsError(f"{f.path}: none of the columns {list(keys)}; its columns: {', '.join(names)}")
        for c in iter_column_chunks(f.path, f.format, cols):
            cells = [_to_python(a) for a in c.columns]
            rows = [{k: v for k, v in zip(cols, values) if v is not None} for values in zip(*cells)]
            yield RecordChunk(c.path, c.first_row, rows, c.input_pos, True)


def load_record(chunk: RecordChunk, i: int):
    """Record i of `chunk` as a Python value: a columnar row as is, a jsonl line parsed (raises
    jsonl_reader.UnparsableLine for bad JSON); None for a blank jsonl line."""
    rec = chunk.records[i]
    if chunk.columnar:
        return rec
    if not rec.strip():
        return None
    from data_tools.jsonl_reader import load_json_line

    return load_json_line(rec)


def input_bytes(inputs: Sequence[InputFile]) -> int:
    """Bytes on disk of every input (what progress counts against)."""
    return sum(os.path.getsize(f.path) for f in inputs)
