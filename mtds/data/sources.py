"""Where the training data is: the user's `.bin`/`.idx` prefixes (checked before DeepSpeed starts)
or the embedded default corpus (built once, on rank 0), and what the data is (content identity,
recorded with every checkpoint)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass

from mtds.data.splits import check_splits
from mtds.errors import ConfigError
from mtds.parallel.process_groups import barrier, is_rank0


@dataclass
class DataSources:
    prefixes: list[str]
    weights: list[float] | None
    tokenizer_model: str
    valid_prefixes: list[str] | None = None
    """A separate validation set (data.valid_paths); None: validation is a split of `prefixes`."""
    tokenizer_type: str = "auto"
    """data.tokenizer_type; mtds.data.tokenizer.load_tokenizer resolves "auto" by the path."""

    @property
    def all_prefixes(self) -> list[str]:
        return self.prefixes + (self.valid_prefixes or [])

    def identity(self) -> dict[str, dict]:
        """What the data is, per prefix (see data_identity): recorded with every checkpoint."""
        return {p: data_identity(p) for p in self.all_prefixes}

    def identity_key(self) -> str:
        """A short hash of the identities: the index cache lives under it, so data rebuilt at the
        same path never reuses the indices of the old (megatron-core keys its cache by path,
        split, seed and sample count only)."""
        text = json.dumps(sorted((v["bin_bytes"], v["idx_bytes"], v["idx_blake2b"]) for v in self.identity().values()))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def data_identity(prefix: str) -> dict:
    """Sizes of a prefix's .bin/.idx and a BLAKE2b hash of its .idx (document and sequence tables:
    any rebuild with other content changes them), plus the .bin's mtime for people to read, and the
    cleaning manifests (path and hash) its inputs came with (`{prefix}.provenance.json`), if any.
    Hashing reads the whole .idx (~10 bytes per sequence) once per process and file version."""
    idx = os.stat(prefix + ".idx")
    return _identity(prefix, idx.st_size, idx.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _identity(prefix: str, idx_bytes: int, idx_mtime_ns: int) -> dict:
    h = hashlib.blake2b(digest_size=16)
    with open(prefix + ".idx", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    out = {"bin_bytes": os.path.getsize(prefix + ".bin"), "idx_bytes": idx_bytes,
           "idx_blake2b": h.hexdigest(), "bin_mtime": int(os.path.getmtime(prefix + ".bin"))}
    try:  # data_tools.preprocess wrote this beside the .idx when its input came from data_tools.clean
        with open(prefix + ".provenance.json") as f:
            out["cleaning_manifests"] = json.load(f)["cleaning_manifests"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return out


def check_prefix(prefix: str, key: str) -> None:
    """A dataset prefix must have both files; catch it before DeepSpeed and index building."""
    missing = [ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]
    if missing:
        hint = " (give the prefix without .bin/.idx)" if prefix.endswith((".bin", ".idx")) else ""
        raise ConfigError(
            f"{key}: dataset prefix {prefix!r} has no {' or '.join(prefix + e for e in missing)}{hint}; "
            "build it with `python -m data_tools.preprocess`"
        )
    from data_tools.inspect_data import verify_pair

    verify_pair(prefix)  # a truncated or mismatched pair is one line here, not a crash in a worker


def resolve_sources(cfg, layout: str) -> DataSources:
    """The user's prefixes, or the embedded default corpus (built once, on rank 0) in `layout`, the
    task's DATA_LAYOUT (mtds/kinds.py: Task.data_layout)."""
    d = cfg.data
    if d.paths:
        for p in d.paths:
            check_prefix(p, "data.paths")
        for p in d.valid_paths:
            check_prefix(p, "data.valid_paths")
        if not d.valid_paths:  # with a separate validation set, data.split is not used
            check_splits(d.paths, d.split)
        return DataSources(list(d.paths), d.weights, d.tokenizer_model, list(d.valid_paths) or None, d.tokenizer_type)
    from data_tools.default_dataset import build_default_dataset

    from data_tools.spm import DEFAULT_SENTINEL_TOKENS

    layout_args = dict(split_sentences=layout in ("sentence", "span"),
                       sentinel_tokens=DEFAULT_SENTINEL_TOKENS if layout == "span" else 0)
    if is_rank0():
        build_default_dataset(d.default_dir, **layout_args)
    barrier()  # the other ranks wait for rank 0's files, then only look them up
    paths = build_default_dataset(d.default_dir, quiet=True, **layout_args)
    check_prefix(paths["prefix"], "data.default_dir")
    check_splits([paths["prefix"]], d.split)
    return DataSources([paths["prefix"]], None, paths["tokenizer_model"])


def check_token_ids(sources: DataSources, vocab_size: int) -> None:
    """A sample of each .bin's ids must fit the tokenizer (data built with another tokenizer);
    `python -m data_tools.inspect_data PREFIX --verify --tokenizer-model M` checks every id.
    The pairs were verified by check_prefix already."""
    from data_tools.inspect_data import check_token_ids as check

    for prefix in sources.all_prefixes:
        check(prefix, vocab_size, sources.tokenizer_model, sample_tokens=1 << 22)
