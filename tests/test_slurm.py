"""The SLURM scripts under slurm/, checked statically and run for real on a one-node cluster.

Static: every script passes `bash -n` and shellcheck (skipped where shellcheck is missing).
End-to-end (slow): a local SLURM (tests/slurm_cluster.py) runs the unchanged
slurm/pretrain_64gpu.sh, shrunk from 8x8 GPUs to this machine by sbatch command-line options
only (1 node, 2 CPU ranks, no GPUs), and slurm/preprocess.sh's array + merge jobs. Skipped,
with the reason, where SLURM is not installed or cannot start (not root, no munged).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, TINY_GPT, missing, write_ds_config
from slurm_cluster import ClusterError, LocalSlurm, unavailable_reason

SCRIPTS = sorted((Path(ROOT) / "slurm").glob("*.sh"))
PRETRAIN_SH = str(Path(ROOT) / "slurm" / "pretrain_64gpu.sh")
# What shrinks the 64-GPU job to this machine; the script body stays as shipped.
SHRINK = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=20"]
TRAIN_ITERS = 60
JOB_TIMEOUT = 900  # seconds; the first DeepSpeed run on a machine JIT-compiles its CPU ops


def test_slurm_scripts_exist():
    names = {p.name for p in SCRIPTS}
    assert {"pretrain_64gpu.sh", "preprocess.sh", "preprocess_shard.sh", "preprocess_merge.sh", "clean.sh",
            "clean_shard.sh", "clean_merge.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_with_bash_n(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_scripts_are_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        missing("shellcheck not installed (apt-get install shellcheck)")  # fails under CI
    proc = subprocess.run(["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pretrain_script_asks_for_8_nodes_of_8_gpus_and_signals_before_the_limit():
    text = Path(PRETRAIN_SH).read_text()
    for line in ("#SBATCH --nodes=8", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --requeue", "#SBATCH --open-mode=append", "#SBATCH --signal=B:USR1@"):
        assert line in text


def test_cluster_helper_says_why_it_cannot_start(monkeypatch):
    """Where SLURM is missing or we are not root, the end-to-end tests skip with this reason (under
    CI=true they fail with it)."""
    import slurm_cluster

    monkeypatch.setattr(slurm_cluster.shutil, "which", lambda name: None)
    monkeypatch.setattr(slurm_cluster.os.path, "exists", lambda path: False)
    assert "apt-get install" in slurm_cluster.unavailable_reason()
    monkeypatch.undo()
    if slurm_cluster.unavailable_reason() is None:  # installed here: check the root requirement
        monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
        assert "needs root" in slurm_cluster.unavailable_reason()


# -- a real cluster --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        missing(reason)  # fails under CI: the SLURM tests must run there
    c = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except (ClusterError, OSError, subprocess.SubprocessError) as e:
        missing(f"a local SLURM cluster did not start here: {e}")
    yield c
    c.stop()


@pytest.fixture(scope="module")
def slurm_ds_config(tmp_path_factory):
    # torch Adam: the test is about launching, not about DeepSpeed's JIT-compiled CPU Adam.
    return write_ds_config(str(tmp_path_factory.mktemp("ds") / "ds.json"), micro=2, torch_adam=True)


def _train_args(tiny_data) -> list[str]:
    return ["--data.paths", tiny_data["prefix"], "--data.tokenizer_model", tiny_data["tokenizer_model"], *TINY_GPT,
            f"--training.train_iters={TRAIN_ITERS}", "--training.log_interval=1", "--training.eval_interval=1000",
            "--training.eval_iters=1", "--training.progress_bar=false", "--data.num_workers=0",
            # No test split: "969,30,1" leaves it without documents on a corpus this small (mtds
            # refuses that; megatron-core's GPTDataset would loop forever on it).
            "--data.split=95,5,0"]


def _submit(cluster, submit_dir: Path, run_dir: Path, ds_config: str, train_args: list[str],
            job_name: str) -> subprocess.Popen:
    """`sbatch --wait` the pretrain script from submit_dir (its logs/slurm/ gets the output)."""
    (submit_dir / "logs" / "slurm").mkdir(parents=True, exist_ok=True)
    env = {**cluster.env, "PYTHON": sys.executable, "DS_CONFIG": ds_config, "RUN_DIR": str(run_dir),
           "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(["sbatch", "--wait", f"--job-name={job_name}", *SHRINK, PRETRAIN_SH, *train_args],
                            cwd=submit_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _job_log(submit_dir: Path, job_name: str, seen: tuple[str, ...] = (), timeout: float = 60) -> tuple[str, Path]:
    """A new job's id and output file (#SBATCH --output=logs/slurm/%x-%j.out), ids in `seen` aside."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        logs = [p for p in (submit_dir / "logs" / "slurm").glob(f"{job_name}-*.out")
                if p.stem.rsplit("-", 1)[1] not in seen]
        if logs:
            return logs[0].stem.rsplit("-", 1)[1], logs[0]
        time.sleep(0.5)
    raise AssertionError(f"no job output under {submit_dir}/logs/slurm after {timeout} s")


