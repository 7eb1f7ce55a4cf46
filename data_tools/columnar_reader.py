"""Read parquet and Arrow IPC files (`datasets` save_to_disk shards) as chunks of text cells.

The columnar counterpart of jsonl_reader: the main process streams record batches with pyarrow
(parquet page by page, one row group after another, never a whole file or row group at once;
Arrow files memory-mapped) and cuts them into chunks of ~1 MB of text, and a worker turns each
chunk's cells into documents or skips with `parse_columns`, as `parse_lines` does for lines.
Reading in the main process and passing column arrays was faster than reading in the workers
(bench/RESULTS.md, "Preprocess from parquet"), and it keeps memory bounded for row groups of any size.

Rows are numbered from 0, as pandas and `datasets` index them (jsonl lines count from 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_tools.errors import DataToolsError
from data_tools.jsonl_reader import Parsed, Skip

_ARROW_FILE_MAGIC = b"ARROW1"  # the IPC *file* format; datasets writes the *stream* format (no magic)
_READ_BUFFER = 1 << 20  # parquet: read column chunks through a 1 MB buffer, not whole into memory


@dataclass
class ColumnChunk:
    """A run of consecutive rows of one parquet/Arrow file: one array per json key."""

    path: str
    first_row: int  # 0-based row number of the chunk's first row
    columns: list[pa.Array]
    input_pos: int  # bytes of the file consumed so far (for progress / ETA)


def _holds_text(t: pa.DataType) -> bool:
    """Types whose cells can be text: strings, bytes (decoded as UTF-8), unions and all-null columns."""
    if pa.types.is_dictionary(t):
        return _holds_text(t.value_type)
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
            or pa.types.is_union(t) or pa.types.is_null(t))


def _open_arrow(path: str):
    """(memory map, iterator of (record batch, file bytes consumed), schema) for an Arrow IPC
    file in either layout: the stream one datasets writes, or the random-access file one."""
    source = pa.memory_map(path)
    magic = source.read(len(_ARROW_FILE_MAGIC))
    source.seek(0)
    if magic == _ARROW_FILE_MAGIC:
        f = pa.ipc.open_file(source)
        n, size = f.num_record_batches, source.size()
        return source, ((f.get_batch(i), size * (i + 1) // n) for i in range(n)), f.schema
    stream = pa.ipc.open_stream(source)
    return source, ((b, source.tell()) for b in stream), stream.schema


def read_schema(path: str, fmt: str) -> pa.Schema:
    """The file's schema (parquet: from the footer), or a one-line DataToolsError if unreadable."""
    try:
        if fmt == "parquet":
            return pq.read_schema(path)
        source, _, schema = _open_arrow(path)
        source.close()
        return schema
    except (pa.ArrowException, OSError) as e:
        raise DataToolsError(f"{path}: not a readable {fmt} file ({_reason(e)})") from None


def check_columns(path: str, fmt: str, json_keys: Sequence[str]) -> None:
    """One line naming the file, the column and the columns it has, if a key is not a text column."""
    schema = read_schema(path, fmt)
    for key in json_keys:
        if key not in schema.names:
            raise DataToolsError(f"{path}: no column {key!r} (--json-keys); its columns: {', '.join(schema.names)}")
        t = schema.field(key).type
        # Every cell of such a column would be skipped: say so now instead of after reading it all.
        if not _holds_text(t):
            raise DataToolsError(f"{path}: column {key!r} is {t}, not text (string or binary); "
                                 f"its columns: {', '.join(f'{f.name} ({f.type})' for f in schema)}")


def iter_column_chunks(path: str, fmt: str, json_keys: Sequence[str], max_bytes: int = 1 << 20,
                       max_rows: int = 4096) -> Iterator[ColumnChunk]:
    """Stream the `json_keys` columns of one file as chunks of at most ~max_bytes / max_rows rows."""
    batches = _parquet_batches(path, json_keys, max_bytes, max_rows) if fmt == "parquet" else _arrow_batches(path)
    row = 0
    for batch, pos in batches:
        cols = [batch.column(k) for k in json_keys]
        for start, stop in _cuts(cols, batch.num_rows, max_bytes, max_rows):
            # concat_arrays copies the slice into its own buffers: a pickled slice would carry
            # the whole batch's buffers to the worker.
            yield ColumnChunk(path, row + start, [pa.concat_arrays([c.slice(start, stop - start)]) for c in cols], pos)
        row += batch.num_rows


