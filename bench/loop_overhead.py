"""What the mtds Trainer loop adds per step over a bare DeepSpeed loop, same model and batch.

    python bench/loop_overhead.py [--steps 15 --rounds 3 --preset gpt-tiny --micro 8 --seq 256]

bare:    engine(batch) -> engine.backward(loss) -> engine.step(), one fixed batch.
trainer: mtds.train.trainer.Trainer.fit() over a dataset that returns that same sample, with the
         project's sampler/DataLoader (num_workers=0), stop-flag all-reduce, loss windows,
         log lines every `--log-interval` steps. Eval at step 0 and the final save are outside
         the timed steps (timestamps are taken at each training forward call).
Rounds alternate bare and trainer so that load from other processes hits both alike. Besides
the median wall time per step, each loop times what it spends outside the engine calls
(forward incl. the batch's .to(device), backward, step): that is the loop's own cost, and
it stays measurable on a shared, loaded machine where step times swing by 2x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from bench.train_throughput import build_engine, synthetic_batches  # noqa: E402


class FixedSampleDataset(torch.utils.data.Dataset):
    """`n` copies of one GPTDataset-style sample (CPU tensors, as GPTDataset returns)."""

    def __init__(self, batch: dict, n: int):
        self.sample = {k: v[0].cpu() for k, v in batch.items()}
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.sample


class EngineTimer:
    """Accumulates seconds spent inside forward/backward/step; one (wall, inside) per step."""

    def __init__(self, engine):
        self.inside = 0.0
        self.marks: list[tuple[float, float]] = []
        self._orig = {}
        for name in ("backward", "step"):
            self._orig[name] = getattr(engine, name)
            setattr(engine, name, self._timed(self._orig[name]))
        self.engine = engine

    def _timed(self, fn):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.inside += time.perf_counter() - t0
        return timed

    def forward(self, model, batch, device):
        from mtds.tasks.causal_lm import forward_step

        if model.training:  # a new training step starts here
            self.marks.append((time.perf_counter(), self.inside))
        return self._timed(forward_step)(model, batch, device)

    def per_step(self) -> list[tuple[float, float]]:
        """(wall seconds, seconds outside the engine calls) for each complete step."""
        return [(b[0] - a[0], (b[0] - a[0]) - (b[1] - a[1])) for a, b in zip(self.marks, self.marks[1:])]

    def restore(self):
        for name, fn in self._orig.items():
            setattr(self.engine, name, fn)


def bare_steps(engine, batch, steps: int) -> list[tuple[float, float]]:
    timer = EngineTimer(engine)
    for _ in range(steps + 1):
        sums, _ = timer.forward(engine, batch, engine.device)
        engine.backward(sums["lm"] / batch["loss_mask"].sum())  # the per-token mean
        engine.step()
    timer.marks.append((time.perf_counter(), timer.inside))  # closes the last step
    timer.restore()
    return timer.per_step()


def trainer_steps(engine, batch, steps: int, micro: int, seq: int, log_interval: int, run_dir: str):
    from mtds.config import build_config
    from mtds.train.metrics import Metrics
    from mtds.parallel.sizes import ParallelSizes
    from mtds.train.trainer import Trainer

    cfg = build_config(overrides={"training": {"train_iters": steps + 1, "log_interval": log_interval,
                                               "eval_interval": 10**6, "eval_iters": 1, "run_dir": run_dir,
                                               "progress_bar": False},
                                  "data": {"seq_length": seq, "num_workers": 0},
                                  "model": {"max_position_embeddings": max(seq, 256)}})
    timer = EngineTimer(engine)
    train_ds = FixedSampleDataset(batch, (steps + 1) * micro)
    metrics = Metrics(run_dir, True, steps + 1, False)
    quiet = lambda *a, **k: None  # noqa: E731
    metrics.print = quiet
    from mtds.tasks.causal_lm import count_targets

    trainer = Trainer(cfg, engine, (train_ds, None, None), {"bench": True}, timer.forward, count_targets, metrics,
                      parallel=ParallelSizes(world=1), rank=0, train_iters=steps + 1, flops_per_token=1.0,
                      peak_tflops=None, log=quiet)
    trainer.save = lambda: None  # the end-of-run checkpoint is not part of the loop
    trainer.fit()
    metrics.close()
    timer.restore()
    return timer.per_step()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt-tiny")
    p.add_argument("--variant", default="z2")
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--log-interval", type=int, default=10)
    args = p.parse_args(argv)
    engine, _, _, prec = build_engine(args.preset, args.variant, args.micro, args.vocab)
    batch = synthetic_batches(1, args.micro, args.seq, args.vocab, engine.device)[0]
    bare_steps(engine, batch, 3)  # warm-up
    bare, trainer = [], []
    with tempfile.TemporaryDirectory() as run_dir:
        for r in range(args.rounds):
            bare += bare_steps(engine, batch, args.steps)
            trainer += trainer_steps(engine, batch, args.steps, args.micro, args.seq, args.log_interval, run_dir)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{torch.get_num_threads()} threads"
    print(f"\n{args.preset} {args.variant} {prec} micro {args.micro} seq {args.seq} on {device}, "
          f"{args.rounds} rounds x {args.steps} steps each, load average {os.getloadavg()[0]:.1f}")
    print("| loop | median wall ms/step | median ms/step outside forward/backward/step |\n|---|---|---|")
    med = {name: [statistics.median(x[i] for x in steps) for i in (0, 1)]
           for name, steps in (("bare engine loop", bare), ("mtds Trainer.fit", trainer))}
    for name, (wall, outside) in med.items():
        print(f"| {name} | {wall * 1e3:.1f} | {outside * 1e3:.2f} |")
    (bw, bo), (tw, to) = med.values()
    print(f"| Trainer's own cost per step | | {(to - bo) * 1e3:.2f} ms = {(to - bo) / bw:.2%} of the bare step |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
