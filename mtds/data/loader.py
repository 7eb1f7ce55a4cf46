"""Feeding the trainer: a batch sampler that shards by data-parallel rank and resumes at a
consumed-sample count, the DataLoader around it, the fixed evaluation batches, and samples of the
training order that a resume compares (`order_probes`).

megatron-core ships the datasets but not the sampler (that lives in Megatron-LM's training
scripts), so `ResumableBatchSampler` is ours.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal

import numpy as np
import torch

from mtds.train.run_lock import release_run_dir_locks


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


def _init_worker(worker_id: int) -> None:
    # SLURM and DeepSpeed's launcher send SIGTERM to every process, loader workers included, and
    # Ctrl-C sends SIGINT to the terminal's whole process group. A worker dying of either makes the
    # DataLoader raise in the training process mid-save; the training process decides when to stop
    # (mtds.train.trainer) and its workers end with it (loader_batches).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A forked worker inherits rank 0's open run-dir lock file, and flock holds while any copy is
    # open: a worker still exiting after its run was killed kept the next run out of the directory
    # ("in use by another run"). Closing the worker's copies leaves the training process's lock held.
    release_run_dir_locks()


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
        worker_init_fn=_init_worker,
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


# The ids that identify a sample's text, by the key each task's dataset gives them: GPT and SFT
# "tokens", T5 "text_enc", BERT and classification "text". Masks and labels are left out: a
# task option may change them (causal_lm's eod_mask_loss) without moving the order.
_TEXT_KEYS = ("tokens", "text_enc", "text")


def probe_positions(n: int) -> list[int]:
    """Sample positions under n to fingerprint: 0 and about two per doubling (1, 2, 4, 5, 8, 11,
    16, ...): ~60 for a billion samples, the same positions whatever n is, so runs built for
    different sample counts can be compared where both have samples."""
    out, k = {0}, 0
    while int(2 ** (k / 2)) < n:
        out.add(int(2 ** (k / 2)))
        k += 1
    return sorted(p for p in out if p < n)


def order_probes(dataset, num_samples: int) -> dict:
    """`train_order` of the saved-run record: a hash of the text of the training set's sample at
    each probe position. A resume that changes the set's sample count (mtds.ckpt.resume.order_changes)
    compares them: the order is kept where every common position holds the same sample."""
    n = min(num_samples, len(dataset))
    return {"samples": num_samples, "probes": {str(p): _text_hash(dataset[p]) for p in probe_positions(n)}}


def _text_hash(sample: dict) -> str:
    key = next((k for k in _TEXT_KEYS if k in sample), None)
    values = [sample[key]] if key else [sample[k] for k in sorted(sample)]  # a dataset of another kind: all of it
    h = hashlib.blake2b(digest_size=8)
    for v in values:
        h.update(np.ascontiguousarray(np.asarray(v), dtype=np.int64).tobytes())
    return h.hexdigest()
