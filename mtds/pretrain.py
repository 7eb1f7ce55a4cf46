"""Pretrain a model of any kind in mtds/kinds.py (GPT, BERT): megatron-core model, DeepSpeed engine,
Megatron .bin/.idx data.

    deepspeed mtds/pretrain.py --deepspeed_config ds_configs/zero2.json \
        [--config RUN.toml] [--load RUN_DIR] [--model-type gpt|bert] [--section.key=value ...]

With no data given it trains on the embedded default corpus (the Python standard library), built on first use.
Every config problem is one line before DeepSpeed starts. The wiring lives in mtds/train/ (plan.py, run.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings

if __package__ in (None, ""):  # run as a script by the deepspeed launcher: make `mtds` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_tools.errors import DataToolsError
from data_tools.spm import TokenizerError
from mtds.config import RunConfig, build_config, load_file, parse_overrides
from mtds.errors import ConfigError, LoadError, TrainingStopped, print_error
from mtds.kinds import KINDS
from mtds.train.run_lock import release_run_dir_locks


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, RunConfig]:
    p = argparse.ArgumentParser(
        prog="mtds/pretrain.py", description=__doc__.split("\n\n")[0],
        epilog="Any run-config key can be overridden as --section.key=value, e.g. --training.train_iters=100 "
               "--model.preset=gpt-125m --data.paths='data/a_text_document data/b_text_document'.")
    p.add_argument("--deepspeed_config", "--deepspeed-config", help="DeepSpeed JSON (ds_configs/*.json)")
    p.add_argument("--config", help="run config (.toml or .json); see mtds/configs/")
    p.add_argument("--load", help="resume from the latest complete checkpoint of this run dir")
    p.add_argument("--run-dir", help="shortcut for --training.run_dir")
    p.add_argument("--model-type", choices=tuple(KINDS), help="shortcut for --model.model_type (mtds/kinds.py)")
    p.add_argument("--exit-duration-mins", type=float, help="save and exit after this many minutes")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    overrides = parse_overrides(rest)
    shortcuts = {("training", "load"): args.load, ("training", "run_dir"): args.run_dir,
                 ("model", "model_type"): args.model_type, ("training", "exit_duration_mins"): args.exit_duration_mins}
    for (section, key), value in shortcuts.items():
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return args, build_config(load_file(args.config) if args.config else {}, overrides)


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
    rank = int(os.environ.get("RANK", "0"))
    log, planned = print if rank == 0 else (lambda *a, **k: None), False
    try:
        args, cfg = parse_args(sys.argv[1:] if argv is None else argv)
        from mtds.train.plan import plan_run
        from mtds.train.run import train

        plan, planned = plan_run(cfg, args.deepspeed_config, log), True
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
