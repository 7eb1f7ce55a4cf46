"""Errors that end a run with a one-line message (no torch import, so the entry point can
catch them before the heavy imports)."""


class TrainingStopped(RuntimeError):
    """The run cannot go on (non-finite loss, endless skipped steps); the message says why."""
