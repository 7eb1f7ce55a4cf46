"""Reliability with real processes: exact resume, SIGTERM, SIGKILL during a save, refused
checkpoints, non-finite losses. All slow (each starts DeepSpeed); CI runs them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import PRETRAIN, free_port, missing, ok, run_pretrain, scalars, tiny_gpt_args, write_ds_config

pytestmark = pytest.mark.slow


args_for = tiny_gpt_args


def train_losses(run_dir) -> list[tuple[int, float]]:
    return sorted(scalars(str(run_dir))["train/loss"])


def final_weights(run_dir, tag: str) -> dict[str, torch.Tensor]:
    """fp32 weights consolidated from the ZeRO shards with DeepSpeed's own utility."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(os.path.join(run_dir, "checkpoints"), tag=tag)


def branch_at(run_dir, tag: str, new_dir) -> None:
    """A run dir holding only `tag`, copied from run_dir's checkpoints: what a run stopped at that
    iteration leaves (one training run fewer than stopping a second run there)."""
    shutil.copytree(run_dir / "checkpoints" / tag, new_dir / "checkpoints" / tag)
    (new_dir / "checkpoints" / "latest").write_text(tag)


# -- exact resume ------------------------------------------------------------------------------
# 6 steps: linear warmup 2 (peak 3e-3, write_ds_config's), constant 2, linear decay 2 to 0.1 x peak;
# the split runs resume at step 3, in the constant phase (mtds/train/lr_schedule.py's closed form).
WSD_2_2 = {"type": "WarmupStableDecay", "params": {"warmup_num_steps": 2, "decay_num_steps": 2,
                                                  "decay_style": "linear", "min_lr_ratio": 0.1}}
WSD_2_2_LRS = [3e-3 * f for f in (1 / 2, 1, 1, 1, 0.1 + 0.9 * (1 - 1 / 2), 0.1)]


