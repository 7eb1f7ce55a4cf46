"""Verified checkpoints (mtds/ckpt/manifest.py): every save records its files' content hashes
before it is published; resume and the tools refuse a damaged file with one line naming it and the
earlier tag to use, and `keep_last` never lets a damaged checkpoint push out the good one before it.

One 2-rank run makes the checkpoints; each test damages its own copy of it."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from helpers import call, ok, run_pretrain, tiny_gpt_args, write_ds_config

pytestmark = pytest.mark.slow

SHARD = "zero_pp_rank_{}_mp_rank_00_optim_states.pt"
GO_BACK = "the previous complete checkpoint is iter_0000002: "


@pytest.fixture(scope="module")
def two_checkpoints(tiny_data, tmp_path_factory):
    """(run dir, DeepSpeed JSON): 2 ranks, ZeRO-2, fp32, checkpoints iter_0000002 and iter_0000004."""
    tmp = tmp_path_factory.mktemp("manifest")
    ds = write_ds_config(str(tmp / "ds.json"), stage=2, micro=2, precision="fp32")
    ok(run_pretrain(tiny_gpt_args(tiny_data, tmp / "run", ds, "--training.train_iters=4", "--training.save_interval=2",
                                  "--training.eval_interval=100", "--training.keep_last=2"), ranks=2))
    return tmp / "run", ds


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run", tmp_path / "run" / "checkpoints" / "iter_0000004"


def flip_bits(path) -> None:
    """XOR an exponent bit of ten consecutive fp32 values in the middle of the file (tensor data)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2 // 4 * 4
    for i in range(10):
        data[middle + 4 * i + 3] ^= 0x40
    path.write_bytes(bytes(data))


def resume_args(tiny_data, run, ds, *extra):
    return tiny_gpt_args(tiny_data, run, ds, "--training.train_iters=5", "--training.save_interval=5",
                         "--training.eval_interval=100", "--training.keep_last=2", "--load", str(run), *extra)


def test_every_file_of_every_rank_is_hashed_before_publishing(two_checkpoints):
    from mtds.ckpt import manifest

    run, _ = two_checkpoints
    for tag in ("iter_0000002", "iter_0000004"):
        ckpt = run / "checkpoints" / tag
        listed = json.loads((ckpt / "manifest.json").read_text())["files"]
        assert set(listed) == set(os.listdir(ckpt)) - {"manifest.json"}
        assert {SHARD.format(0), SHARD.format(1), "rng_rank1.pt", "mtds_config.json"} <= set(listed)
        assert all(entry["bytes"] == (ckpt / name).stat().st_size for name, entry in listed.items())
        assert manifest.verify(str(ckpt)) is True


def test_flipped_bits_stop_the_resume_with_one_line_and_the_earlier_tag_resumes_keeping_it(
        two_checkpoints, tiny_data, tmp_path):
    run, ds = two_checkpoints
    run, ckpt = copy_of(run, tmp_path)
    shard = ckpt / SHARD.format(1)  # rank 1 wrote it; rank 0 checks every rank's files
    flip_bits(shard)

    refused = run_pretrain(resume_args(tiny_data, run, ds), ranks=2)
    assert refused.returncode == 2, refused.stderr[-2000:]
    errors = [line for line in refused.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"error: {shard}: damaged: its content changed since it was saved (hash differs from "
                      f"manifest.json); {GO_BACK}resume from it with --training.load_tag=iter_0000002"], errors
    assert "Traceback" not in refused.stderr

    # With the flag it resumes there, a rollback: the newer (damaged) iter_0000004 is moved aside, kept,
    # and saving iter_0000005 with keep_last=2 keeps iter_0000002 (pruning once deleted it and kept 4).
    resumed = ok(run_pretrain(resume_args(tiny_data, run, ds, "--training.load_tag=iter_0000002"), ranks=2))
    assert f"resumed from {run / 'checkpoints' / 'iter_0000002'} at iteration 2" in resumed.stdout
    root = run / "checkpoints"
    assert (f"note: resumed from iter_0000002, older than the run's newest checkpoint: iter_0000004 moved to "
            f"{root / 'abandoned'} (kept, never loaded" in resumed.stdout)
    assert sorted(t for t in os.listdir(root) if t.startswith("iter_")) == ["iter_0000002", "iter_0000005"]
    assert os.listdir(root / "abandoned") == ["iter_0000004"] and (root / "abandoned/iter_0000004" / shard.name).is_file()
    assert (root / "latest").read_text() == "iter_0000005"
    # ... and a plain --load (a requeued job) resumes the new timeline
    from mtds.ckpt.resume import plan_resume

    assert plan_resume(str(run), 2, {"zero_optimization": {"stage": 2}}) == str(root / "iter_0000005")