def _wait_for(path: Path, pattern: str, proc: subprocess.Popen, timeout: float = JOB_TIMEOUT) -> re.Match:
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = re.search(pattern, path.read_text(errors="replace"), re.M)
        if m:
            return m
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in {path} (job ended: {proc.poll() is not None}):\n"
                         + path.read_text(errors="replace")[-4000:])


def _finish(proc: subprocess.Popen, log: Path) -> None:
    out, _ = proc.communicate(timeout=JOB_TIMEOUT)
    assert proc.returncode == 0, f"sbatch --wait exit {proc.returncode}: {out}\n{log.read_text()[-4000:]}"


def _latest(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "latest").read_text().strip()


def _assert_finished_run(run_dir: Path) -> None:
    assert _latest(run_dir) == f"iter_{TRAIN_ITERS:07d}"
    assert (run_dir / "checkpoints" / f"iter_{TRAIN_ITERS:07d}" / "mtds_config.json").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard events"


@pytest.mark.slow
def test_sigterm_saves_and_exits_zero_then_a_resubmission_resumes_and_the_time_limit_warning_requeues(
        cluster, tiny_data, slurm_ds_config, tmp_path):
    """One run, three launches (each behaviour once; a launch of 2 ranks costs ~20 s here).
    1. SIGTERM to the batch script (scancel --batch, as some preemption set-ups do) reaches both ranks:
       they save at the same step and the job exits 0, without requeueing.
    2. Submitted again, the job resumes there. USR1 to its batch script is what `#SBATCH
       --signal=B:USR1@300` sends before the time limit (verified with a real --time limit while
       writing this): the ranks save, the script requeues the job,
    3. and the requeued run (same job id, log appended) resumes and finishes."""
    run_dir, submit = tmp_path / "run", tmp_path / "submit"
    args = _train_args(tiny_data)
    proc = _submit(cluster, submit, run_dir, slurm_ds_config, args, "sigterm")
    job_id, log = _job_log(submit, "sigterm")
    _wait_for(log, r"^iter +[1-9]\d*/", proc)  # training has started
    cluster.run("scancel", "--batch", "--signal=TERM", job_id)
    _finish(proc, log)
    text = log.read_text()
    assert "batch script got SIGTERM" in text
    stop = int(re.search(r"SIGTERM: saving at iteration (\d+) and exiting", text)[1])
    assert 0 < stop < TRAIN_ITERS
    assert _latest(run_dir) == f"iter_{stop:07d}"
    assert (run_dir / "checkpoints" / f"iter_{stop:07d}").is_dir()
    assert "requeueing" not in text  # only the time-limit warning requeues
    # Two ranks, both from SLURM's ids: the run's resolved config says world size 2.
    assert '"world_size": 2' in (run_dir / "config.json").read_text()

    proc = _submit(cluster, submit, run_dir, slurm_ds_config, args, "sigterm")
    job2, log2 = _job_log(submit, "sigterm", seen=(job_id,))
    _wait_for(log2, rf"^iter +{stop + 1}/", proc)  # resumed and training
    cluster.run("scancel", "--batch", "--signal=USR1", job2)
    _finish(proc, log2)  # sbatch --wait returns when the requeued run has ended
    text2 = log2.read_text()
    assert re.search(rf"resumed from \S+iter_{stop:07d} at iteration {stop}\b", text2), text2[-3000:]
    stop2 = int(re.findall(r"SIGTERM: saving at iteration (\d+) and exiting", text2)[-1])
    assert stop < stop2 < TRAIN_ITERS
    assert f"checkpoint iter_{stop2:07d} saved before the time limit; requeueing job {job2}" in text2
    assert f"job {job2} (restart 1)" in text2
    assert re.search(rf"resumed from \S+iter_{stop2:07d} at iteration {stop2}\b", text2)
    assert re.search(rf"^iter +{TRAIN_ITERS}/{TRAIN_ITERS} ", text2, re.M)
    _assert_finished_run(run_dir)


