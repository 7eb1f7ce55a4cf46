"""Seconds from `python mtds/pretrain.py ...` to the end of the first training step, by phase.

    python bench/startup.py [-- extra pretrain args]

Runs the real entry point (mtds.pretrain.main) twice in fresh processes on the same run dir:
first with an empty index cache (cold), then reusing it (warm). In each child, the functions
mtds.pretrain.main and mtds.train call are wrapped with timers (imports first, then run
config, the plan (DeepSpeed JSON, run dir, data sources), process group, engine (model,
deepspeed.initialize), datasets/index, metrics, step-0 evaluation, first step); the child stops
after the first training step. A phase that runs inside another is listed under it, marked
"↳", and its time is part of the enclosing phase's. DeepSpeed's JIT op cache
($TORCH_EXTENSIONS_DIR; the Makefile sets .venv/torch_extensions, else ~/.cache/torch_extensions)
is warm in both runs; its cold build is a one-off per machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ARGS = ["--deepspeed_config", "{ds}", "--data.paths=data/stdlib/stdlib_text_document",
                "--data.tokenizer_model=data/stdlib/tokenizer.model", "--training.train_iters=40",
                "--training.eval_iters=2", "--training.progress_bar=false"]


class FirstStepDone(Exception):
    pass


def child(argv: list[str]) -> None:
    t_start = time.perf_counter()
    phases: list[list] = []  # [label, seconds] in the order the phases start
    depth = [0]  # how many timed phases are running: nested ones are marked under their parent

    def mark(label, t0):
        phases.append([label, time.perf_counter() - t0])

    sys.path.insert(0, ROOT)
    t = time.perf_counter()
    import torch  # noqa: F401
    mark("import torch", t)
    t = time.perf_counter()
    import deepspeed
    mark("import deepspeed", t)
    t = time.perf_counter()
    import megatron.core.models.gpt  # noqa: F401
    mark("import megatron.core (GPTModel)", t)
    t = time.perf_counter()
    import mtds.data.sources
    import mtds.parallel.process_groups
    import mtds.kinds
    import mtds.train.metrics
    import mtds.pretrain
    import mtds.train.trainer
    import mtds.train.engine
    import mtds.train.plan
    mark("import mtds (+ data_tools, tensorboard via metrics)", t)

    def wrap(obj, name, label, after=None):
        """Time `obj.name`; the call sites look it up on `obj` when they run, so they see this."""
        f = getattr(obj, name)

        def timed(*a, **k):
            phase = [("↳" * depth[0] + " " if depth[0] else "") + label, None]
            phases.append(phase)
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                phase[1] = time.perf_counter() - t0
                depth[0] -= 1
                if after:
                    after()

        # the kinds' Family/Task instances are frozen dataclasses
        (object.__setattr__ if dataclasses.is_dataclass(obj) else setattr)(obj, name, timed)

    def stop():
        raise FirstStepDone

    wrap(mtds.pretrain, "parse_args", "parse run config")
    wrap(mtds.train.plan, "plan_run", "plan_run (DeepSpeed JSON check, run dir, user data)")
    wrap(mtds.train.plan, "data_and_tokenizer", "data sources + tokenizer (vocab, token ids, task checks)")
    wrap(mtds.data.sources, "resolve_sources", "data sources (check .bin/.idx)")
    wrap(mtds.parallel.process_groups, "init_distributed", "init_distributed (process group, megatron parallel state)")
    wrap(mtds.train.engine, "build_engine", "build_engine (seed, model, compile, deepspeed.initialize)")
    for family in mtds.kinds.FAMILIES:
        wrap(family, "build", "build megatron-core model")
    wrap(deepspeed, "initialize", "deepspeed.initialize (engine, ZeRO, FusedAdam op load)")
    datasets = {"causal_lm": "GPTDataset", "masked_lm": "BERTMaskedWordPieceDataset"}
    for task in {id(k.task): k.task for k in mtds.kinds.KINDS.values()}.values():  # called as cfg.kind.task.<fn>
        name = task.name
        wrap(task, "build_datasets", f"build_datasets ({datasets.get(name, name)} index: build or cache)")
    wrap(mtds.train.metrics, "Metrics", "Metrics (TensorBoard writer)")
    wrap(mtds.train.trainer.Trainer, "evaluate", "step-0 validation")
    wrap(mtds.train.trainer.Trainer, "train_step", "first training step", after=stop)
    try:
        rc = mtds.pretrain.main(argv)
    except FirstStepDone:
        pass
    else:  # it ended before the first step (a config or data error, printed above): no figures
        sys.exit(f"mtds.pretrain.main returned {rc} before the first training step")
    total = time.perf_counter() - t_start
    print("STARTUP_JSON " + json.dumps({"total": total, "phases": phases}), flush=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1:])
        return 0
    extra = argv[1:] if argv[:1] == ["--"] else argv
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ds = os.path.join(tmp, "ds.json")
        cfg = json.load(open(os.path.join(ROOT, "ds_configs/zero2.json")))
        cfg["scheduler"]["params"]["warmup_num_steps"] = 2
        json.dump(cfg, open(ds, "w"))
        run_dir = os.path.join(tmp, "run")
        args = [a.format(ds=ds) for a in DEFAULT_ARGS] + ["--run-dir", run_dir] + extra
        for label in ("cold index cache", "warm index cache"):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *args], cwd=ROOT,
                                 capture_output=True, text=True)
            wall = time.perf_counter() - t0
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("STARTUP_JSON ")), None)
            if line is None:
                print(out.stdout[-2000:], out.stderr[-3000:])
                return 1
            results.append((label, wall, json.loads(line[len("STARTUP_JSON "):])))
            shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
    labels = [p for p, _ in results[0][2]["phases"]]
    print(f"\nstart-up to end of first step, load average {os.getloadavg()[0]:.1f}")
    print("| phase | " + " | ".join(r[0] + " (s)" for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for i, label in enumerate(labels):
        print(f"| {label} | " + " | ".join(f"{r[2]['phases'][i][1]:.2f}" for r in results) + " |")
    print("| in-process total | " + " | ".join(f"{r[2]['total']:.2f}" for r in results) + " |")
    print("| wall from spawn (incl. interpreter start) | " + " | ".join(f"{r[1]:.2f}" for r in results) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
