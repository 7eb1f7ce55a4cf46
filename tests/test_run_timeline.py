"""No run deletes or overwrites another: one run per run dir (a fresh run into one that holds
checkpoints is refused), one timeline per checkpoints folder (a rollback moves the newer tags aside,
so `keep_last` keeps the new saves and `latest` names them), and a resume keeps the order of the
training samples or is refused (mtds.ckpt.resume.order_changes, mtds.data.loader.order_probes).

No training run here: saves go through mtds.ckpt.save_load with a real DeepSpeed engine on a
4 x 4 linear layer, and the order checks run on records and on the tiny corpus's datasets."""

from __future__ import annotations

import copy
import json
import os

import pytest

from helpers import TINY_GPT, tiny_cfg, write_ds_config
from mtds.errors import ConfigError


# -- one timeline per checkpoints folder ---------------------------------------------------------
@pytest.fixture(scope="module")
def engine(world_of_one):
    """A DeepSpeed engine (ZeRO-0, torch Adam) on a 4 x 4 linear layer: what save() needs of one."""
    import deepspeed
    import torch

    cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "steps_per_print": 10**9,
           "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}}}
    had = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"  # what the launcher sets; DeepSpeed's engine asks for it
    try:
        engine, *_ = deepspeed.initialize(model=torch.nn.Linear(4, 4), config=cfg)
    finally:
        os.environ.pop("LOCAL_RANK") if had is None else os.environ.__setitem__("LOCAL_RANK", had)
    return engine


def save_at(engine, run_dir, iteration: int, keep_last: int = 2, log=print) -> str:
    from mtds.ckpt.save_load import save

    state = {"iteration": iteration, "consumed_samples": iteration, "consumed_tokens": iteration}
    return save(engine, str(run_dir), state, {"saved_at": iteration}, keep_last, log=log)


def tags(root) -> list[str]:
    return sorted(t for t in os.listdir(root) if t.startswith("iter_"))


def test_a_rollback_keeps_its_new_saves_moves_the_old_timeline_aside_and_the_next_load_resumes_the_new_one(
        engine, tmp_path):
    """The story of issue #23: resume from an older tag (training.load_tag) while newer ones exist,
    keep_last=2. Pruning by iteration once deleted the new save at once, with the tag resumed from,
    and `latest` named a deleted tag, so the next --load went back to the abandoned timeline."""
    from mtds.ckpt.layout import find, read_config
    from mtds.ckpt.save_load import start_timeline

    run, lines = tmp_path / "run", []
    root = run / "checkpoints"
    for it in (20, 25, 30):
        save_at(engine, run, it, keep_last=3)
    assert tags(root) == ["iter_0000020", "iter_0000025", "iter_0000030"]

    start_timeline(str(root / "iter_0000020"), str(run), lines.append)  # mtds.train.run, once the resume loaded
    assert lines == [f"note: resumed from iter_0000020, older than the run's newest checkpoint: iter_0000025, "
                     f"iter_0000030 moved to {root / 'abandoned'} (kept, never loaded: move them back to undo); "
                     "`latest` names iter_0000020 and then this run's saves (drop training.load_tag from a job that "
                     "may be requeued, or it rolls back again)"]
    assert tags(root) == ["iter_0000020"] and (root / "latest").read_text() == "iter_0000020"
    assert tags(root / "abandoned") == ["iter_0000025", "iter_0000030"]

    save_at(engine, run, 27)  # past an abandoned tag's iteration: that one is not this timeline's
    assert tags(root) == ["iter_0000020", "iter_0000027"] and (root / "latest").read_text() == "iter_0000027"
    for it in (29, 31):
        save_at(engine, run, it)
    assert tags(root) == ["iter_0000029", "iter_0000031"] and (root / "latest").read_text() == "iter_0000031"
    assert tags(root / "abandoned") == ["iter_0000025", "iter_0000030"]  # never pruned
    # The next --load (a requeued job) resumes the new timeline.
    assert find(str(run)) == str(root / "iter_0000031") and read_config(find(str(run)))["saved_at"] == 31