def test_a_truncated_shard_is_the_same_one_line(two_checkpoints, tiny_data, tmp_path, capsys, monkeypatch):
    from mtds.pretrain import main

    run, ds = two_checkpoints
    run, ckpt = copy_of(run, tmp_path)
    shard = ckpt / SHARD.format(0)
    size = shard.stat().st_size
    os.truncate(shard, size - 1000)
    monkeypatch.setenv("WORLD_SIZE", "2")  # rank 0 of the 2-rank job, up to where it refuses
    rc = main(resume_args(tiny_data, run, ds))
    err = capsys.readouterr().err
    assert rc == 2
    assert err.splitlines() == [f"error: {shard}: truncated or changed: {size - 1000} bytes, {size} when saved; "
                                f"{GO_BACK}resume from it with --training.load_tag=iter_0000002"]


def test_generate_and_evaluate_refuse_a_damaged_checkpoint_naming_the_earlier_tag(two_checkpoints, tmp_path, capsys):
    from mtds import evaluate, generate

    run, ckpt = copy_of(two_checkpoints[0], tmp_path)
    shard = ckpt / SHARD.format(0)
    flip_bits(shard)
    for tool, extra in ((generate, ["--prompt", "def", "--max-new-tokens", "2"]), (evaluate, ["--no-progress"])):
        rc, _, err = call(tool.main, ["--load", str(run), *extra], capsys)
        assert rc == 2
        assert err.splitlines()[-1] == (f"error: {shard}: damaged: its content changed since it was saved (hash "
                                        f"differs from manifest.json); {GO_BACK}load it with --tag iter_0000002")


def test_a_checkpoint_saved_before_manifests_loads_with_a_note_and_one_of_this_version_without_one_is_refused(
        two_checkpoints, tmp_path, capsys):
    from mtds.ckpt.consolidate import consolidated_state_dict
    from mtds.ckpt.layout import read_config
    from mtds.errors import LoadError

    original = two_checkpoints[0] / "checkpoints" / "iter_0000004"
    _, ckpt = copy_of(two_checkpoints[0], tmp_path)
    (ckpt / "manifest.json").unlink()
    saved = read_config(str(ckpt))
    assert saved["manifest"] == "manifest.json"  # every save names its manifest in mtds_config.json
    with pytest.raises(LoadError) as e:
        consolidated_state_dict(str(ckpt), saved)
    assert str(e.value) == (f"{ckpt / 'manifest.json'}: missing, though this checkpoint was saved with one (its "
                            f"mtds_config.json names it): its files cannot be verified; the previous complete checkpoint is "
                            "iter_0000002: load it with --tag iter_0000002")

    _, ckpt = copy_of(two_checkpoints[0], tmp_path / "older")  # a fresh copy (a process checks a checkpoint once)
    (ckpt / "manifest.json").unlink()
    del saved["manifest"]  # as an mtds version before manifests saved it
    (ckpt / "mtds_config.json").write_text(json.dumps(saved))
    state = consolidated_state_dict(str(ckpt), saved)
    assert (f"note: {ckpt} has no manifest.json (saved before mtds wrote manifests): loading it unverified"
            in capsys.readouterr().err)
    expected = consolidated_state_dict(str(original), saved)
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


def test_files_the_manifest_does_not_list_are_named_and_a_pt_file_is_refused(two_checkpoints, tmp_path):
    """DeepSpeed finds its shard files by name pattern, so a .pt file copied in after the save could
    be loaded: refused. Another file (a note) is loaded past, with a warning naming it."""
    from mtds.ckpt.manifest import check_before_load
    from mtds.errors import LoadError

    _, ckpt = copy_of(two_checkpoints[0], tmp_path)
    (ckpt / "NOTES.txt").write_text("the run before the LR change")
    lines = []
    check_before_load(str(ckpt), None, lines.append)
    assert lines == [f"warning: {ckpt} holds 1 file(s) its manifest.json does not list, not written by the save and "
                     "not loaded: NOTES.txt"]

    _, ckpt = copy_of(two_checkpoints[0], tmp_path / "second")
    (ckpt / "mp_rank_01_model_states.pt").write_bytes((ckpt / "mp_rank_00_model_states.pt").read_bytes())
    with pytest.raises(LoadError) as e:
        check_before_load(str(ckpt), "resume from it with --training.load_tag={tag}")
    assert str(e.value) == (f"{ckpt / 'mp_rank_01_model_states.pt'}: not listed in manifest.json (not written by the "
                            "save; DeepSpeed finds shard files by name, so it could load it): mp_rank_01_model_states.pt; "
                            "move the unlisted .pt files out of the checkpoint; what the save wrote is all listed")
