"""Pretrain a model of any kind in mtds/kinds.py (GPT, BERT): megatron-core model, DeepSpeed engine,
Megatron .bin/.idx data.

    deepspeed mtds/pretrain.py --deepspeed_config ds_configs/zero2.json \
        [--config RUN.toml] [--load RUN_DIR] [--model-type gpt|bert] [--section.key=value ...]

With no data given it trains on the embedded default corpus (the Python standard library), built on first use.
Every config problem is one line before DeepSpeed starts. The wiring lives in mtds/train/ (plan.py, run.py).
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

if __package__ in (None, ""):  # run as a script by the deepspeed launcher: make `mtds` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_tools.errors import DataToolsError
from data_tools.spm import TokenizerError
from mtds.config_cli import config_toml, parse_args
from mtds.errors import ConfigError, LoadError, TrainingStopped, print_error
from mtds.train.run_lock import release_run_dir_locks


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
    rank = int(os.environ.get("RANK", "0"))
    log, planned = print if rank == 0 else (lambda *a, **k: None), False
    try:
        args, cfg = parse_args(sys.argv[1:] if argv is None else argv, __doc__.split("\n\n")[0])
        if args.print_config:  # the resolved config as TOML (for --config), nothing started
            print(config_toml(cfg), end="")
            return 0
        from mtds.train.plan import plan_run
        from mtds.train.run import train

        plan, planned = plan_run(cfg, args.deepspeed_config, log, args.ds_overrides), True
        return train(plan, log)
    except (ConfigError, LoadError, TokenizerError, DataToolsError, TrainingStopped) as e:  # one line, no traceback
        print_error(e, rank, planned)  # rank 0's line, or another rank's past the plan
        return 3 if isinstance(e, TrainingStopped) else 2
    except KeyboardInterrupt:  # Ctrl-C before training started, or a second one during it
        if rank == 0:
            print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # unforeseen: the traceback, then one line naming the rank (the launcher stops the rest)
        traceback.print_exc()
        from mtds.parallel.process_groups import failure_line  # imports torch: only this path needs it here
        print(failure_line(e), file=sys.stderr)
        return 1
    finally:
        release_run_dir_locks()


if __name__ == "__main__":
    sys.exit(main())