def test_a_save_moves_newer_tags_aside_and_a_second_rollback_keeps_both_abandoned_copies_of_a_tag(engine, tmp_path):
    """save() keeps `latest` the newest save by itself (a caller that did not start the timeline):
    tags newer than the save go aside; a name abandoned twice gets a suffix, nothing is replaced."""
    run = tmp_path / "run"
    root = run / "checkpoints"
    for it in (4, 6, 5, 6, 3):
        save_at(engine, run, it)
    assert sorted(os.listdir(root / "abandoned")) == ["iter_0000005", "iter_0000006", "iter_0000006.2"]
    assert tags(root) == ["iter_0000003"] and (root / "latest").read_text() == "iter_0000003"


# -- one run per run dir ---------------------------------------------------------------------------
def fake_checkpoint(run_dir, tag: str = "iter_0000060") -> None:
    """What marks a complete checkpoint (mtds.ckpt.layout): its mtds_config.json, under its final name."""
    ckpt = run_dir / "checkpoints" / tag
    ckpt.mkdir(parents=True)
    (ckpt / "mtds_config.json").write_text(json.dumps({"deepspeed": {"zero_optimization": {"stage": 2},
                                                                    "bf16": {"enabled": True}}}))
    (run_dir / "checkpoints" / "latest").write_text(tag)


def test_a_run_that_would_save_among_another_runs_checkpoints_is_refused_before_any_work(tiny_data, tmp_path, capsys):
    from mtds.pretrain import main

    run = tmp_path / "run"
    fake_checkpoint(run)
    before = sorted(os.listdir(run))
    ds = write_ds_config(str(tmp_path / "ds.json"))
    argv = ["--deepspeed_config", ds, "--run-dir", str(run), "--data.paths", tiny_data["prefix"],
            "--data.tokenizer_model", tiny_data["tokenizer_model"], *TINY_GPT]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: training.run_dir={str(run)!r} already holds a run's checkpoints (newest iter_0000060) and this run "
        f"starts from scratch, which would overwrite them; resume that run with --load {run}, or give this run "
        "another --run-dir"]
    assert sorted(os.listdir(run)) == sorted(before + [".lock"])  # no config.json, no events, nothing else

    other = tmp_path / "other"  # a resume from another run dir into this one: the same refusal
    fake_checkpoint(other, "iter_0000003")
    assert main([*argv, "--load", str(other), "--training.load_tag=iter_0000003"]) == 2
    err = capsys.readouterr().err
    assert f"and this run resumes from {other / 'checkpoints' / 'iter_0000003'}, which would overwrite them" in err


# -- resumes that keep the data order -------------------------------------------------------------
def record(iters: int = 100, batch: int = 8, probes: dict | None = None, **data) -> dict:
    """A saved-run record with what the order check reads."""
    from mtds.config import resolved_dict

    if "paths" in data:
        data = {"tokenizer_model": "tok.model", **data}
    run = resolved_dict(tiny_cfg("gpt", data=data))
    return {"run": run, "deepspeed": {"train_batch_size": batch}, "train_iters": iters,
            **({"train_order": {"samples": iters * batch, "probes": probes}} if probes is not None else {})}


SAME = {"0": "a", "1": "b", "4": "c", "512": "d", "1024": "e"}  # probes of an 800-sample set (and 1024+ of more)
MOVED = {**SAME, "4": "x"}

