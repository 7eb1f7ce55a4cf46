"""Bad-input sweep for the training entry point: every input a user can get wrong gives one
exact `error:` line (exit 2) before any process group or DeepSpeed work, and nothing is
written. Runs `mtds.pretrain.main` in this process (errors come before distributed init).
data_tools' bad inputs are swept in tests/test_data_tools.py; tests/README.md lists both."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from helpers import ROOT, TINY_GPT
from mtds.pretrain import main

GOOD_DS = os.path.join(ROOT, "ds_configs", "zero2.json")


@pytest.fixture()
def case(tiny_data, tmp_path):
    """Runs main() with the tiny dataset and a fresh run dir; returns (exit code, error line)."""

    def run(*extra, ds=GOOD_DS, data=True):
        argv = ["--deepspeed_config", ds, "--run-dir", str(tmp_path / "run"), "--data.split=90,10,0", *TINY_GPT]
        if data:
            argv += ["--data.paths", tiny_data["prefix"], "--data.tokenizer_model", tiny_data["tokenizer_model"]]
        return main(argv + list(extra))

    return run


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error line on stderr"
    assert err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def nothing_written(tmp_path):
    """No output in the run dir; its `.lock` (mtds/train/run_lock.py, released when the run exits) aside."""
    run = tmp_path / "run"
    return not run.exists() or not [p for p in run.iterdir() if p.name != ".lock"]


def copy_pair(tiny_data, tmp_path, name="copy"):
    dst = str(tmp_path / name)
    for ext in (".bin", ".idx"):
        shutil.copy(tiny_data["prefix"] + ext, dst + ext)
    return dst


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


SIMPLE_CASES = [
    # (id, extra argv, expected text in the error line)
    ("unknown-key", ["--training.train_iter=5"], "unknown key training.train_iter (did you mean 'train_iters'?)"),
    ("wrong-type", ["--training.train_iters=many"], "training.train_iters: expected int or none, got 'many'"),
    ("not-integral", ["--training.train_iters=2.9e0"], "training.train_iters: expected int or none, got '2.9e0'"),
    ("blend-weights", ["--data.weights=heavy"], "data.weights: expected float, got 'heavy'"),
    ("blend-count", ["--data.weights=1,2"], "data.weights has 2 entries for 1 data.paths"),
    ("split-sum", ["--data.split=90,10"], "data.split='90,10': give three non-negative train,valid,test weights"),
    ("split-parse", ["--data.split=a,b,c"], "data.split='a,b,c': give three non-negative"),
    ("split-empty", ["--data.split=999,1,0"], "leaves the valid split of"),
    ("seq-too-long", ["--data.seq_length=128"], "data.seq_length=128 exceeds model.max_position_embeddings=64"),
    ("vocab-too-small", ["--model.vocab_size=256"], "model.vocab_size=256 is smaller than the tokenizer's 512"),
    ("bad-choice", ["--model.activation=relu"], "model.activation='relu': choose one of swiglu, gelu"),
    ("no-section", ["--train_iters=5"], "name the section, e.g. --training.train_iters="),
]


@pytest.mark.parametrize("name,extra,expected", SIMPLE_CASES, ids=[c[0] for c in SIMPLE_CASES])
def test_config_mistakes(case, capsys, tmp_path, name, extra, expected):
    assert case(*extra) == 2
    assert expected in error_line(capsys)
    assert nothing_written(tmp_path)


def test_errors_past_the_plan_are_one_line_on_every_rank(case, capsys, monkeypatch):
    """The plan's checks fail alike on every rank: rank 0 speaks for all. Past the plan a rank can
    fail alone (its own data or checkpoint file), so a rank other than 0 names itself in its line.
    (`train` stands in for such a failure: no real one is rank-specific on demand.)"""
    import mtds.train.run
    from mtds.errors import ConfigError

    monkeypatch.setenv("RANK", "1")
    assert case("--training.train_iter=5") == 2
    assert capsys.readouterr().err == ""  # a plan error: said once, by rank 0

    def fail_alone(plan, log):
        raise ConfigError("data.paths: shard 3 unreadable")

    monkeypatch.setattr(mtds.train.run, "train", fail_alone)
    assert case() == 2
    assert error_line(capsys) == "error: rank 1: data.paths: shard 3 unreadable"


def test_missing_deepspeed_json(case, capsys, tmp_path):
    assert case(ds=str(tmp_path / "nope.json")) == 2
    assert error_line(capsys) == f"error: {tmp_path}/nope.json: DeepSpeed config not found (`mtds configs` lists the shipped ones)"


def test_invalid_deepspeed_json(case, capsys, tmp_path):
    assert case(ds=write(tmp_path, "bad.json", '{"train_micro_batch_size_per_gpu": 4,}')) == 2
    assert "bad.json: not valid JSON" in error_line(capsys)


def test_deepspeed_key_typo(case, capsys, tmp_path):
    ds = write(tmp_path, "typo.json", json.dumps({"train_micro_batch_size_per_gpu": 4, "gradient_clippping": 1.0}))
    assert case(ds=ds) == 2
    assert "unknown key 'gradient_clippping' (did you mean 'gradient_clipping'?)" in error_line(capsys)


def test_batch_sizes_that_do_not_divide(case, capsys, tmp_path):
    ds = write(tmp_path, "batch.json", json.dumps({"train_batch_size": 10, "gradient_accumulation_steps": 3}))
    assert case(ds=ds) == 2
    assert "train_batch_size=10 is not divisible by gradient_accumulation_steps=3 x data-parallel size 1" in error_line(capsys)


def test_dataset_prefix_that_does_not_exist(case, capsys, tmp_path, tiny_data):
    code = case("--data.paths", str(tmp_path / "absent_text_document"), "--data.tokenizer_model",
                tiny_data["tokenizer_model"], data=False)
    assert code == 2
    assert f"dataset prefix '{tmp_path}/absent_text_document' has no" in error_line(capsys)


def test_validation_prefix_that_does_not_exist(case, capsys, tmp_path):
    assert case(f"--data.valid_paths={tmp_path}/absent_text_document") == 2
    assert f"data.valid_paths: dataset prefix '{tmp_path}/absent_text_document' has no" in error_line(capsys)
    assert nothing_written(tmp_path)


def test_prefix_given_with_extension(case, capsys, tiny_data):
    assert case("--data.paths", tiny_data["prefix"] + ".bin", "--data.tokenizer_model",
                tiny_data["tokenizer_model"], data=False) == 2
    assert "(give the prefix without .bin/.idx)" in error_line(capsys)


@pytest.mark.parametrize("damage", ["truncate-bin", "truncate-idx", "mismatched"])
def test_damaged_bin_idx_pair(case, capsys, tmp_path, tiny_data, damage):
    prefix = copy_pair(tiny_data, tmp_path)
    if damage == "truncate-bin":
        os.truncate(prefix + ".bin", os.path.getsize(prefix + ".bin") - 10)
    elif damage == "truncate-idx":
        os.truncate(prefix + ".idx", os.path.getsize(prefix + ".idx") - 8)
    else:  # the .idx of another dataset beside this .bin
        shutil.copy(tiny_data["sentence_prefix"] + ".idx", prefix + ".idx")
    assert case("--data.paths", prefix, "--data.tokenizer_model", tiny_data["tokenizer_model"], data=False) == 2
    line = error_line(capsys)
    assert "truncated" in line or "disagree" in line or "not the matching" in line, line
    assert os.path.basename(prefix) in line


def test_data_built_with_another_tokenizer(case, capsys, tmp_path, tiny_data):
    import numpy as np

    prefix = copy_pair(tiny_data, tmp_path)
    data = np.memmap(prefix + ".bin", dtype=np.uint16, mode="r+")
    data[len(data) // 2] = 600  # an id the 512-piece tokenizer cannot produce
    data.flush()
    assert case("--data.paths", prefix, "--data.tokenizer_model", tiny_data["tokenizer_model"], data=False) == 2
    assert f"{prefix}.bin holds token id 600 but {tiny_data['tokenizer_model']} has only 512 pieces" in error_line(capsys)
    assert nothing_written(tmp_path)


def test_bert_on_document_level_data(case, capsys, tmp_path):
    """A sentence-pair objective (SOP, NSP) needs sentence-split data; refused before DeepSpeed starts."""
    assert case("--model.model_type=bert", "--model.position_embedding_type=learned_absolute") == 2
    assert "a sentence-pair objective needs sentence-split data" in error_line(capsys)
    assert nothing_written(tmp_path)


def test_tokenizer_that_is_not_sentencepiece(case, capsys, tmp_path, tiny_data):
    fake = write(tmp_path, "tok.model", "not a model")
    assert case("--data.paths", tiny_data["prefix"], "--data.tokenizer_model", fake, data=False) == 2
    assert f"error: {fake}: not a sentencepiece model" in error_line(capsys)


def test_load_dir_that_is_a_file(case, capsys, tmp_path):
    f = write(tmp_path, "ckpt", "x")
    assert case("--load", f) == 2
    assert error_line(capsys) == f"error: training.load={f!r} is a file; give the run directory to resume from"


def fake_checkpoint(run_dir, world_size: int, stage: int, bf16: bool = True) -> str:
    """A complete-looking checkpoint: all that is read before DeepSpeed starts is its config
    (bf16 like GOOD_DS: on a CPU without bf16 instructions such a checkpoint resumes in bf16)."""
    ckpt = run_dir / "checkpoints" / "iter_0000003"
    ckpt.mkdir(parents=True)
    ds = {"zero_optimization": {"stage": stage}, "bf16": {"enabled": bf16}}
    (ckpt / "mtds_config.json").write_text(json.dumps({"world_size": world_size, "deepspeed": ds}))
    (run_dir / "checkpoints" / "latest").write_text("iter_0000003")
    return str(ckpt)


def test_checkpoint_of_another_world_size_names_the_conversion(case, capsys, tmp_path):
    ckpt = fake_checkpoint(tmp_path / "old", world_size=2, stage=2)
    assert case("--load", str(tmp_path / "old")) == 2
    assert error_line(capsys) == (
        f"error: training.load: {ckpt} was saved by 2 data-parallel ranks and this run has 1, and ZeRO-2 partitions "
        f"the optimizer state per rank; convert it once with `python -m mtds.universal_checkpoint --load "
        f"{tmp_path / 'old'}` (it then resumes at any world size), or resume with 2 ranks")
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("saved_stage", [0, 3])
def test_checkpoint_of_another_zero_family_is_refused(case, capsys, tmp_path, saved_stage):
    ckpt = fake_checkpoint(tmp_path / "old", world_size=1, stage=saved_stage)
    assert case("--load", str(tmp_path / "old")) == 2  # GOOD_DS is ZeRO-2
    assert error_line(capsys) == (
        f"error: training.load: {ckpt} was saved with ZeRO stage {saved_stage} and this run uses stage 2; DeepSpeed "
        f"resumes only between stages 1 and 2, so set zero_optimization.stage={saved_stage} in the DeepSpeed JSON "
        "(or start a new run from exported weights)")
    assert nothing_written(tmp_path)


def test_checkpoint_of_another_precision_is_refused(case, capsys, tmp_path):
    """DeepSpeed's optimizer state (and its file names) differ between fp32 and bf16."""
    ckpt = fake_checkpoint(tmp_path / "old", world_size=1, stage=2, bf16=True)
    fp32 = os.path.join(ROOT, "ds_configs", "zero2_fp32.json")
    assert case("--load", str(tmp_path / "old"), ds=fp32) == 2
    assert error_line(capsys) == (
        f"error: training.load: {ckpt} was saved training in bf16 and this run trains in fp32; DeepSpeed's optimizer "
        "state differs between them, so train in bf16 in the DeepSpeed JSON (or start a new run with "
        "training.init_from)")
    assert nothing_written(tmp_path)