@pytest.mark.parametrize("ranks,stage", [(0, 2), (2, 1), (2, 3)], ids=["1rank-zero2", "2ranks-zero1", "2ranks-zero3"])
def test_resume_is_bitwise_identical(tiny_data, tmp_path, ranks, stage):
    """fp32, dropout 0.1, gradient accumulation 2. torch Adam because DeepSpeed's fused CPU Adam
    is not bit-reproducible after a load (~1e-7 relative; ../shared/DESIGN.md). The LR schedule is
    mtds's warmup-stable-decay: the logged LR of each step is its closed form, resumed or not."""
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=stage, micro=2, accum=2, precision="fp32",
                         torch_adam=True, scheduler=WSD_2_2)
    common = ["--training.train_iters=6", "--training.eval_interval=3", "--model.hidden_dropout=0.1",
              "--model.attention_dropout=0.1"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    whole = ok(run_pretrain(args_for(tiny_data, straight, ds, *common, "--training.save_interval=3"), ranks=ranks))
    world = max(ranks, 1)
    assert f"ZeRO {stage} | world {world} | global batch {2 * 2 * world}" in whole.stdout and "iter      6/6" in whole.stdout
    if ranks == 0:  # a run stopped at an iteration (exit_interval) ...
        first = ok(run_pretrain(args_for(tiny_data, split, ds, *common, "--training.exit_interval=3"), ranks=ranks))
        assert "exit_interval=3: saving at iteration 3 and exiting" in first.stdout
    else:  # ... or the uninterrupted run's own iteration-3 checkpoint (the same save, one run fewer)
        branch_at(straight, "iter_0000003", split)
    second = ok(run_pretrain(args_for(tiny_data, split, ds, *common, "--load", str(split)), ranks=ranks))
    assert f"at iteration 3, {3 * 2 * 2 * max(ranks, 1)} samples consumed" in second.stdout

    expected, got = train_losses(straight), train_losses(split)
    assert [s for s, _ in expected] == [1, 2, 3, 4, 5, 6] and expected[-1][1] < expected[0][1]  # it trains
    assert got == (expected if ranks == 0 else expected[3:])  # bitwise: same floats at the same iterations
    lrs = {run: sorted(scalars(str(run))["train/lr"]) for run in (straight, split)}
    assert lrs[straight] == [(s, pytest.approx(lr, rel=1e-6)) for s, lr in enumerate(WSD_2_2_LRS, start=1)]
    assert lrs[split] == (lrs[straight] if ranks == 0 else lrs[straight][3:])
    a, b = final_weights(straight, "iter_0000006"), final_weights(split, "iter_0000006")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ZeRO-1 and ZeRO-2 share DeepSpeed's optimizer (DeepSpeedZeroOptimizer) and its checkpoint layout,
# which ds_to_universal reads the same way: stage 1 stands for both, stage 3 has its own layout.
@pytest.mark.parametrize("stage", [1, 3])
def test_resume_at_another_world_size_through_a_universal_checkpoint(tiny_data, tmp_path, stage):
    """2 ranks save; 1 rank is refused before DeepSpeed starts and told the command; after it,
    1 rank resumes and trains as 2 ranks would have (same global batch; fp32 sums in another order:
    ~1e-5 relative under ZeRO-3, against ~1e-2 if the Adam moments were lost)."""
    two = write_ds_config(str(tmp_path / "ds2.json"), stage=stage, micro=2, accum=2, precision="fp32")
    one = write_ds_config(str(tmp_path / "ds1.json"), stage=stage, micro=2, accum=4, precision="fp32")
    common = ["--training.train_iters=6", "--training.eval_interval=6"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    ok(run_pretrain(args_for(tiny_data, straight, two, *common, "--training.save_interval=3"), ranks=2))
    branch_at(straight, "iter_0000003", split)  # the 2-rank run, stopped at iteration 3
    shards = sorted(os.listdir(split / "checkpoints/iter_0000003"))

    refused = run_pretrain(args_for(tiny_data, split, one, *common, "--load", str(split)))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: training.load: {split}/checkpoints/iter_0000003 was saved by 2 data-parallel ranks and this run "
        f"has 1, and ZeRO-{stage} partitions the optimizer state per rank; convert it once with "
        f"`python -m mtds.universal_checkpoint --load {split}` (it then resumes at any world size), or resume "
        "with 2 ranks")
    assert sorted(os.listdir(split / "checkpoints/iter_0000003")) == shards  # nothing touched

    convert = subprocess.run([sys.executable, "-m", "mtds.universal_checkpoint", "--load", str(split)],
                             capture_output=True, text=True, timeout=300)
    assert convert.returncode == 0, convert.stderr[-3000:]
    assert sorted(os.listdir(split / "checkpoints/iter_0000003")) == sorted(shards + ["zero"])  # shards kept

    resumed = ok(run_pretrain(args_for(tiny_data, split, one, *common, "--load", str(split))))
    assert "resuming a checkpoint of 2 data-parallel ranks with 1: loading its universal form" in resumed.stdout
    assert "at iteration 3, 24 samples consumed" in resumed.stdout
    expected, got = dict(train_losses(straight)), dict(train_losses(split))
    assert sorted(expected) == [1, 2, 3, 4, 5, 6] and sorted(got) == [4, 5, 6]
    for it in (4, 5, 6):  # the master weights, Adam moments, step count and LR schedule carried over
        assert got[it] == pytest.approx(expected[it], rel=1e-4), it


# -- SIGTERM and SIGKILL ----------------------------------------------------------------------
def start(cmd, **kw):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, **kw)


def wait_for_line(proc, needle: str, timeout: float = 600) -> list[str]:
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not seen; output:\n" + "".join(lines[-40:]))


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """{local rank: pid} of the training processes under a deepspeed launcher."""
    import psutil

    ranks = {}
    for child in psutil.Process(launcher_pid).children(recursive=True):
        cmd = " ".join(child.cmdline())
        if "pretrain.py" in cmd and "--local_rank=" in cmd and "deepspeed.launcher" not in cmd:
            rank = int(cmd.split("--local_rank=")[1].split()[0])
            ranks.setdefault(rank, child.pid)  # the first is the rank itself, not a loader worker
    return ranks


