"""Knowledge distillation on the default corpus: a small student trained from scratch against the same
student distilled from a larger mtds teacher, same token budget, same shape; validation loss of each.

    python bench/bench_distill.py [--root runs/bench_distill] [--teacher-iters 300] [--student-iters 300]
                                  [--alpha 1.0] [--temperature 1.0]

Three runs of the real entry point (mtds/pretrain.py, ds_configs/zero2.json, the stdlib corpus the
README's first command builds): the teacher (gpt-tiny, 4 x 256), then the student (2 x 128, 2 heads)
from scratch and with `training.teacher`. A teacher run dir that already holds its final checkpoint is
reused. Prints the table of validation losses (the student's own next-token loss in both student runs:
val/loss, mtds.train.distill) and wall seconds per run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDENT = ["--model.preset=none", "--model.num_layers=2", "--model.hidden_size=128", "--model.num_attention_heads=2",
           "--model.max_position_embeddings=256"]


def train(run_dir: str, iters: int, *extra: str) -> float:
    """Run mtds/pretrain.py to `iters`; its wall seconds (nan: a finished run dir reused)."""
    if os.path.isdir(os.path.join(run_dir, "checkpoints", f"iter_{iters:07d}")):
        return float("nan")
    cmd = [sys.executable, os.path.join(ROOT, "mtds", "pretrain.py"), "--deepspeed_config",
           os.path.join(ROOT, "ds_configs", "zero2.json"), "--run-dir", run_dir, f"--training.train_iters={iters}",
           f"--training.eval_interval={iters}", "--training.eval_iters=20", "--training.progress_bar=false",
           "--training.log_interval=50", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def last_val_loss(run_dir: str) -> float:
    from mtds.plot import VAL_TAG, read_scalars

    return read_scalars(os.path.join(run_dir, "tensorboard"), (VAL_TAG,))[VAL_TAG][-1][1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="runs/bench_distill")
    p.add_argument("--teacher-iters", type=int, default=300)
    p.add_argument("--student-iters", type=int, default=300)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=1.0)
    a = p.parse_args(argv)
    root = os.path.abspath(a.root)
    teacher = os.path.join(root, "teacher")
    rows = []
    seconds = train(teacher, a.teacher_iters)
    rows.append(("teacher gpt-tiny 4 x 256", a.teacher_iters, last_val_loss(teacher), seconds))
    for name, extra in (("student 2 x 128 from scratch", []),
                        (f"student 2 x 128 distilled (alpha {a.alpha}, T {a.temperature})",
                         [f"--training.teacher={teacher}", f"--training.distill_alpha={a.alpha}",
                          f"--training.distill_temperature={a.temperature}"])):
        run_dir = os.path.join(root, "distilled" if extra else "scratch")
        seconds = train(run_dir, a.student_iters, *STUDENT, *extra)
        rows.append((name, a.student_iters, last_val_loss(run_dir), seconds))
    print("| run | iterations (8 x 256 tokens) | validation loss | wall s |")
    print("|---|---|---|---|")
    for name, iters, loss, seconds in rows:
        print(f"| {name} | {iters} | {loss:.4f} | {seconds:.0f} |")
    print(f"distilled - scratch: {rows[2][2] - rows[1][2]:+.4f} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
