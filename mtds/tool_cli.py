"""Error handling shared by the tools that use a trained model: one `error: ...` line, exit 2."""

from __future__ import annotations

import sys
import warnings
from typing import Callable

from data_tools.spm import TokenizerError
from mtds.errors import ConfigError, LoadError


def run_tool(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call `main(argv)`; known input problems become one stderr line and exit status 2."""
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
    try:
        return main(argv)
    except (LoadError, ConfigError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
