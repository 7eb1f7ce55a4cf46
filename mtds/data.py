"""Training data shared by every task: finding and checking the `.bin`/`.idx` prefixes (or building
the embedded default corpus), the BlendedMegatronDatasetConfig fields all tasks share, and a data
loader that shards by data-parallel rank and resumes at a consumed-sample count. Each task builds
its own megatron-core dataset from these (mtds/tasks/).

megatron-core ships the datasets but not the sampler (that lives in Megatron-LM's training
scripts), so `ResumableBatchSampler` is ours.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
from dataclasses import dataclass

import torch

from mtds.distributed import barrier, is_rank0
from mtds.errors import ConfigError


@dataclass
class DataSources:
    prefixes: list[str]
    weights: list[float] | None
    tokenizer_model: str
    valid_prefixes: list[str] | None = None
    """A separate validation set (data.valid_paths); None: validation is a split of `prefixes`."""
    tokenizer_type: str = "auto"
    """data.tokenizer_type; mtds.tokenizer.load_tokenizer resolves "auto" by the path."""

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
    any rebuild with other content changes them), plus the .bin's mtime for people to read.
    Hashing reads the whole .idx (~10 bytes per sequence) once per process and file version."""
    idx = os.stat(prefix + ".idx")
    return _identity(prefix, idx.st_size, idx.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _identity(prefix: str, idx_bytes: int, idx_mtime_ns: int) -> dict:
    h = hashlib.blake2b(digest_size=16)
    with open(prefix + ".idx", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return {"bin_bytes": os.path.getsize(prefix + ".bin"), "idx_bytes": idx_bytes,
            "idx_blake2b": h.hexdigest(), "bin_mtime": int(os.path.getmtime(prefix + ".bin"))}


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


def resolve_sources(cfg) -> DataSources:
    """The user's prefixes, or the embedded default corpus (built once, on rank 0)."""
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

    layout = cfg.kind.task.DATA_LAYOUT  # the default corpus in the layout the task reads
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


def split_string(split: str) -> str:
    return split.replace("/", ",")


def check_splits(prefixes: list[str], split: str) -> None:
    """Every split with a nonzero weight must get at least one document of every prefix.

    megatron-core's GPTDataset loops forever computing epochs for a split with no tokens
    (e.g. the test split of "969,30,1" on a corpus of fewer than ~500 documents), so catch it.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import normalize

    weights = normalize([float(w) for w in split_string(split).split(",")])
    for prefix in prefixes:
        n_docs = len(IndexedDataset(prefix).document_indices) - 1
        start = 0.0
        for name, w in zip(("train", "valid", "test"), weights):
            docs = int(round((start + w) * n_docs)) - int(round(start * n_docs))
            start += w
            if w > 0 and docs == 0:
                raise ConfigError(
                    f"data.split={split!r} leaves the {name} split of {prefix} ({n_docs} documents) empty; "
                    f"use a larger corpus or give {name} more weight or 0 (e.g. data.split=90,10,0)"
                )


def shared_dataset_fields(cfg, sources: DataSources, tokenizer) -> dict:
    """The BlendedMegatronDatasetConfig fields that every task's dataset shares."""
    if sources.valid_prefixes:  # all of `prefixes` trains; the validation set is read whole; no test
        data = dict(blend_per_split=[(sources.prefixes, sources.weights), (sources.valid_prefixes, None), None])
    else:
        data = dict(blend=(sources.prefixes, sources.weights), split=split_string(cfg.data.split))
    cache = os.path.join(cfg.data.cache_dir or os.path.join(cfg.training.run_dir, "index_cache"),
                         sources.identity_key()) if cfg.data.index_cache else None
    if cache is not None:
        from mtds.safe_loading import check_index_cache

        check_index_cache(cache)  # megatron-core unpickles these files (allow_pickle=True)
    return dict(random_seed=cfg.data.seed, sequence_length=cfg.seq_length, **data, path_to_cache=cache,
                tokenizer=tokenizer)


class ResumableBatchSampler:
    """Yields this rank's micro-batch index lists, starting after `consumed_samples`.

    Samples are taken in dataset order (the dataset's own shuffle index already randomises
    them); each global batch of micro_batch * dp_size consecutive indices is split into
    dp_size contiguous slices, one per rank. The position depends only on consumed_samples,
    so a resumed run reads exactly the samples the uninterrupted run would have read.
    """

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch: int, dp_rank: int, dp_size: int):
        if consumed_samples > total_samples:
            raise ValueError(f"consumed_samples={consumed_samples} > dataset size {total_samples}")
        self.total = total_samples
        self.consumed = consumed_samples
        self.micro = micro_batch
        self.rank = dp_rank
        self.size = dp_size

    def __len__(self) -> int:
        return (self.total - self.consumed) // (self.micro * self.size)

    def __iter__(self):
        step = self.micro * self.size
        start = self.consumed + self.rank * self.micro
        for base in range(start, self.total - step + 1 + self.rank * self.micro, step):
            yield list(range(base, base + self.micro))


def _ignore_stop_signals(worker_id: int) -> None:
    # SLURM and DeepSpeed's launcher send SIGTERM to every process, loader workers included, and
    # Ctrl-C sends SIGINT to the terminal's whole process group. A worker dying of either makes the
    # DataLoader raise in the training process mid-save; the training process decides when to stop
    # (mtds.trainer) and its workers end with it (loader_batches).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def loader_batches(loader: torch.utils.data.DataLoader):
    """Iterate `loader`; however the block ends (an exception included), stop its worker processes.

    Why: the workers ignore SIGTERM and SIGINT (above), and when the interpreter exits after an
    uncaught exception, the traceback still holds the iterator, so it is not collected; multiprocessing then
    stops the workers with SIGTERM and joins them without a timeout, and the process (and with it
    the whole job) hangs forever. torch's own clean stop, `_shutdown_workers` (what the iterator's
    `__del__` calls), ends them first.
    """
    batches = iter(loader)
    try:
        yield batches
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # absent with num_workers=0
        if shutdown is not None:
            shutdown()


def build_loader(dataset, sampler, num_workers: int, seed: int = 0) -> torch.utils.data.DataLoader:
    # A private generator: otherwise each new DataLoader iterator draws its workers' base seed
    # from the global torch RNG, and a resumed run (which creates its iterator at a different
    # point) would see different dropout masks than the uninterrupted run.
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_ignore_stop_signals,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def fixed_eval_batches(dataset, iters: int, micro_batch: int, dp_rank: int, dp_size: int):
    """The same first `iters` micro-batches of a split on every evaluation (comparable losses)."""
    if dataset is None:
        return None
    n = min(len(dataset), iters * micro_batch * dp_size)
    sampler = ResumableBatchSampler(n, 0, micro_batch, dp_rank, dp_size)
    return build_loader(dataset, sampler, 0)

