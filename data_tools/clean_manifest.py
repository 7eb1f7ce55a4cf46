"""The cleaning manifest: what data_tools.clean read, did and wrote, as JSON beside its output.

    OUTPUT.manifest.json  {"tool", "config", "inputs": [{path, bytes, xxh3_128}], "output": {...},
                           "documents": {in, kept, removed}, "bytes": {in, kept, removed},
                           "rules": {RULE: {documents, bytes, sample: [{where, text}]}}, "skipped", ...}

Bytes are UTF-8 bytes of the text field: as read for "in" and for each rule's removals, as written
(normalized) for "kept". `sample` is a seeded reservoir sample of the rule's removed documents (the
same inputs and seed give the same sample), each cut to `sample_chars`. Content hashes are xxh3-128
of the files' bytes. `preprocess` finds the manifest of an input it reads (`manifest_of`) and
records the manifest's own hash beside the `.idx` it writes.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field

import xxhash

from data_tools.errors import DataToolsError

SUFFIX = ".manifest.json"
TOOL = "data_tools.clean"


def manifest_path(output: str) -> str:
    return output + SUFFIX


def file_hash(path: str) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


@dataclass
class RuleTally:
    """Documents and bytes one rule removed, and a seeded reservoir sample of them."""

    k: int
    rng: random.Random
    documents: int = 0
    bytes: int = 0
    sample: list[tuple[int, str, str]] = field(default_factory=list)  # (order seen, where, text)

    def add(self, where: str, text: str, nbytes: int, chars: int) -> None:
        self.documents += 1
        self.bytes += nbytes
        if len(self.sample) < self.k:
            self.sample.append((self.documents, where, text[:chars]))
        elif self.k and (j := self.rng.randrange(self.documents)) < self.k:
            self.sample[j] = (self.documents, where, text[:chars])

    def as_dict(self) -> dict:
        return {"documents": self.documents, "bytes": self.bytes,
                "sample": [{"where": w, "text": t} for _, w, t in sorted(self.sample)]}


class Tallies:
    """Per-rule tallies, in the order the rules are checked."""

    def __init__(self, rules: list[str], k: int, chars: int, seed: int):
        self.chars = chars
        self.rules = {r: RuleTally(k, random.Random(f"{seed}:{r}")) for r in rules}

    def add(self, rule: str, where: str, text: str, nbytes: int) -> None:
        self.rules[rule].add(where, text, nbytes, self.chars)

    def as_dict(self) -> dict:
        return {r: t.as_dict() for r, t in self.rules.items()}


def manifest_of(path: str) -> dict | None:
    """{"path", "xxh3_128"} of the cleaning manifest beside the input `path`, or None when there is
    none; a one-line DataToolsError when the manifest describes other content than `path` holds."""
    mpath = manifest_path(path)
    if not os.path.isfile(mpath):
        return None
    try:
        with open(mpath, "rb") as f:
            raw = f.read()
        doc = json.loads(raw)
        expected = doc["output"]["xxh3_128"] if doc.get("tool") == TOOL else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataToolsError(f"{mpath}: not a readable {TOOL} manifest ({e}); remove it or rerun clean") from None
    if expected is None:
        return None  # another tool's file of that name: not ours to judge
    if file_hash(path) != expected:
        raise DataToolsError(f"{path}: changed since {TOOL} wrote it (its content hash differs from {mpath}); "
                             "rerun the cleaning, or remove the manifest if the change is intended")
    return {"path": mpath, "xxh3_128": xxhash.xxh3_128_hexdigest(raw)}


def write_json(path: str, doc: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")