def test_sigterm_to_one_rank_all_ranks_save_and_exit_zero(tiny_data, tmp_path):
    """SLURM signals every task; here only rank 1 gets SIGTERM, and both ranks must still agree
    on the step, save together and exit 0 (the launcher then exits 0 too)."""
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, micro=2, precision="fp32")
    run = tmp_path / "run"
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    proc = start([launcher, "--num_gpus", "2", "--master_port", free_port(), PRETRAIN,
                  *args_for(tiny_data, run, ds, "--training.train_iters=100000", "--training.eval_interval=100000",
                            "--data.num_workers=1")])
    wait_for_line(proc, "iter      3/")
    sent = time.time()
    os.kill(rank_pids(proc.pid)[1], signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert time.time() - sent < 30, "must finish inside the launcher's 30 s grace period"
    assert "SIGTERM: saving at iteration" in out
    tag = (run / "checkpoints/latest").read_text()
    saved_at = int(tag.split("_")[1])
    assert 3 <= saved_at < 100000
    assert sorted(f for f in os.listdir(run / "checkpoints" / tag) if f.startswith("rng_rank")) == [
        "rng_rank0.pt", "rng_rank1.pt"]
    # The same run length (another would change the data order): exit_interval stops it 2 steps on.
    resumed = ok(run_pretrain(args_for(tiny_data, run, ds, "--training.train_iters=100000",
                                      f"--training.exit_interval={saved_at + 2}", "--training.eval_interval=100000",
                                      "--load", str(run)), ranks=2))
    assert f"at iteration {saved_at}, {saved_at * 4} samples consumed" in resumed.stdout
    assert (run / "checkpoints/latest").read_text() == f"iter_{saved_at + 2:07d}"


def test_sigkill_during_save_never_publishes_a_partial_checkpoint(tiny_data, tmp_path):
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, micro=2, precision="fp32")
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    proc = start([sys.executable, PRETRAIN, *args_for(tiny_data, run, ds, "--training.train_iters=100000",
                                                      "--training.save_interval=1", "--training.eval_interval=100000")])
    # Wait until at least one checkpoint is published, then kill at the moment a save is in flight.
    deadline, killed_mid_save = time.time() + 600, False
    while time.time() < deadline and proc.poll() is None:
        names = os.listdir(ckpts) if ckpts.is_dir() else []
        if "latest" in names and any(n.endswith(".tmp") for n in names):
            os.killpg(proc.pid, signal.SIGKILL)
            killed_mid_save = True
            break
        time.sleep(0.002)
    out, _ = proc.communicate(timeout=60)
    assert killed_mid_save, "never caught a save in flight:\n" + out[-2000:]
    partial = [n for n in os.listdir(ckpts) if n.endswith(".tmp")]
    latest = (ckpts / "latest").read_text()
    assert partial, "the kill should have left the in-flight save's .tmp directory behind"
    assert (ckpts / latest / "mtds_config.json").is_file(), "latest must name a complete checkpoint"
    done = int(latest.split("_")[1])
    resumed = ok(run_pretrain(args_for(tiny_data, run, ds, "--training.train_iters=100000",
                                      f"--training.exit_interval={done + 3}", "--training.eval_interval=100000",
                                      "--load", str(run))))
    assert "warning: skipping partial checkpoint" in resumed.stdout
    assert f"resumed from {ckpts / latest} at iteration {done}" in resumed.stdout


# -- refused checkpoints and non-finite losses ------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    ds = write_ds_config(str(tmp / "ds.json"), stage=2, micro=2, precision="fp32")
    ok(run_pretrain(args_for(tiny_data, tmp / "run", ds, "--training.train_iters=2", "--training.eval_interval=2")))
    return tmp / "run", ds


