"""Error handling shared by the tools that use a trained model: one `error: ...` line, exit 2."""

from __future__ import annotations

import sys
import warnings
from typing import Callable


class LoadError(ValueError):
    """A run dir / checkpoint / input problem; the message is one line naming the path and the fix."""


def run_tool(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call `main(argv)`; known input problems become one stderr line and exit status 2."""
    from mtds.config import ConfigError
    from data_tools.spm import TokenizerError

    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
    try:
        return main(argv)
    except (LoadError, ConfigError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
