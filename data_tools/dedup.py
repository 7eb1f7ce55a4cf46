"""Exact document dedup: a document whose normalized text equals an earlier one's is a duplicate.

Across all inputs, in input order, so the first occurrence is kept. One 128-bit xxh3 digest per
distinct document is held in memory (16 bytes + a set entry, ~100 bytes: ~1 GB per 10 million
documents); a collision (two different texts, one digest) has probability ~n^2 / 2^129.
"""

from __future__ import annotations

import xxhash


class ExactDedup:
    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def is_duplicate(self, text: str) -> bool:
        """True when `text` was seen before; otherwise remember it and return False."""
        digest = xxhash.xxh3_128_digest(text.encode("utf-8", "surrogatepass"))
        if digest in self.seen:
            return True
        self.seen.add(digest)
        return False