@pytest.mark.slow
def test_preprocess_array_job_then_merge(cluster, tiny_data, tmp_path):
    """slurm/preprocess.sh: one array task per shard, then the dependent merge; the merged
    dataset holds every shard's documents in shard order."""
    from data_tools.inspect_data import open_indexed_dataset

    lines = Path(tiny_data["corpus"]).read_text().splitlines(keepends=True)
    raw = tmp_path / "raw"
    raw.mkdir()
    shards = [lines[i::3] for i in range(3)]
    for i, shard in enumerate(shards):
        (raw / f"shard_{i}.jsonl").write_text("".join(shard))
    env = {**cluster.env, "INPUTS": str(raw / "shard_*.jsonl"), "TOKENIZER_MODEL": tiny_data["tokenizer_model"],
           "OUTPUT_PREFIX": str(tmp_path / "out" / "web"), "CPUS_PER_TASK": "1", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(Path(ROOT) / "slurm" / "preprocess.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array_id, merge_id = re.search(r"array job (\d+) and the merge as job (\d+)", proc.stdout).groups()
    deadline = time.time() + 300
    while time.time() < deadline and cluster.run("squeue", "-h", "-j", f"{array_id},{merge_id}",
                                                 check=False).stdout.strip():
        time.sleep(0.5)
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "logs" / "slurm").glob("*.out")))
    merged = tmp_path / "out" / "web_text_document"
    assert merged.with_suffix(".idx").is_file(), logs
    assert len(list((tmp_path / "logs" / "slurm").glob("mtds-preprocess-*_*.out"))) == 3
    assert not (tmp_path / "out" / "web_parts").exists()  # parts removed after the merge
    docs = open_indexed_dataset(str(merged))
    assert len(docs.document_indices) - 1 == len(lines)
    # Shard order: the first document of the merge is shard 0's first line.
    first_shard = open_indexed_dataset(tiny_data["prefix"])
    assert list(docs[0]) == list(first_shard[0])


def _wait_jobs(cluster, ids: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and cluster.run("squeue", "-h", "-j", ids, check=False).stdout.strip():
        time.sleep(0.5)


@pytest.mark.slow
def test_clean_array_job_then_merge_keeps_what_one_pass_keeps(cluster, tmp_path):
    """slurm/clean.sh: 3 shard tasks, then the merge's cross-shard dedup: the output is what
    data_tools.clean keeps in one pass in memory (exact and near copies across shards removed);
    submitted again, every shard is skipped (its marker names the same rules and inputs)."""
    import json
    import random

    from data_tools.clean import clean
    from data_tools.clean_config import build_config

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(3000)]
    docs = [rng.choices(vocab, k=120) for _ in range(24)]
    near = [list(d) for d in docs[::4]]
    for d in near:  # 2 words of 120 replaced: shingle Jaccard ~0.85
        for i in rng.sample(range(len(d)), 2):
            d[i] = rng.choice(vocab)
    texts = [" ".join(d) for d in docs[:8] + near[:2] + docs[8:] + near[2:] + docs[::5]]
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        with open(raw / f"part_{i}.jsonl", "w") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in texts[i * len(texts) // 3:(i + 1) * len(texts) // 3])
    out = tmp_path / "out" / "clean.jsonl"
    env = {**cluster.env, "INPUTS": str(raw / "*.jsonl"), "OUTPUT": str(out), "CLEAN_ARGS": "--off quality --off "
           "repetition", "CPUS_PER_TASK": "1", "MEMORY_MB": "64", "PYTHON": sys.executable}
    (tmp_path / "out").mkdir()
    cfg = build_config(off=["quality", "repetition"])
    # shard 1 finished earlier (a restart): its task finds the marker and skips it
    clean([str(raw / "*.jsonl")], out, cfg, quiet=True, work_dir=f"{out}.work", shards=3, shard=1)
    proc = subprocess.run(["bash", str(Path(ROOT) / "slurm" / "clean.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ids = re.search(r"3 shard\(s\) of 3 input file\(s\) as array job (\d+) and the merge as job (\d+)",
                    proc.stdout).groups()
    _wait_jobs(cluster, ",".join(ids))
    logs = {p.name: p.read_text() for p in sorted((tmp_path / "logs" / "slurm").glob("*.out"))}
    assert out.is_file(), logs
    assert ["done before" in logs[f"mtds-clean-{ids[0]}_{i}.out"] for i in range(3)] == [False, True, False]
    assert not Path(f"{out}.work").exists()  # removed after the merge
    one = clean([raw], tmp_path / "one.jsonl", cfg, quiet=True)
    assert out.read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert one["rules"]["near_duplicate"]["documents"] == 6 and one["rules"]["exact_duplicate"]["documents"] == 5