def test_checkpoint_with_other_model_shape_is_refused(tiny_data, trained_run, tmp_path):
    run, ds = trained_run
    proc = run_pretrain(args_for(tiny_data, tmp_path / "new", ds, "--training.train_iters=4", "--load", str(run),
                                 "--model.hidden_size=128", "--model.num_layers=3"))
    assert proc.returncode == 2
    assert ("error: checkpoint does not fit this model: model.hidden_size: 64 -> 128; model.num_layers: 2 -> 3"
            in proc.stderr), proc.stderr[-2000:]


def test_harmless_config_differences_are_logged_and_allowed(tiny_data, trained_run, tmp_path):
    run, ds = trained_run
    proc = ok(run_pretrain(args_for(tiny_data, tmp_path / "new", ds, "--training.train_iters=3", "--load", str(run),
                                    "--training.eval_interval=7")))
    assert "note: config differs from the checkpoint's (allowed): training.eval_interval: 2 -> 7" in proc.stdout
    assert "at iteration 2" in proc.stdout
    # A longer run: its training set is built for more samples, and their order, compared, is the same.
    assert ("note: training set size 4 -> 6 samples (train_iters x global batch: 2 x 2 -> 3 x 2): the order of the "
            "first 4 samples is unchanged (compared)") in proc.stdout


def test_non_finite_loss_stops_before_the_step_and_saves_nothing(tiny_data, tmp_path):
    # An absurd LR blows the weights up after the first step, so a later loss is inf/NaN. ZeRO
    # stage 0: stages 1-3 would already skip steps whose gradients are not finite (next test).
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=0, micro=2, precision="fp32", lr=1e30, warmup=1,
                         gradient_clipping=0.0)
    run = tmp_path / "run"
    proc = run_pretrain(args_for(tiny_data, run, ds, "--training.train_iters=20", "--training.save_interval=1",
                                 "--training.eval_interval=100"))
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = [l for l in proc.stderr.splitlines() if l.startswith("error:")][-1]
    assert "non-finite training loss at iteration" in line and "the optimizer step was not applied" in line
    bad_iter = int(line.split("at iteration ")[1].split(";")[0])
    saved = sorted(int(n.split("_")[1]) for n in os.listdir(run / "checkpoints") if n.startswith("iter_")) \
        if (run / "checkpoints").is_dir() else []
    assert all(it < bad_iter for it in saved)


def test_a_run_of_skipped_steps_stops_with_advice(tiny_data, tmp_path):
    # Under ZeRO, DeepSpeed skips steps with non-finite gradients (as fp16 overflow does on GPU).
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, micro=2, precision="fp32", lr=1e30, warmup=1,
                         gradient_clipping=0.0)
    proc = run_pretrain(args_for(tiny_data, tmp_path / "run", ds, "--training.train_iters=50",
                                 "--training.eval_interval=100", "--training.max_skipped_steps_in_row=3"))
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "error: 3 optimizer steps in a row skipped for non-finite gradients" in proc.stderr
    assert "skipped 2 |" in proc.stdout or "skipped 1 |" in proc.stdout  # counted on the console too


LOADER_FAILS = """
import sys, torch
from mtds.data.loader import ResumableBatchSampler, build_loader, loader_batches

class FailsAtSample8(torch.utils.data.Dataset):
    def __len__(self):
        return 100

    def __getitem__(self, i):
        if i >= 8:
            raise IndexError(f"sample {i}")
        return torch.tensor([i])

def train(manage_workers):
    loader = build_loader(FailsAtSample8(), ResumableBatchSampler(100, 0, 4, 0, 1), num_workers=1)
    if manage_workers:  # as mtds.train.trainer.Trainer.fit iterates
        with loader_batches(loader) as batches:
            for _ in range(10):
                next(batches)
    batches = iter(loader)  # a bare iterator, as it was
    for _ in range(10):
        next(batches)

train(sys.argv[1] == "managed")
"""


