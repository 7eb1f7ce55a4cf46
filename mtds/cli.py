"""`mtds`, the one command of an installed mtds: `mtds <command> [its flags]`.

    mtds pretrain --deepspeed-config zero2.json --run-dir runs/demo   # one process
    mtds pretrain --nproc 2 --deepspeed-config zero2.json ...          # N ranks under the deepspeed launcher
    mtds preprocess --input corpus.jsonl ...   mtds generate --load RUN --prompt "def "
    mtds configs                        # the shipped DeepSpeed JSONs, run configs and SLURM scripts
    mtds configs --copy DIR             # ... copied to DIR to edit

Each command runs exactly what `python -m <module>` runs (the same module as `__main__`, so the
same flags, errors and exit codes); `mtds <command> --help` is that module's help. The
`python -m ...` and `deepspeed mtds/pretrain.py ...` forms keep working.
"""

from __future__ import annotations

import os
import runpy
import shutil
import sys
from pathlib import Path

from mtds.shipped import FOLDERS, shipped_dir, shipped_files

# command -> (module run as __main__, one line for `mtds --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("mtds.pretrain", "train a model (GPT, BERT, T5, MoE, SFT, classifier) from a run config"),
    "corpus": ("data_tools.corpus", "a jsonl corpus from a tree of source/text files"),
    "clean": ("data_tools.clean", "normalize, filter (Gopher, C4), decontaminate, exact + near dedup a corpus"),
    "train-tokenizer": ("data_tools.train_tokenizer", "train a sentencepiece or Hugging Face BPE tokenizer"),
    "preprocess": ("data_tools.preprocess", "tokenize jsonl/parquet/Arrow text into Megatron .bin/.idx"),
    "merge": ("data_tools.merge", "merge several .bin/.idx pairs into one"),
    "inspect-data": ("data_tools.inspect_data", "check a .bin/.idx pair and print its documents"),
    "sft": ("data_tools.sft", "tokenize prompt/response or chat data for SFT"),
    "classify": ("data_tools.classify", "tokenize labelled text for a classifier"),
    "eval-pack": ("data_tools.eval_pack", "tokenize a multiple-choice or cloze set for in-loop downstream evals"),
    "generate": ("mtds.generate", "sample text from a trained run"),
    "chat": ("mtds.chat", "talk to an SFT run, turn by turn"),
    "evaluate": ("mtds.evaluate", "validation/test loss of a checkpoint"),
    "export-hf": ("mtds.export_hf", "write a checkpoint as a Hugging Face model folder"),
    "import-hf": ("mtds.import_hf", "turn a Hugging Face model folder into an mtds run to train on"),
    "lm-eval": ("mtds.lm_eval", "score a run on lm-evaluation-harness tasks (the [eval] extra)"),
    "average": ("mtds.average", "average the weights of several checkpoints into a new run dir"),
    "prune": ("mtds.prune", "prune a GPT run's layers / FFN neurons / heads into a smaller run dir"),
    "universal-checkpoint": ("mtds.universal_checkpoint", "convert a checkpoint to resume at another world size"),
    "plot": ("mtds.plot", "plot a run's TensorBoard curves to PNG"),
}
def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [__doc__.split("\n\n")[0], "", "usage: mtds <command> [flags]   (mtds <command> --help for its flags)", ""]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += [f"  {'configs':<{width}}  list the shipped configs and scripts (--copy DIR: copy them to edit)"]
    return "\n".join(lines)


def configs(argv: list[str]) -> int:
    """`mtds configs [--copy DIR]`: list or copy the shipped folders (never over an existing file)."""
    if argv and argv[0] in ("-h", "--help"):
        print("usage: mtds configs [--copy DIR]\n\nlists the shipped DeepSpeed JSONs, run configs and SLURM "
              "scripts; --copy DIR copies them into DIR/ds_configs, DIR/configs, DIR/slurm")
        return 0
    if argv[:1] == ["--copy"] and len(argv) == 2:
        target = Path(argv[1])
        clashes = [str(target / name / f.name) for name in FOLDERS for f in shipped_files(name)
                   if (target / name / f.name).exists()]
        if clashes:
            print(f"error: {clashes[0]} exists ({len(clashes)} file(s) would be overwritten); copy into another "
                  "directory", file=sys.stderr)
            return 2
        for name in FOLDERS:
            shutil.copytree(shipped_dir(name), target / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
        print(f"copied ds_configs/, configs/ and slurm/ into {target}")
        return 0
    if argv:
        print("error: mtds configs takes no arguments or --copy DIR", file=sys.stderr)
        return 2
    for name in FOLDERS:
        print(f"{shipped_dir(name)}/\n" + "".join(f"  {f.name}\n" for f in shipped_files(name)), end="")
    return 0


def launch_ranks(argv: list[str]) -> int:
    """`mtds pretrain --nproc N ...`: the deepspeed launcher starting N ranks of mtds.pretrain on this
    node (for several nodes use `deepspeed --hostfile ... --module mtds.pretrain` or slurm/)."""
    i = next(i for i, a in enumerate(argv) if a == "--nproc" or a.startswith("--nproc="))
    value, rest = (argv[i].split("=", 1)[1], argv[:i] + argv[i + 1:]) if "=" in argv[i] else (
        argv[i + 1] if i + 1 < len(argv) else "", argv[:i] + argv[i + 2:])
    if not value.isdigit() or int(value) < 1:
        print(f"error: --nproc takes a number of ranks >= 1, got {value!r}", file=sys.stderr)
        return 2
    # The launcher of this interpreter's deepspeed (what the `deepspeed` script runs), so the ranks
    # use the same Python and mtds as this command.
    os.execv(sys.executable, [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", value,
                              "--module", "mtds.pretrain", *rest])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "configs":
        return configs(rest)
    if command not in COMMANDS:
        from mtds.config import _did_you_mean

        print(f"error: unknown command {command!r}{_did_you_mean(command, COMMANDS)}; `mtds --help` lists them",
              file=sys.stderr)
        return 2
    if command == "pretrain" and any(a == "--nproc" or a.startswith("--nproc=") for a in rest):
        return launch_ranks(rest)
    module = COMMANDS[command][0]
    sys.argv = [f"mtds {command}", *rest]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:  # the module's own `sys.exit(main())`
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