def test_a_bf16_checkpoint_resumes_in_bf16_on_a_cpu_that_would_train_fp32():
    """On a CPU without bf16 instructions a bf16 JSON trains in fp32 (mtds.ds_config); resuming a
    bf16 checkpoint there keeps bf16 rather than failing mid-load on fp32 file names."""
    from mtds.ckpt.resume import _keep_precision
    from mtds.ds_config import precision

    lines, ds = [], {"bf16": {"enabled": False}}
    _keep_precision("ck", {"bf16": {"enabled": True}}, ds, True, lines.append)
    assert precision(ds) == "bf16" and lines == [
        "note: ck was saved in bf16; resuming in bf16 although this CPU has no bf16 instructions (slow; start a "
        "new run to train in fp32 here)"]


def test_run_dir_that_is_a_file(tiny_data, capsys, tmp_path):
    f = write(tmp_path, "runfile", "keep me")
    assert main(["--deepspeed_config", GOOD_DS, "--run-dir", f]) == 2
    assert "is a file; choose a directory" in error_line(capsys)
    assert open(f).read() == "keep me"


def test_run_dir_that_cannot_be_written(capsys):
    # /proc refuses new entries even for root (a chmod'ed directory would not stop root).
    assert main(["--deepspeed_config", GOOD_DS, "--run-dir", "/proc/mtds-run"]) == 2
    assert "error: training.run_dir='/proc/mtds-run' is not writable" in error_line(capsys)


@pytest.mark.parametrize("content", [b"", b'{"text": ""}\n{"title": "x"}\n'], ids=["empty-file", "nothing-usable"])
def test_preprocess_of_an_empty_corpus(tiny_data, tmp_path, capsys, content):
    from data_tools import preprocess
    from data_tools.errors import run_cli

    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    rc = run_cli(preprocess.main, ["--input", str(path), "--output-prefix", str(tmp_path / "out"),
                                   "--tokenizer-model", tiny_data["tokenizer_model"], "--workers", "1", "--quiet"])
    assert rc == 2
    assert error_line(capsys).startswith(f"error: {path}: no usable documents in the input")
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]