def _parquet_batches(path: str, json_keys: Sequence[str], max_bytes: int, max_rows: int):
    """(record batch, file bytes consumed) over every row group in order, streamed page by page."""
    pf = pq.ParquetFile(path, buffer_size=_READ_BUFFER)
    md = pf.metadata
    # Batches of ~4 chunks' worth of rows, from the columns' average uncompressed size.
    batch_rows = max(1, min(4 * max_rows, 4 * max_bytes * md.num_rows // max(1, _uncompressed_bytes(pf, json_keys))))
    file_size = os.path.getsize(path)
    row = 0  # progress = that share of the file's bytes
    for rg in range(md.num_row_groups):
        first, n = row, md.row_group(rg).num_rows
        try:
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=list(json_keys),
                                         use_threads=False):
                row += batch.num_rows
                yield batch, file_size * row // max(1, md.num_rows)
        except (pa.ArrowException, OSError) as e:
            raise DataToolsError(f"{path}: row group {rg} (rows {first}-{first + n - 1}) cannot be read, "
                                 f"the file is damaged ({_reason(e)})") from None


def _arrow_batches(path: str):
    """(record batch, file bytes consumed) over an Arrow IPC file, memory-mapped."""
    source, batches, _ = _open_arrow(path)
    row = 0
    with source:
        try:
            for batch, pos in batches:
                yield batch, pos
                row += batch.num_rows
        except (pa.ArrowException, OSError) as e:
            raise DataToolsError(f"{path}: cannot be read after row {row}, the file is damaged ({_reason(e)})") from None


def _uncompressed_bytes(pf: pq.ParquetFile, json_keys: Sequence[str]) -> int:
    md = pf.metadata
    want = set(json_keys)
    return sum(rg.column(c).total_uncompressed_size
               for rg in (md.row_group(i) for i in range(md.num_row_groups))
               for c in range(rg.num_columns) if rg.column(c).path_in_schema in want)


def _cuts(cols: list[pa.Array], n: int, max_bytes: int, max_rows: int) -> Iterator[tuple[int, int]]:
    """[start, stop) row ranges of at most max_rows whose text reaches ~max_bytes (the row that
    crosses it included, as jsonl_reader cuts lines)."""
    sizes = np.zeros(n, np.int64)
    for c in cols:
        offsets = getattr(c, "offsets", None)  # string / binary arrays: exact bytes per row
        if offsets is not None and not pa.types.is_union(c.type):
            sizes += np.diff(np.asarray(offsets, dtype=np.int64))
        else:
            sizes += max(1, c.nbytes // max(1, n))
    csum = np.cumsum(sizes)
    start = 0
    while start < n:
        base = csum[start - 1] if start else 0
        stop = min(int(np.searchsorted(csum, base + max_bytes, side="left")) + 1, start + max_rows, n)
        yield start, stop
        start = stop


def parse_columns(chunk: ColumnChunk, json_keys: Sequence[str]) -> Parsed:
    """Classify each row of `chunk`; documents keep every key's text, in `json_keys` order."""
    out = Parsed(texts=[[] for _ in json_keys])
    cells = [_to_python(c) for c in chunk.columns]
    for i, values in enumerate(zip(*cells)):
        row = chunk.first_row + i
        texts, skip = [], None
        for key, v in zip(json_keys, values):
            if isinstance(v, bytes):  # a binary column: text if it is UTF-8
                try:
                    v = v.decode("utf-8")
                except UnicodeDecodeError:
                    skip = Skip(chunk.path, row, "non_utf8", f"({key!r})")
                    break
            if not isinstance(v, str):
                what = "null" if v is None else type(v).__name__
                skip = Skip(chunk.path, row, "non_string", f"({key!r} is {what})")
                break
            if not v.strip():
                skip = Skip(chunk.path, row, "empty", f"({key!r})")
                break
            texts.append(v)
        if skip is not None:
            out.skips.append(skip)
            continue
        for k, v in enumerate(texts):
            out.texts[k].append(v)
        out.lines.append(row)
    return out


def _to_python(arr: pa.Array) -> list:
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr.to_pylist()


def _reason(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
