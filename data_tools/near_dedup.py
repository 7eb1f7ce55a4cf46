"""Near-duplicate removal with MinHash LSH (data_tools.clean's last step, after exact dedup).

A document's shingles are its word n-grams (`minhash_shingle_words`, 5 by default, as datatrove;
a document shorter than that is one shingle). Its MinHash signature (`rensa.RMinHash`, Rust:
~3.5x datasketch's signatures + LSH per core, bench/bench_clean.py) has b x r values, cut into b bands
of r rows; two documents whose band values agree in any band are near duplicates. A pair with
shingle Jaccard similarity s is flagged with probability 1 - (1 - s^r)^b, which is 1/2 at about
s = (1/b)^(1/r), the effective threshold clean prints before it runs (14 x 8, datatrove's default:
~0.72; at s = 0.85 the chance is 0.99, at s = 0.4 under 1%). Candidates are not verified further.

Clusters keep their first document in input order: every document's bands go into the index,
removed ones too, so a chain A ~ B ~ C removes B and C even when C is not close to A. `NearDedup`
keeps the index in memory: b entries per document (~1 KB for 14 bands in Python sets);
data_tools.disk_dedup takes the same band keys from disk, hash range by hash range, for corpora
whose index would not fit (clean --work-dir), with the same result.
"""

from __future__ import annotations

import numpy as np
import xxhash


def effective_threshold(bands: int, rows: int) -> float:
    """The Jaccard similarity at which a pair is flagged with probability 1/2: ~(1/b)^(1/r)."""
    return (1 / bands) ** (1 / rows)


def shingles(text: str, n: int) -> list[str]:
    words = text.split()
    if len(words) <= n:
        return [" ".join(words)]
    return list({" ".join(words[i:i + n]) for i in range(len(words) - n + 1)})


def signature(text: str, n: int, permutations: int, seed: int) -> bytes:
    """The MinHash signature of `text`'s word n-gram shingles, as bytes (uint32 per permutation)."""
    from rensa import RMinHash

    m = RMinHash(permutations, seed)
    m.update(shingles(text, n))
    return np.asarray(m.digest(), dtype=np.uint32).tobytes()


def band_keys(sig: bytes, bands: int, rows: int) -> list[int]:
    """One 64-bit key per band: xxh3 of the band's r signature values (equal bands, equal keys)."""
    width = 4 * rows  # bytes per band
    return [xxhash.xxh3_64_intdigest(sig[b * width:(b + 1) * width]) for b in range(bands)]


class NearDedup:
    """`is_duplicate(sig)` in input order: True when a band of `sig` matches an earlier document's."""

    def __init__(self, bands: int, rows: int):
        self.bands, self.rows = bands, rows
        self.buckets: list[set[int]] = [set() for _ in range(bands)]

    def is_duplicate(self, sig: bytes) -> bool:
        keys = band_keys(sig, self.bands, self.rows)
        hit = any(k in bucket for k, bucket in zip(keys, self.buckets))
        for k, bucket in zip(keys, self.buckets):
            bucket.add(k)
        return hit
