"""Weights & Biases logging (training.wandb_project, mtds/train/wandb_log.py): an offline run and its
resume read back from W&B's own files, and the one-line refusal without the wandb package."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import struct
import subprocess
import sys

import pytest

from helpers import ROOT, missing, ok, run_pretrain, tiny_gpt_args, write_ds_config

BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of records with 7-byte headers


def wandb_records(path: str):
    """The protobuf records (wandb.proto Record) of an offline run's .wandb file, in order. wandb 0.31
    ships no Python reader (its service is in Go), so this is the format its sync reads: a 7-byte file
    header (":W&B", magic, version), then chunks (crc32, length, type FULL/FIRST/MIDDLE/LAST) that
    never cross a 32 KiB block (a block's tail shorter than a chunk header is zero padding)."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # padding to the end of the block
            pos += left
            continue
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def read_offline_run(folder: str) -> tuple[str, dict, list[dict]]:
    """(run id, config, history rows) of one offline-run-* folder."""
    (path,) = glob.glob(os.path.join(folder, "run-*.wandb"))
    run_id, config, rows = None, {}, []
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run_id = r.run.run_id
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return run_id, config, rows


@pytest.mark.slow
def test_offline_run_and_its_resume_are_one_wandb_run(tiny_data, tmp_path):
    """Three steps, a stop to resume (exit_interval: the SIGTERM path's save and exit), then a resume to
    step 5: both processes log to the W&B run whose id the run dir keeps, at the TensorBoard steps."""
    if importlib.util.find_spec("wandb") is None:
        missing("the wandb package (the [test] extra installs it)")
    ds = write_ds_config(str(tmp_path / "ds.json"), stage=1, micro=2, precision="fp32", torch_adam=True)
    run = tmp_path / "run"
    args = tiny_gpt_args(tiny_data, run, ds, "--training.train_iters=5", "--training.eval_interval=3",
                         "--training.wandb_project=mtds-test", "--training.wandb_tags=tiny,ci")
    # W&B's settings, cache and service files in the test's folder, not $HOME; no system-stats sampler
    env = {"WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
           "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"), "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
           "WANDB_X_DISABLE_STATS": "true"}
    first = ok(run_pretrain([*args, "--training.exit_interval=3"], env=env))
    assert "exit_interval=3: saving at iteration 3 and exiting" in first.stdout
    run_id = (run / "wandb_run_id").read_text().strip()
    ok(run_pretrain([*args, "--load", str(run)], env=env))
    assert (run / "wandb_run_id").read_text().strip() == run_id

    folders = sorted(glob.glob(str(run / "wandb/offline-run-*")))  # one per process, named by start time
    assert len(folders) == 2
    (id_1, config, rows_1), (id_2, _, rows_2) = map(read_offline_run, folders)
    assert id_1 == id_2 == run_id
    steps = [[row["_step"] for row in rows] for rows in (rows_1, rows_2)]
    assert steps == [[0, 1, 2, 3], [4, 5]]
    # The TensorBoard series: validation at 0, 3 and 5 merged into the training rows of that step
    for row in rows_1[1:] + rows_2:
        assert {"train/loss", "train/lr", "train/grad_norm", "throughput/tokens_per_sec", "memory/max_rss_gb",
                "train_vs_tokens/loss", "data/consumed_tokens"} <= set(row)
    assert [row["_step"] for row in rows_1 + rows_2 if "val/loss" in row] == [0, 3, 5]
    assert rows_2[-1]["data/consumed_tokens"] == 5 * 2 * 64  # iterations x global batch x seq length
    # The run's config: the saved-run record (resolved run config and DeepSpeed JSON)
    assert config["run"]["training"]["wandb_project"] == "mtds-test"
    assert config["run"]["model"]["num_layers"] == 2
    assert config["deepspeed"]["zero_optimization"]["stage"] == 1
    assert "train_order" not in config


def test_wandb_project_without_wandb_is_one_line():
    """Refused before any training work (mtds/train/plan.py), naming the key and the install."""
    code = ("import sys; sys.modules['wandb'] = None; from mtds.pretrain import main; "
            f"sys.exit(main(['--training.wandb_project=demo', '--run-dir', {os.devnull!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == ["error: training.wandb_project='demo' needs the wandb package: pip install "
                                        "'mtds-pretrain[wandb]' (or pip install wandb), or leave training.wandb_project "
                                        "unset"]



class FakeRun:
    """What start() and WandbRun use of a wandb Run, as an online run whose next step is `starting_step`."""

    def __init__(self, starting_step: int, fail_at: int | None = None):
        self.id, self.starting_step, self.fail_at, self.rows = "abc12345", starting_step, fail_at, []

    def log(self, row, step):
        if step == self.fail_at:
            raise ConnectionResetError("Connection lost")
        self.rows.append((step, row))

    def finish(self, exit_code=0):
        self.rows.append(("finish", exit_code))


def test_an_online_resume_behind_the_wandb_runs_last_step_logs_from_there_and_says_so(tmp_path, monkeypatch):
    """Online, W&B drops steps below a resumed run's last one (a crash after the last save, a
    rollback): they are not sent, and a note names them. The id file decides new run or resume; a
    W&B failure mid-run is one warning and training goes on."""
    import types

    from mtds.config import TrainingConfig
    from mtds.train import wandb_log

    inits, runs = [], [FakeRun(starting_step=0), FakeRun(starting_step=13, fail_at=20)]
    fake = types.SimpleNamespace(init=lambda **kw: inits.append(kw) or runs[len(inits) - 1], teardown=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    t = TrainingConfig(run_dir=str(tmp_path / "run"), wandb_project="p")
    os.makedirs(t.run_dir)
    lines = []
    wandb_log.start(t, {"run": {}, "train_order": [1]}, resumed_at=None, log=lines.append)
    assert inits[0]["id"] is None and inits[0]["resume"] is None and inits[0]["name"] == "run"
    assert inits[0]["config"] == {"run": {}} and (tmp_path / "run/wandb_run_id").read_text() == "abc12345\n"
    run = wandb_log.start(t, {}, resumed_at=8, log=lines.append)  # the W&B run has steps up to 12
    assert inits[1]["id"] == "abc12345" and inits[1]["resume"] == "allow"
    assert lines == ["note: W&B run abc12345 already has steps up to 12; this run resumes at iteration 8, and W&B "
                     "keeps a run's steps increasing: iterations 9-12 go to TensorBoard only"]
    for it in (10, 12, 13, 20, 21):
        run.scalars({"train/loss": 2.0, "train/lr": 0.1}, it, tokens=it * 128)
    run.finish()
    assert runs[1].rows == [(13, {"train/loss": 2.0, "train/lr": 0.1, "data/consumed_tokens": 13 * 128.0,
                                  "train_vs_tokens/loss": 2.0})]  # then W&B failed at 20: nothing more, no finish
    assert len(lines) == 2 and lines[1].startswith("warning: W&B stopped (ConnectionResetError: Connection lost); "
                                                   "training goes on without it")
