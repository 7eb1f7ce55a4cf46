"""File helpers shared by the tools: compressed jsonl readers and write-to-temp-then-rename outputs."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import tempfile
from typing import BinaryIO, Iterator, Sequence

from data_tools.errors import DataToolsError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst")


class _CountingReader(io.RawIOBase):
    """Wraps a raw file and counts bytes read, so progress/ETA can use *input* bytes even when
    the stream is decompressed on top of it."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.nbytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.raw.readinto(b)
        self.nbytes += n or 0
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


def check_input_files(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Return the paths as str, or raise a one-line DataToolsError for the first unreadable one."""
    if not paths:
        raise DataToolsError("no input files given (--input)")
    out = []
    for p in paths:
        p = os.fspath(p)
        if not os.path.isfile(p):
            raise DataToolsError(f"{p}: input file not found")
        if not os.access(p, os.R_OK):
            raise DataToolsError(f"{p}: input file is not readable")
        out.append(p)
    return out


@contextlib.contextmanager
def open_binary_lines(path: str) -> Iterator[tuple[BinaryIO, _CountingReader]]:
    """Open a .jsonl / .jsonl.gz / .jsonl.zst file as a binary stream of (decompressed) lines.

    Yields (stream, counter): counter.nbytes is how many bytes of the file on disk were read.
    """
    counter = _CountingReader(open(path, "rb", buffering=0))
    raw = io.BufferedReader(counter, buffer_size=1 << 20)
    try:
        if path.endswith(".gz"):
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif path.endswith(".zst"):
            import zstandard  # only needed for .zst inputs

            stream = io.BufferedReader(
                zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True),
                buffer_size=1 << 20,
            )
        else:
            stream = raw
        yield stream, counter
    finally:
        raw.close()


def check_output_prefix(prefix: str | os.PathLike) -> str:
    """Fail early, with one line, when outputs under `prefix` could not be written."""
    prefix = os.fspath(prefix)
    parent = os.path.dirname(os.path.abspath(prefix))
    if not os.path.isdir(parent):
        raise DataToolsError(f"{prefix}: output directory {parent} does not exist; create it first")
    # Probe with a real file: os.access says yes to root even on read-only directories.
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=parent)
    except OSError as e:
        raise DataToolsError(f"{prefix}: output directory {parent} is not writable ({e.strerror})") from None
    os.close(fd)
    os.remove(probe)
    return prefix


def tmp_name(final_path: str) -> str:
    """The temporary name a file is written under before it is renamed to `final_path`."""
    return f"{final_path}.tmp-{os.getpid()}"


@contextlib.contextmanager
def atomic_outputs(final_paths: Sequence[str]) -> Iterator[list[str]]:
    """Yield temp paths for `final_paths`; on success rename them in the given order (put the
    .idx last: a reader sees no pair until both are complete); on any error remove the temps."""
    tmps = [tmp_name(p) for p in final_paths]
    try:
        yield tmps
    except BaseException:
        for t in tmps:
            with contextlib.suppress(FileNotFoundError):
                os.remove(t)
        raise
    if len(final_paths) > 1:
        # An older .idx must not be left pointing into the new .bin between the two renames.
        with contextlib.suppress(FileNotFoundError):
            os.remove(final_paths[-1])
    for t, p in zip(tmps, final_paths):
        os.replace(t, p)
