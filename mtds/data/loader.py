"""Feeding the trainer: a batch sampler that shards by data-parallel rank and resumes at a
consumed-sample count, the DataLoader around it, and the fixed evaluation batches.

megatron-core ships the datasets but not the sampler (that lives in Megatron-LM's training
scripts), so `ResumableBatchSampler` is ours.
"""

from __future__ import annotations

import contextlib
import signal

import torch


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
    # (mtds.train.trainer) and its workers end with it (loader_batches).
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
