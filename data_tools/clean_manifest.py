"""The cleaning manifest: what data_tools.clean read, did and wrote, as JSON beside its output.

    OUTPUT.manifest.json  {"tool", "config", "inputs": [{path, bytes, xxh3_128}], "output": {...},
                           "documents": {in, kept, removed}, "bytes": {in, kept, removed},
                           "rules": {RULE: {documents, bytes, sample: [{where, text}]}}, "skipped", ...}

Bytes are UTF-8 bytes of the text field: as read for "in" and for each rule's removals, as written
(normalized) for "kept". `sample` is a seeded sample of the rule's removed documents (the same
inputs and seed give the same sample, however the run was split into shards), each cut to
`sample_chars`. Content hashes are xxh3-128
of the files' bytes. `preprocess` finds the manifest of an input it reads (`manifest_of`) and
records the manifest's own hash beside the `.idx` it writes.
"""

from __future__ import annotations

import heapq
import json
import os
from dataclasses import dataclass, field
from typing import Callable

import xxhash

from data_tools.errors import DataToolsError

SUFFIX = ".manifest.json"
TOOL = "data_tools.clean"
FIRST_SKIPS_KEPT = 5


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
    """Documents and bytes one rule removed, and a seeded sample of k of them: the k whose seeded
    hash of FILE:LINE is smallest. Unlike a reservoir sample this does not depend on the order or
    the split of the stream, so the tallies of shards merge into what one pass draws."""

    k: int
    seed: str
    documents: int = 0
    bytes: int = 0
    # a max-heap on the hash: (-hash, order, where, text); order = (shard, n-th removal) sorts the output
    sample: list[tuple[int, tuple[int, int], str, str]] = field(default_factory=list)

    def add(self, where: str, text: str | Callable[[], str], nbytes: int, chars: int, shard: int = 0) -> None:
        """`text` may be a function giving it, called only when the document enters the sample."""
        self.documents += 1
        self.bytes += nbytes
        if not self.k:
            return
        h = xxhash.xxh3_64_intdigest(f"{self.seed}:{where}".encode("utf-8", "surrogatepass"))
        if len(self.sample) < self.k or h < -self.sample[0][0]:
            entry = (-h, (shard, self.documents), where, (text if isinstance(text, str) else text())[:chars])
            (heapq.heappush if len(self.sample) < self.k else heapq.heapreplace)(self.sample, entry)

    def merge(self, other: dict) -> None:
        """Add a shard's `state()` (shards merged in input order)."""
        self.documents += other["documents"]
        self.bytes += other["bytes"]
        for h, order, where, text in other["sample"]:
            entry = (h, tuple(order), where, text)
            if len(self.sample) < self.k:
                heapq.heappush(self.sample, entry)
            elif h > self.sample[0][0]:
                heapq.heapreplace(self.sample, entry)

    def state(self) -> dict:
        return {"documents": self.documents, "bytes": self.bytes, "sample": [list(e) for e in self.sample]}

    def as_dict(self) -> dict:
        return {"documents": self.documents, "bytes": self.bytes,
                "sample": [{"where": w, "text": t} for _, _, w, t in sorted(self.sample, key=lambda e: e[1])]}


class Tallies:
    """Per-rule tallies, in the order the rules are checked; `shard` orders merged samples."""

    def __init__(self, rules: list[str], k: int, chars: int, seed: int, shard: int = 0):
        self.chars, self.shard = chars, shard
        self.rules = {r: RuleTally(k, f"{seed}:{r}") for r in rules}

    def add(self, rule: str, where: str, text: str | Callable[[], str], nbytes: int) -> None:
        self.rules[rule].add(where, text, nbytes, self.chars, self.shard)

    def merge(self, state: dict) -> None:
        for r, st in state.items():
            self.rules[r].merge(st)

    def state(self) -> dict:
        return {r: t.state() for r, t in self.rules.items()}

    def as_dict(self) -> dict:
        return {r: t.as_dict() for r, t in self.rules.items()}


class Counts:
    """What a pass (or one shard) tallies: documents and bytes in/kept/removed, per rule with a seeded
    sample, normalized documents, skipped lines with their first places; `state()` and `merge()`
    carry a shard's counts to the merge (data_tools.clean_shards)."""

    def __init__(self, rules: list[str], cfg, shard: int = 0):
        self.tallies = Tallies(rules, cfg.samples_per_rule, cfg.sample_chars, cfg.seed, shard)
        self.reported = Tallies(["contaminated"], cfg.samples_per_rule, cfg.sample_chars, cfg.seed, shard)
        self.docs = {"in": 0, "kept": 0, "removed": 0}
        self.nbytes = {"in": 0, "kept": 0, "removed": 0}
        self.changed = self.c4_lines_removed = 0
        self.skipped: dict[str, int] = {}
        self.first_skipped: dict[str, list[str]] = {}

    def take(self, d) -> bool:
        """Count `d` (data_tools.clean's per-document result); True when no filter removed it: a dedup
        candidate, counted when its dedup is decided."""
        if d.skip is not None:
            self.skipped[d.skip] = self.skipped.get(d.skip, 0) + 1
            first = self.first_skipped.setdefault(d.skip, [])
            if len(first) < FIRST_SKIPS_KEPT:
                first.append(d.where)
            return False
        self.docs["in"] += 1
        self.nbytes["in"] += d.size
        self.changed += d.changed
        self.c4_lines_removed += d.c4_lines_removed
        if d.contaminated:
            self.reported.add("contaminated", d.where, d.text, d.size)
        if d.rule is not None:
            self.remove(d.rule, d.where, d.original, d.size)
            return False
        return True

    def remove(self, rule: str, where: str, text, size: int) -> None:
        self.tallies.add(rule, where, text, size)
        self.docs["removed"] += 1
        self.nbytes["removed"] += size

    def keep(self, nbytes: int) -> None:
        self.docs["kept"] += 1
        self.nbytes["kept"] += nbytes

    def state(self) -> dict:
        return {"documents": self.docs, "bytes": self.nbytes, "changed": self.changed,
                "c4_lines_removed": self.c4_lines_removed, "skipped": self.skipped,
                "first_skipped": self.first_skipped, "rules": self.tallies.state(),
                "reported": self.reported.state()}

    def merge(self, st: dict) -> None:
        for k in self.docs:
            self.docs[k] += st["documents"][k]
            self.nbytes[k] += st["bytes"][k]
        self.changed += st["changed"]
        self.c4_lines_removed += st["c4_lines_removed"]
        for reason, n in st["skipped"].items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
        for reason, where in st["first_skipped"].items():
            first = self.first_skipped.setdefault(reason, [])
            first += where[:FIRST_SKIPS_KEPT - len(first)]
        self.tallies.merge(st["rules"])
        self.reported.merge(st["reported"])

    def check_not_empty(self, first_input: str) -> None:
        if self.docs["in"] == 0:
            raise DataToolsError(f"{first_input}: no documents in the input (skipped lines: "
                                 f"{self.skipped or 'nothing to read'})")


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
