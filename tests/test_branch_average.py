"""Cooldown branches (training.branch_from), checkpoint averaging (mtds.average) and the weights' EMA
(training.ema_decay), issue #27.

One training run for the whole module (`parent`: 1 rank, ZeRO-2, fp32, torch Adam, dropout 0.1,
gradient accumulation 2, warmup-stable-decay, an EMA of the weights; checkpoints iter_0000002 and
iter_0000004) and one 2-step branch of it; everything else runs in this process against their checkpoints (the refusals
end in the plan, before DeepSpeed starts)."""

from __future__ import annotations

import glob
import json
import shutil

import pytest
import torch

from helpers import call, ok, run_pretrain, scalars, tiny_gpt_args, write_ds_config
from test_checkpoint_manifest import flip_bits

# 4 steps: warmup 1, constant to step 2, linear decay over steps 3-4 to 0.1 x peak.
WSD = {"type": "WarmupStableDecay", "params": {"warmup_num_steps": 1, "decay_num_steps": 2, "decay_style": "linear",
                                              "min_lr_ratio": 0.1}}
TAG2, TAG4 = "iter_0000002", "iter_0000004"


def args_for(tiny_data, run_dir, ds, *extra):
    return tiny_gpt_args(tiny_data, run_dir, ds, "--training.train_iters=4", "--training.eval_interval=100",
                         "--model.hidden_dropout=0.1", "--model.attention_dropout=0.1", "--data.num_workers=0",
                         "--training.ema_decay=0.9", *extra)


@pytest.fixture(scope="module")
def parent(tiny_data, tmp_path_factory):
    """(run dir, DeepSpeed JSON) of the module's one training run (~12 s)."""
    tmp = tmp_path_factory.mktemp("branch_parent")
    ds = write_ds_config(str(tmp / "ds.json"), stage=2, micro=2, accum=2, precision="fp32", torch_adam=True,
                         scheduler=WSD)
    ok(run_pretrain(args_for(tiny_data, tmp / "run", ds, "--training.save_interval=2")))
    return tmp / "run", ds


def fp32_weights(ckpt) -> dict[str, torch.Tensor]:
    from mtds.ckpt.consolidate import consolidated_state_dict
    from mtds.ckpt.layout import read_config

    return consolidated_state_dict(str(ckpt), read_config(str(ckpt)))


def manifest_hash(ckpt) -> str:
    from mtds.ckpt.manifest import hash_file

    return hash_file(str(ckpt / "manifest.json"))["xxh3_128"]