# (name, saved record, this run's record, refused because of (None: allowed)) -- one per key
ORDER_CASES = [
    ("seed", record(), record(seed=7), "data.seed: 1234 -> 7 (every shuffle is drawn from it)"),
    ("seq_length", record(), record(seq_length=32), "sequence length: 64 -> 32 (samples are cut at it)"),
    ("seq_length-same-length", record(), record(seq_length=64), None),
    ("split", record(), record(split="90,10,0"), "data.split: '969,30,1' -> '90,10,0' (another set of training "
                                                "documents; validation documents may train)"),
    ("split-same-training-part", record(split="98,2,0"), record(split="98,1,1"), None),
    ("valid_paths", record(paths=["a"]), record(paths=["a"], valid_paths=["v"]),
     "data.valid_paths: [] -> ['v'] (the training documents"),
    ("weights", record(paths=["a", "b"], weights=[1, 1]), record(paths=["a", "b"], weights=[1, 3]),
     "data.weights: [1.0, 1.0] -> [1.0, 3.0] (the blend's order)"),
    ("weights-same-ratio", record(paths=["a", "b"], weights=[1, 1]), record(paths=["a", "b"], weights=[2, 2]), None),
    ("batch-same-samples", record(100, 8), record(50, 16), None),  # the same samples, grouped otherwise
    ("train_iters-order-kept", record(100, 8, SAME), record(200, 8, SAME), None),
    ("train_iters-order-moved", record(100, 8, SAME), record(200, 8, MOVED),
     "training set size 800 -> 1600 samples (train_iters x global batch: 100 x 8 -> 200 x 8): the dataset's "
     "shuffle depends on it (sample 4 differs)"),
    ("batch-order-moved", record(100, 8, SAME), record(100, 16, MOVED), "sample 4 differs"),
    ("train_iters-probes-past-the-old-end", record(100, 8, SAME), record(200, 8, {**SAME, "1024": "z"}), None),
    ("train_iters-no-probes-saved", record(100, 8), record(200, 8, SAME),
     "the checkpoint has no samples of its order to compare with (saved before mtds recorded them)"),
    ("train_iters-before-datasets", record(100, 8, SAME), record(200, 8), None),  # decided by the load's check
    ("harmless", record(), record(num_workers=4, allow_other_data=False), None),
]


@pytest.mark.parametrize("saved, current, refused", [c[1:] for c in ORDER_CASES], ids=[c[0] for c in ORDER_CASES])
def test_a_resume_that_changes_the_sample_order_is_refused_naming_the_key(saved, current, refused):
    from mtds.ckpt.resume import check_data_order

    notes = []
    if refused is None:
        check_data_order(saved, current, notes.append)
        assert not any("order differs" in n for n in notes)
        return
    with pytest.raises(ConfigError) as e:
        check_data_order(saved, current, notes.append)
    line = str(e.value)
    assert "\n" not in line and refused in line
    assert line.startswith("training.load: this config changes the order of the training samples after the "
                           "checkpoint, so some would repeat and some never be read: ")
    assert line.endswith("; keep the checkpoint's values, start a new run from its weights with --training.init_from "
                         "and another --run-dir (the data order and optimizer start fresh), or set "
                         "data.allow_other_data=true to resume in the new order")
    allowed = copy.deepcopy(current)
    allowed["run"]["data"]["allow_other_data"] = True
    check_data_order(saved, allowed, notes.append)
    assert notes[-1].startswith("note: the training samples' order differs from the checkpoint's (") and \
        notes[-1].endswith("; resuming in the new order (data.allow_other_data=true)")


def test_a_longer_run_keeps_the_order_checked_with_a_note(capsys):
    from mtds.ckpt.resume import check_compatible

    saved, current = record(100, 8, SAME), record(200, 8, SAME)
    for r in (saved, current):
        r["vocab_size"] = 512
    check_compatible(saved, current)
    out = capsys.readouterr().out
    assert ("note: training set size 800 -> 1600 samples (train_iters x global batch: 100 x 8 -> 200 x 8): the order "
            "of the first 800 samples is unchanged (compared)") in out


def test_order_probes_of_the_gpt_dataset_show_when_a_longer_run_keeps_its_order(tiny_data, world_of_one, tmp_path):
    """megatron-core's GPTDataset: within the epochs of the shorter set the order is kept; a set built
    for more epochs is shuffled anew (its document index spans all epochs), so the probes differ."""
    from mtds.data.loader import order_probes
    from mtds.train.plan import data_and_tokenizer
    from mtds.ckpt.resume import _first_difference

    cfg = tiny_cfg("gpt", data={"paths": [tiny_data["prefix"]], "tokenizer_model": tiny_data["tokenizer_model"],
                                "split": "90,10,0", "index_cache": False},
                   training={"run_dir": str(tmp_path)})
    sources, tokenizer = data_and_tokenizer(cfg)

    def probes(n):
        return order_probes(cfg.kind.task.build_datasets(cfg, sources, tokenizer, [n, 0, 0], 1)[0], n)

    short, longer = probes(64), probes(512)
    epoch = len(cfg.kind.task.build_datasets(cfg, sources, tokenizer, [1, 0, 0], 1)[0])  # one epoch's samples
    assert 512 < epoch
    assert set(short["probes"]) < set(longer["probes"]) and _first_difference(short, longer, 64) is None
    assert _first_difference(short, probes(3 * epoch), 64) is not None