@pytest.mark.parametrize("mode", ["managed", "bare"])
def test_an_uncaught_exception_while_the_loader_runs_ends_the_process(tmp_path, mode):
    """The workers ignore SIGTERM; after an uncaught exception the traceback keeps the loader's
    iterator alive and multiprocessing joins the workers at exit without a timeout. The training
    loop's way (mtds.data.loader.loader_batches) exits at once; a bare iterator hangs (shown, then killed)."""
    script = tmp_path / "loader_fails.py"
    script.write_text(LOADER_FAILS)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(PRETRAIN))}
    try:
        proc = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=15,
                              env=env, start_new_session=True)
    except subprocess.TimeoutExpired:
        assert mode == "bare", "loader_batches should have stopped the workers"
        return
    assert mode == "managed", "the bare iterator was expected to hang"
    assert proc.returncode == 1 and "IndexError: sample 8" in proc.stderr


def test_data_rebuilt_at_the_same_path_is_refused_on_resume_or_trains_with_fresh_indices(tiny_data, tmp_path):
    """The prefix rebuilt with 10 of its ~34 documents: resuming is refused before training (its
    identity, sizes and .idx hash, is saved with the checkpoint); with data.allow_other_data it
    resumes on the new data, whose index cache is its own (the old cache at the same path once made
    the first read raise IndexError in a loader worker)."""
    import shutil

    from data_tools.preprocess import preprocess

    prefix = tmp_path / "data" / "corpus_text_document"
    prefix.parent.mkdir()
    for ext in (".bin", ".idx"):
        shutil.copyfile(tiny_data["prefix"] + ext, str(prefix) + ext)
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, micro=2, precision="fp32")
    run = tmp_path / "run"
    common = ["--data.cache_dir", str(tmp_path / "cache"), "--data.paths", str(prefix), "--data.num_workers=1",
              "--training.eval_interval=100"]
    ok(run_pretrain(args_for(tiny_data, run, ds, *common, "--training.train_iters=2")))
    few = tmp_path / "few.jsonl"
    with open(tiny_data["corpus"]) as f, open(few, "w") as out:
        out.writelines(line for _, line in zip(range(10), f))
    preprocess([str(few)], str(tmp_path / "data" / "corpus"), tiny_data["tokenizer_model"], append_eod=True,
               workers=1, quiet=True)
    refused = run_pretrain(args_for(tiny_data, run, ds, *common, "--training.train_iters=4", "--load", str(run)))
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert (f"error: training.load: the data differs from the checkpoint's ({prefix}: rebuilt); resume on the "
            "data it trained on, or set data.allow_other_data=true") in refused.stderr
    resumed = ok(run_pretrain(args_for(tiny_data, run, ds, *common, "--training.train_iters=4", "--load", str(run),
                                       "--data.allow_other_data=true")))
    assert "resuming on it (data.allow_other_data=true)" in resumed.stdout and "iter      4/4" in resumed.stdout
    assert len(os.listdir(tmp_path / "cache")) == 2  # one index cache per data content


def test_ctrl_c_saves_and_exits_zero_and_a_second_one_stops_at_once(tiny_data, tmp_path):
    """Ctrl-C reaches the terminal's whole process group (training process and loader worker):
    the first saves at the end of the step and exits 0; a second one stops at once, unsaved."""
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, micro=2, precision="fp32")
    cmd = [sys.executable, PRETRAIN, *args_for(tiny_data, tmp_path / "run", ds, "--training.train_iters=100000",
                                               "--training.eval_interval=100000", "--data.num_workers=1")]
    proc = start(cmd)
    wait_for_line(proc, "iter      3/")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGINT: saving at iteration" in out and "Traceback" not in out
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()

    proc = start([*cmd, "--run-dir", str(tmp_path / "run2")])  # the last --run-dir wins
    wait_for_line(proc, "iter      3/")
    os.killpg(proc.pid, signal.SIGINT)
    wait_for_line(proc, "Ctrl-C: saving at the end of this step")
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "error: interrupted" in out, out[-3000:]