# -- cooldown branches -------------------------------------------------------------------------
@pytest.mark.slow
def test_a_branch_with_the_parents_schedule_reproduces_its_next_steps_bitwise(parent, tiny_data, tmp_path):
    """The branch goes on from iter_0000002 with the parent's optimizer moments, LR-schedule step,
    data position, RNG streams and EMA of the weights: its steps 3-4 are the parent's own, the same
    floats, and it ends with the same weights and EMA. It records the parent's run dir, tag and
    manifest hash."""
    run, ds = parent
    branch = tmp_path / "branch"
    out = ok(run_pretrain(args_for(tiny_data, branch, ds, f"--training.branch_from={run}:{TAG2}")))
    assert f"branch of {run} at {TAG2}" in out.stdout and "at iteration 2, 8 samples consumed" in out.stdout
    theirs, ours = scalars(str(run)), scalars(str(branch))
    assert [s for s, _ in theirs["train/loss"]] == [1, 2, 3, 4]
    assert sorted(ours["train/loss"]) == sorted(theirs["train/loss"])[2:]  # bitwise
    assert sorted(ours["train/lr"]) == sorted(theirs["train/lr"])[2:]
    assert sorted(ours["data/consumed_samples"]) == sorted(theirs["data/consumed_samples"])[2:]
    a, b = fp32_weights(run / "checkpoints" / TAG4), fp32_weights(branch / "checkpoints" / TAG4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ema_a, ema_b = (torch.load(d / "checkpoints" / TAG4 / "ema.pt", weights_only=True) for d in (run, branch))
    assert ema_a["weights"].keys() == a.keys()
    assert all(torch.equal(ema_a["weights"][k], ema_b["weights"][k]) for k in a)  # the EMA resumed exactly
    assert not all(torch.equal(ema_a["weights"][k], a[k]) for k in a)
    expected = {"run_dir": str(run), "tag": TAG2, "iteration": 2,
                "manifest_xxh3_128": manifest_hash(run / "checkpoints" / TAG2), "train_samples": 16}
    from mtds.ckpt.layout import read_config

    assert json.loads((branch / "config.json").read_text())["branched_from"] == expected
    assert read_config(str(branch / "checkpoints" / TAG4))["branched_from"] == expected


def test_bad_branches_are_one_line_before_deepspeed(parent, tiny_data, tmp_path, capsys):
    """A damaged parent checkpoint (flipped bits in its optimizer shard), one without a manifest, a
    tag that is not there, the parent's own run dir, another network, a weights-only checkpoint:
    one line each, nothing saved."""
    from mtds.pretrain import main

    run, ds = parent
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    new = tmp_path / "new"

    def refused(value, *extra, run_dir=new) -> str:
        rc = main(args_for(tiny_data, run_dir, ds, f"--training.branch_from={value}", *extra))
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert not glob.glob(str(new / "checkpoints" / "iter_*"))
        return err[0]

    shard = next((copy / "checkpoints" / TAG4).glob("*optim_states.pt"))
    flip_bits(shard)
    assert refused(f"{copy}:{TAG4}") == (
        f"error: {shard}: damaged: its content changed since it was saved (hash differs from manifest.json); the "
        f"previous complete checkpoint is {TAG2}: branch from it with --training.branch_from={copy}:{TAG2}")
    value = f"{copy}:iter_0000003"
    assert refused(value) == (f"error: training.branch_from={value!r}: no complete checkpoint "
                              f"{copy / 'checkpoints' / 'iter_0000003'}; complete ones: {TAG2}, {TAG4}")
    assert "is this run's own run dir; a branch starts a new one" in refused(f"{copy}:{TAG2}", run_dir=copy)
    value = f"{run}:{TAG2}"
    assert refused(value, "--model.hidden_size=128") == (
        f"error: training.branch_from={value!r}: a branch trains its parent's network and objective, and this "
        "config changes model.hidden_size: 64 -> 128; drop those keys (or start from its weights with "
        "--training.init_from)")
    old = copy / "checkpoints" / TAG2  # as saved before mtds wrote manifests
    (old / "manifest.json").unlink()
    record = json.loads((old / "mtds_config.json").read_text())
    del record["manifest"]
    (old / "mtds_config.json").write_text(json.dumps(record))
    assert f"{old} has no manifest.json (saved before mtds wrote manifests)" in refused(f"{copy}:{TAG2}")
    rc, _, _ = call(average_main(), ["--load", str(run), "--tags", TAG2, "--out", str(tmp_path / "avg")], capsys)
    assert rc == 0
    assert "holds weights only (an average of checkpoints written by mtds.average)" in refused(tmp_path / "avg")


# -- checkpoint averaging ----------------------------------------------------------------------
def average_main():
    from mtds.average import main

    return main


def test_averaging_a_checkpoint_with_itself_returns_it_bit_for_bit(parent, tmp_path, capsys):
    run, _ = parent
    out = tmp_path / "avg"
    rc, _, err = call(average_main(), ["--load", str(run), "--tags", TAG2, TAG2, "--out", str(out)], capsys)
    assert rc == 0, err
    assert "average of 2 checkpoint(s): fp32 master weights (ZeRO-2 optimizer shards)" in err
    a, b = fp32_weights(run / "checkpoints" / TAG2), fp32_weights(out / "checkpoints" / TAG2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_averaging_two_checkpoints_is_the_mean_of_their_tensors_and_an_ordinary_run_dir(parent, tmp_path, capsys):
    """`--last 2` = iter_0000002 and iter_0000004: each tensor equals (a + b) / 2 in fp32 (one rounding
    either way); the result records its members and evaluates, generates and exports."""
    from mtds import evaluate, export_hf, generate
    from mtds.ckpt.layout import read_config

    run, _ = parent
    out = tmp_path / "avg"
    rc, _, err = call(average_main(), ["--load", str(run), "--last", "2", "--out", str(out)], capsys)
    assert rc == 0, err
    a, b = fp32_weights(run / "checkpoints" / TAG2), fp32_weights(run / "checkpoints" / TAG4)
    mean = fp32_weights(out / "checkpoints" / TAG4)
    assert mean.keys() == a.keys() and all(torch.equal(mean[k], (a[k] + b[k]) / 2) for k in a)
    assert any(not torch.equal(mean[k], b[k]) for k in a)
    members = read_config(str(out / "checkpoints" / TAG4))["averaged_from"]["members"]
    assert [(m["tag"], m["manifest_xxh3_128"]) for m in members] == [
        (t, manifest_hash(run / "checkpoints" / t)) for t in (TAG2, TAG4)]
    rc, stdout, err = call(evaluate.main, ["--load", str(out)], capsys)
    assert rc == 0 and "loss" in stdout, err
    rc, stdout, err = call(generate.main, ["--load", str(out), "--prompt", "def ", "--max-new-tokens", "4"], capsys)
    assert rc == 0 and stdout.startswith("def "), err
    rc, _, err = call(export_hf.main, ["--load", str(out), "--out", str(tmp_path / "hf")], capsys)
    assert rc == 0 and (tmp_path / "hf" / "model.safetensors").is_file(), err


def test_bad_averaging_inputs_are_one_line(parent, tmp_path, capsys):
    """A damaged member, an unverified one, another network, tensors of other shapes, an --out that
    holds checkpoints, more --last than there are, a missing tag: one line each, nothing written."""
    from mtds.ckpt.layout import read_config
    from mtds.ckpt.save_load import publish_weights

    run, _ = parent
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    out = tmp_path / "avg"

    def refused(*argv) -> str:
        rc, _, err = call(average_main(), [*argv, "--out", str(out)], capsys)
        errors = [line for line in err.strip().splitlines() if line.startswith("error:")]
        assert rc == 2 and len(errors) == 1 and err.strip().endswith(errors[0]), err
        assert not out.exists()
        return errors[0]

    shard = next((copy / "checkpoints" / TAG4).glob("*optim_states.pt"))
    flip_bits(shard)
    assert refused("--load", str(copy), "--last", "2") == (
        f"error: {shard}: damaged: its content changed since it was saved (hash differs from manifest.json); leave "
        f"{TAG4} out of the average, or restore it from a copy")
    old = tmp_path / "old" / "checkpoints" / TAG2  # saved before manifests (a copy this process never verified)
    shutil.copytree(run / "checkpoints" / TAG2, old)
    (old / "manifest.json").unlink()
    record = json.loads((old / "mtds_config.json").read_text())
    del record["manifest"]
    (old / "mtds_config.json").write_text(json.dumps(record))
    assert refused("--tags", f"{tmp_path / 'old'}:{TAG2}", f"{run}:{TAG4}") == (
        f"error: {old}: no manifest.json (saved before mtds wrote manifests), so its files cannot be verified; "
        "leave it out of the average")

    good = fp32_weights(run / "checkpoints" / TAG4)
    record = read_config(str(run / "checkpoints" / TAG4))
    record["deepspeed"]["zero_optimization"] = {"stage": 0}  # what publish_weights writes: ZeRO-0's layout
    wide = json.loads(json.dumps(record))
    wide["run"]["model"]["hidden_size"] = 128
    publish_weights(str(tmp_path / "wide"), good, wide, iteration=4)
    assert refused("--tags", f"{run}:{TAG4}", f"{tmp_path / 'wide'}:{TAG4}") == (
        f"error: {tmp_path / 'wide' / 'checkpoints' / TAG4}: another network than {run / 'checkpoints' / TAG4} "
        "(model.hidden_size: 64 -> 128); average checkpoints of one network")
    name = sorted(good)[0]
    cut = {**good, name: good[name][:1].clone()}
    publish_weights(str(tmp_path / "cut"), cut, record, iteration=4)
    line = refused("--tags", f"{run}:{TAG4}", f"{tmp_path / 'cut'}:{TAG4}")
    assert line.startswith(f"error: {tmp_path / 'cut' / 'checkpoints' / TAG4}: its tensors differ from ")
    assert name in line

    rc, _, err = call(average_main(), ["--load", str(run), "--last", "2", "--out", str(run)], capsys)
    assert rc == 2 and f"--out {run}: already holds a run's checkpoints (newest {TAG4})" in err
    assert refused("--load", str(run), "--last", "3").startswith(f"error: --last 3: {run / 'checkpoints'} holds 2 "
                                                                 f"complete checkpoint(s) ({TAG2}, {TAG4})")
    assert refused("--load", str(run), "--tags", "iter_0000003").startswith("error: --tag 'iter_0000003': no complete")


# -- the weights' EMA --------------------------------------------------------------------------
def test_the_ema_follows_its_closed_form():
    """Two updates from w0: 0.81 w0 + 0.09 w1 + 0.1 w2, per parameter; the saved weights hold
    every state-dict key (a tied weight under both of its names)."""
    from mtds.train.ema import WeightEMA

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    model.register_buffer("steps", torch.zeros(1))
    ws = [model.weight.detach().clone()]
    ema = WeightEMA(model, 0.9)
    for _ in range(2):
        with torch.no_grad():
            model.weight.add_(torch.randn(2, 3))
        ws.append(model.weight.detach().clone())
        ema.update()
    torch.testing.assert_close(ema.shadow["weight"], 0.81 * ws[0] + 0.09 * ws[1] + 0.1 * ws[2], rtol=0, atol=1e-6)
    assert set(ema.state_dict()["weights"]) == {"weight", "bias", "steps"}


def test_averaging_the_ema_makes_it_a_run_dir_and_bad_ema_settings_are_one_line(parent, tiny_data, tmp_path,
                                                                               capsys):
    from mtds.pretrain import main

    run, _ = parent
    out = tmp_path / "ema"
    rc, _, err = call(average_main(), ["--load", str(run), "--tags", TAG4, "--ema", "--out", str(out)], capsys)
    assert rc == 0 and "EMA of the weights (training.ema_decay=0.9)" in err, err
    saved = torch.load(run / "checkpoints" / TAG4 / "ema.pt", weights_only=True)["weights"]
    got = fp32_weights(out / "checkpoints" / TAG4)
    assert got.keys() == saved.keys() and all(torch.equal(got[k], saved[k]) for k in got)
    z3 = write_ds_config(str(tmp_path / "z3.json"), stage=3, micro=2, precision="fp32")
    assert main(args_for(tiny_data, tmp_path / "new", z3)) == 2
    assert capsys.readouterr().err.strip() == (
        "error: training.ema_decay=0.9 needs whole parameters on every rank: ZeRO stage 0-2 without tensor "
        "parallelism (this run: ZeRO 3, model.tensor_model_parallel_size=1)")
    assert main(args_for(tiny_data, tmp_path / "new", z3, "--training.ema_decay=1.5")) == 2
    assert "training.ema_decay=1.5: must be between 0 and 1" in capsys.readouterr().err
