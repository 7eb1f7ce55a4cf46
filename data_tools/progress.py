"""Progress of a data tool on stderr: a tqdm bar on a terminal; off one (a SLURM log, a pipe) one
plain line every `--log-interval` seconds, so a batch job's log shows that it is alive and when
it will finish:

    preprocess: 12034 docs, 512.0/2048.0 MB (25%), 85.3 MB/s, ETA 0:00:18

MB are input bytes on disk (compressed for .gz/.zst and parquet), so MB/s and the ETA are the
reading rate and the time left to read the rest.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta


class Progress:
    """`update(path, pos, docs)` after each chunk: pos = bytes of `path` consumed so far, docs =
    documents done in all. Nothing at all when `quiet`."""

    def __init__(self, name: str, total_bytes: int, quiet: bool = False, interval: float = 1.0, unit: str = "docs"):
        self.name, self.total, self.interval, self.unit = name, total_bytes, interval, unit
        self.t0 = self.last = time.perf_counter()
        self.done: dict[str, int] = {}
        self.bytes = 0
        self.bar = None
        self.plain = not quiet and not sys.stderr.isatty()
        if not quiet and not self.plain:
            from tqdm import tqdm

            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, file=sys.stderr,
                            mininterval=interval, desc=name)

    def update(self, path: str, pos: int, docs: int) -> None:
        before = self.bytes
        prev = self.done.get(path, 0)
        self.bytes += pos - (prev if pos >= prev else 0)  # pos went back: the same file given again
        self.done[path] = pos
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(self.bytes - before)
            self.bar.set_postfix_str(f"{docs / max(now - self.t0, 1e-9):.0f} {self.unit}/s", refresh=False)
        elif self.plain and now - self.last >= self.interval:
            self.last = now
            print(self.line(docs, now - self.t0), file=sys.stderr, flush=True)

    def line(self, docs: int, elapsed: float) -> str:
        mb, rate = self.bytes / 1e6, self.bytes / 1e6 / max(elapsed, 1e-9)
        out = f"{self.name}: {docs} {self.unit}, {mb:.1f}"
        if self.total > 0:
            out += f"/{self.total / 1e6:.1f} MB ({100 * min(self.bytes, self.total) / self.total:.0f}%), {rate:.1f} MB/s"
            if 0 < self.bytes < self.total:
                out += f", ETA {timedelta(seconds=round((self.total - self.bytes) / (self.bytes / max(elapsed, 1e-9))))}"
        else:
            out += f" MB, {rate:.1f} MB/s"
        return out

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
