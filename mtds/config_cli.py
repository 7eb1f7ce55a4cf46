"""The run config as a user meets it on the command line: every key listed with its type, default and
docstring (`mtds/pretrain.py --help`), and the resolved config printed as TOML (`--print-config`),
which `--config` reads back to the same config.

The listing is generated from the dataclasses of mtds/config.py and the kinds' `[task]` options, so
it cannot drift from them: a field's docstring is the string literal under it, which Python keeps
only in the source (read here with `ast`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap

from mtds.config import RunConfig, build_config, load_file, parse_overrides
from mtds.kinds import KINDS


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """{field name: its docstring} of a dataclass (the string literal right under the field)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for field_node, doc_node in zip(body, body[1:]):
        if (isinstance(field_node, ast.AnnAssign) and isinstance(field_node.target, ast.Name)
                and isinstance(doc_node, ast.Expr) and isinstance(doc_node.value, ast.Constant)
                and isinstance(doc_node.value.value, str)):
            docs[field_node.target.id] = " ".join(doc_node.value.value.split())
    return docs


def _describe(section: str, cls) -> list[str]:
    lines = []
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        lines.append(f"  --{section}.{f.name}  ({kind}, default {default!r})")
        if docs.get(f.name):
            lines += textwrap.wrap(docs[f.name], 96, initial_indent="      ", subsequent_indent="      ")
    return lines


def keys_help() -> str:
    """Every run-config key, by section; `[task]` once per task with the kinds that train it."""
    from mtds.config import DataConfig, ModelConfig, TrainingConfig

    out = ["run-config keys (in a --config file as [section] key = value, or as --section.key=value):"]
    for name, cls in (("model", ModelConfig), ("data", DataConfig), ("training", TrainingConfig)):
        out += ["", f"[{name}]", *_describe(name, cls)]
    tasks: dict[str, list[str]] = {}
    for kind_name, kind in KINDS.items():
        tasks.setdefault(kind.task.name, []).append(kind_name)
    for task_name, kind_names in tasks.items():
        options = next(k.task.options for k in KINDS.values() if k.task.name == task_name)
        if dataclasses.fields(options):
            out += ["", f"[task] of {task_name} (model_type {', '.join(kind_names)})", *_describe("task", options)]
    return "\n".join(out)


def config_toml(cfg) -> str:
    """The resolved run config as TOML for `--config`: every key explicit (the preset named too: its
    values are the explicit ones). TOML has no null, so a key that is None is left out and reads
    back as its default, which is None for every key that can be None."""
    import tomli_w

    from mtds.config import resolved_dict

    sections = resolved_dict(cfg)
    return tomli_w.dumps({name: {k: v for k, v in (values or {}).items() if v is not None}
                          for name, values in sections.items()})


def parse_args(argv: list[str], description: str = "") -> tuple[argparse.Namespace, RunConfig]:
    """(the entry point's own flags, the run config) of mtds/pretrain.py's command line; `--help`
    lists every run-config key (keys_help, built only then: it reads the sources)."""
    asks_help = bool({"-h", "--help"} & set(argv))
    p = argparse.ArgumentParser(
        prog="mtds/pretrain.py", description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any run-config key can be overridden as --section.key=value, e.g. --training.train_iters=100 "
               "--model.preset=gpt-125m --data.paths='data/a_text_document data/b_text_document'; any key of "
               "the DeepSpeed JSON as --ds.key.subkey=value, e.g. --ds.optimizer.params.lr=2e-5.\n\n"
               + (keys_help() if asks_help else ""))
    p.add_argument("--deepspeed_config", "--deepspeed-config", help="DeepSpeed JSON (ds_configs/*.json)")
    p.add_argument("--config", help="run config (.toml or .json); see mtds/configs/")
    p.add_argument("--load", help="resume from the latest complete checkpoint of this run dir")
    p.add_argument("--run-dir", help="shortcut for --training.run_dir")
    p.add_argument("--model-type", choices=tuple(KINDS), help="shortcut for --model.model_type (mtds/kinds.py)")
    p.add_argument("--exit-duration-mins", type=float, help="save and exit after this many minutes")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved run config as TOML (a --config file) and exit, starting nothing")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    overrides = parse_overrides(rest)
    args.ds_overrides = overrides.pop("ds", {})  # --ds.optimizer.params.lr=2e-5: the DeepSpeed JSON's keys
    shortcuts = {("training", "load"): args.load, ("training", "run_dir"): args.run_dir,
                 ("model", "model_type"): args.model_type, ("training", "exit_duration_mins"): args.exit_duration_mins}
    for (section, key), value in shortcuts.items():
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return args, build_config(load_file(args.config) if args.config else {}, overrides)
