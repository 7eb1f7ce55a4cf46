"""Errors that end a run or a tool with one line (no torch import, so the entry points can catch
them before the heavy imports). Each message names the file or key and the fix."""


class ConfigError(ValueError):
    """A run-config or DeepSpeed-config problem found before any expensive work."""


class LoadError(ValueError):
    """A run dir / checkpoint / input problem of the tools that use a trained model."""


class TrainingStopped(RuntimeError):
    """The run cannot go on (non-finite loss, endless skipped steps); the message says why."""


def print_error(error: Exception, rank: int, planned: bool) -> None:
    """Print the one line (stderr) of a ConfigError/LoadError/TrainingStopped where it is this rank's to say.
    The plan's checks read the same arguments and files on every rank, and a TrainingStopped is
    agreed by all-reduce: rank 0 speaks for all. Past the plan a rank may fail alone (its data shard,
    its checkpoint file): any other rank names itself then."""
    import sys

    if rank == 0:
        print(f"error: {error}", file=sys.stderr)
    elif planned and not isinstance(error, TrainingStopped):
        print(f"error: rank {rank}: {error}", file=sys.stderr)