def test_a_second_run_into_a_run_dir_in_use_is_refused_and_a_dead_ones_lock_is_not(tiny_data, tmp_path):
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, micro=2, precision="fp32")
    run = tmp_path / "run"
    first = start([sys.executable, PRETRAIN, *args_for(tiny_data, run, ds, "--training.train_iters=100000",
                                                       "--training.eval_interval=100000")])
    wait_for_line(first, "iter      1/")
    second = run_pretrain(args_for(tiny_data, run, ds, "--training.train_iters=2"))
    assert second.returncode == 2
    assert (f"error: training.run_dir={str(run)!r} is in use by another run (pid {first.pid} on "
            in second.stderr), second.stderr[-2000:]
    os.killpg(first.pid, signal.SIGKILL)  # dies holding the lock
    first.wait()
    third = ok(run_pretrain(args_for(tiny_data, run, ds, "--training.train_iters=2")))
    assert "iter      2/2" in third.stdout


@pytest.fixture
def small_filesystem(tmp_path):
    """A 4 MiB tmpfs: room for one checkpoint of the tiny model (2.7 MB), not two."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        missing("cannot mount a tmpfs here (needs root)")  # fails under CI
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_no_space_left_during_a_save_is_one_line_and_latest_stays(tiny_data, tmp_path, small_filesystem):
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, micro=2, precision="fp32")
    run = small_filesystem / "run"
    proc = run_pretrain(args_for(tiny_data, run, ds, "--training.train_iters=5", "--training.save_interval=1",
                                 "--training.eval_interval=100", "--data.cache_dir", str(tmp_path / "cache")))
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = [l for l in proc.stderr.splitlines() if l.startswith("error:")][-1]
    tmp = run / "checkpoints" / "iter_0000002.tmp"
    assert line == (f"error: no space left on device while writing {tmp}; the partial save is removed and latest "
                    "is still iter_0000001; free space (or move training.run_dir) and resume with --load")
    assert not tmp.exists() and (run / "checkpoints" / "latest").read_text() == "iter_0000001"
    assert (run / "checkpoints" / "iter_0000001" / "mtds_config.json").is_file()


def test_an_unforeseen_error_ends_with_one_line_naming_the_rank(tiny_data, tmp_path):
    """An error nobody turned into a one-line message (here DeepSpeed's own, for an optimizer type
    it does not know) still ends the run: the traceback, then `error: rank N failed: ...`."""
    ds = write_ds_config(str(tmp_path / "ds.json"), precision="fp32")
    cfg = json.loads(open(ds).read())
    cfg["optimizer"]["type"] = "NoSuchOptimizer"
    (tmp_path / "ds.json").write_text(json.dumps(cfg))
    proc = run_pretrain(args_for(tiny_data, tmp_path / "run", ds, "--training.train_iters=2"), timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: rank 0 failed: ") and "NoSuchOptimizer" in proc.stderr, last


def test_a_killed_rank_ends_the_job_within_a_minute_naming_it(tiny_data, tmp_path):
    """SIGKILL (the OOM killer, a crash) leaves no message of its own; the surviving rank's broken
    connection must not be the only clue: its one line names the rank that died."""
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=2, micro=2, precision="fp32")
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    proc = start([launcher, "--num_gpus", "2", "--master_port", free_port(), PRETRAIN,
                  *args_for(tiny_data, tmp_path / "run", ds, "--training.train_iters=100000",
                            "--training.eval_interval=100000")])
    wait_for_line(proc, "iter      3/")
    victim = rank_pids(proc.pid)[1]
    killed = time.time()
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.time() - killed < 60, out[-3000:]
    assert f"error: rank 1 (pid {victim}) died (killed, out of memory or crashed" in out, out[-3000:]
