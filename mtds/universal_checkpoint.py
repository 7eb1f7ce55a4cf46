"""Make a checkpoint resumable at another data-parallel world size (DeepSpeed universal checkpoint).

    python -m mtds.universal_checkpoint --load RUN_DIR [--tag iter_0000040]

Adds `<checkpoint>/zero/` in place (mtds/ckpt/universal.py says how and why); mtds/pretrain.py
then resumes the run at any world size.
"""

from __future__ import annotations

import argparse
import sys

from mtds.tool_cli import run_tool


def main(argv: list[str] | None = None) -> int:
    from mtds.ckpt.universal import convert
    from mtds.load_trained import find_checkpoint

    p = argparse.ArgumentParser(prog="python -m mtds.universal_checkpoint", description=__doc__.split("\n\n")[0])
    p.add_argument("--load", required=True, metavar="RUN_DIR", help="run directory a training run wrote")
    p.add_argument("--tag", help="checkpoint tag, e.g. iter_0000040 (default: latest)")
    a = p.parse_args(argv)
    convert(find_checkpoint(a.load, a.tag))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
