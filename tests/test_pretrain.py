"""End-to-end GPT pretraining through the real entry point (marked slow; CI runs them)."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys

import numpy as np
import pytest

from helpers import PRETRAIN, ROOT, TINY_GPT, free_port, ok, run_pretrain, scalars, write_ds_config

pytestmark = pytest.mark.slow


def tiny_args(tiny_data, run_dir, *extra):
    return ["--data.paths", tiny_data["prefix"], "--data.tokenizer_model", tiny_data["tokenizer_model"],
            "--run-dir", str(run_dir), "--data.split=90,10,0", *TINY_GPT, "--training.log_interval=2", "--training.eval_iters=2",
            "--training.progress_bar=false", *extra]


def test_readme_command_trains_default_gpt(tmp_path):
    """`deepspeed mtds/pretrain.py --deepspeed_config ds_configs/zero2.json --run-dir runs/demo` with no data flags:
    builds the stdlib corpus from scratch (corpus, tokenizer, .bin/.idx: data_tools.default_dataset), trains the default tiny GPT, validation loss falls, TensorBoard has
    the scalars. Shortened to 30 iterations, warming up for 15 (a --ds. override of the shipped JSON's 30); the
    README's run does 300 (`make demo`, bench/RESULTS.md)."""
    ds_launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    import subprocess

    proc = subprocess.run(
        [ds_launcher, "--master_port", free_port(), PRETRAIN, "--deepspeed_config", os.path.join(ROOT, "ds_configs/zero2.json"),
         "--run-dir", "runs/demo", "--training.train_iters=30", "--training.eval_interval=15",
         "--ds.scheduler.params.warmup_num_steps=15", "--training.progress_bar=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1500, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    ok(proc)
    # The default corpus was built from scratch (the only test that does): a real dataset of the stdlib.
    from data_tools.inspect_data import verify_pair

    info = verify_pair(str(tmp_path / "data/stdlib/stdlib_text_document"))
    assert info.documents > 1000 and info.dtype == np.uint16
    run_dir = tmp_path / "runs/demo"
    s = scalars(str(run_dir))
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/skipped_steps", "val/loss", "val/ppl",
                "throughput/tokens_per_sec", "throughput/tflops_per_device", "throughput/data_wait_ms",
                "data/consumed_samples",
                "data/consumed_tokens", "memory/max_rss_gb", "train_vs_tokens/loss", "val_vs_tokens/loss"):
        assert tag in s, f"missing TensorBoard scalar {tag}; have {sorted(s)}"
    # one loader worker keeps up with the tiny model: waits well under its ~0.1-0.4 s steps
    assert all(0 <= v < 50 for _, v in s["throughput/data_wait_ms"][1:]), s["throughput/data_wait_ms"]
    val = [v for _, v in s["val/loss"]]
    assert s["val/loss"][0][0] == 0 and len(val) == 3
    assert val[-1] < val[0] - 2.0, f"validation loss did not fall clearly: {val}"
    assert s["data/consumed_tokens"][-1][1] == 30 * 8 * 256
    # The LR each logged step used: the shipped schedule's closed form (warmup 15 steps to 1e-3,
    # cosine to 1e-4 at step 30), from step 1 on (mtds/train/lr_schedule.py).
    closed = [1e-3 * (i / 15 if i <= 15 else 0.1 + 0.9 * (1 + math.cos(math.pi * (i - 15) / 15)) / 2)
              for i in range(1, 31)]
    assert [(step, pytest.approx(closed[step - 1], rel=1e-6)) for step, _ in s["train/lr"]] == s["train/lr"]
    assert [step for step, _ in s["train/lr"]] == list(range(10, 31, 10))
    assert "lr: linear warmup 15 steps to 0.001, cosine decay to 0.0001 over steps 16-30 (WarmupStableDecay)" in proc.stdout
    resolved = json.load(open(run_dir / "checkpoints/iter_0000030/mtds_config.json"))
    assert resolved["deepspeed"]["train_batch_size"] == 8 and resolved["world_size"] == 1
    assert resolved["run"]["model"]["num_layers"] == 4 and "deepspeed" in resolved["versions"]
    assert open(run_dir / "checkpoints/latest").read() == "iter_0000030"
    # The run ends saying what it did and what comes next (mtds/train/run.py).
    lines = proc.stdout.splitlines()
    done = next(line for line in lines if line.startswith("done: "))
    assert done.startswith("done: 30 iterations in ") and f"{30 * 8 * 256:,} tokens, validation loss {val[-1]:.4f}" in done
    assert 'next: python -m mtds.generate --load runs/demo --prompt "..."' in lines
    assert "next: tensorboard --logdir runs/demo/tensorboard" in lines


def test_two_cpu_ranks_train_with_zero2_and_compiled_layers(tiny_data, tmp_path):
    """Two ranks under the launcher, bf16 (fp32 where the CPU lacks it) and FusedAdam, ZeRO-2 and
    training.compile=layers. Two ranks at ZeRO-1 and ZeRO-3 train in
    tests/test_reliability.py::test_resume_is_bitwise_identical (the same model line, a falling loss)."""
    stage, compile_mode = 2, "layers"
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=stage, micro=2, accum=2)
    proc = run_pretrain(["--deepspeed_config", ds, *tiny_args(tiny_data, tmp_path / "run", "--training.train_iters=6",
                                                             "--training.eval_interval=6",
                                                             f"--training.compile={compile_mode}")], ranks=2)
    ok(proc)
    out = proc.stdout
    assert ("torch.compile: each of the 2 transformer layers" in out) == (compile_mode == "layers")
    assert f"ZeRO {stage} | world 2 | global batch 8" in out
    assert "iter      6/6" in out
    assert os.path.isdir(tmp_path / "run/checkpoints/iter_0000006")
    losses = [v for _, v in scalars(str(tmp_path / "run"))["train/loss"]]
    assert losses[-1] < losses[0]


def test_train_save_resume_continues_at_saved_position(tiny_data, tmp_path):
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, micro=4, accum=1, precision="fp32")
    run = tmp_path / "run"
    first = run_pretrain(["--deepspeed_config", ds, *tiny_args(tiny_data, run, "--training.train_iters=8",
                                                               "--training.save_interval=4", "--training.eval_interval=8")])
    ok(first)
    assert sorted(f for f in os.listdir(run / "checkpoints") if f.startswith(("iter_", "latest"))) == [
        "iter_0000004", "iter_0000008", "latest"]
    # Resume from iteration 4, as if the run had died after its first save.
    shutil.rmtree(run / "checkpoints/iter_0000008")
    (run / "checkpoints/latest").write_text("iter_0000004")
    second = run_pretrain(["--deepspeed_config", ds, "--load", str(run),
                           *tiny_args(tiny_data, run, "--training.train_iters=8", "--training.eval_interval=8")])
    ok(second)
    assert "resumed from" in second.stdout and "at iteration 4, 16 samples consumed" in second.stdout
    assert "iter      6/8" in second.stdout and "iter      2/8" not in second.stdout
    state = json.load(open(run / "config.json"))
    assert state["train_iters"] == 8


def test_config_errors_stop_before_deepspeed(tiny_data, tmp_path):
    ds = write_ds_config(str(tmp_path / "ds.json"))
    cases = [
        (["--data.paths", str(tmp_path / "nope"), "--data.tokenizer_model", tiny_data["tokenizer_model"]],
         f"error: data.paths: dataset prefix '{tmp_path}/nope' has no {tmp_path}/nope.bin or {tmp_path}/nope.idx"),
        (["--model.vocab_size=100", "--data.split=90,10,0", "--data.paths", tiny_data["prefix"],
          "--data.tokenizer_model", tiny_data["tokenizer_model"]],
         "error: model.vocab_size=100 is smaller than the tokenizer's 512"),
        (["--training.nope=1"], "error: unknown key training.nope"),
        (["--run-dir", tiny_data["corpus"]], "is a file; choose a directory"),
    ]
    for extra, expected in cases:  # a run dir of its own (the last --run-dir wins), not the checkout's runs/default
        proc = run_pretrain(["--deepspeed_config", ds, "--run-dir", str(tmp_path / "run"), *extra])
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert expected in proc.stderr, proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()[-1]) > 10 and "Traceback" not in proc.stderr
