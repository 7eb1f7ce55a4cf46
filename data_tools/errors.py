"""The one exception type data_tools raise for user errors, and the CLI wrapper that prints it."""

from __future__ import annotations

import sys
from typing import Callable, Sequence


class DataToolsError(Exception):
    """A user-facing problem (bad path, bad file, bad flag): printed as one line, exit code 2."""


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)`; turn DataToolsError / Ctrl-C into a one-line message instead of a traceback."""
    try:
        return main(argv)
    except DataToolsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
