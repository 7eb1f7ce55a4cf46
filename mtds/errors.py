"""Errors that end a run or a tool with one line (no torch import, so the entry points can catch
them before the heavy imports). Each message names the file or key and the fix."""


class ConfigError(ValueError):
    """A run-config or DeepSpeed-config problem found before any expensive work."""


class LoadError(ValueError):
    """A run dir / checkpoint / input problem of the tools that use a trained model."""


class TrainingStopped(RuntimeError):
    """The run cannot go on (non-finite loss, endless skipped steps); the message says why."""
