"""training.init_from: a run starts from another run's weights only (fine-tuning), from any ZeRO
stage and world size; a different network is refused before DeepSpeed starts."""

from __future__ import annotations

import json

import pytest

from helpers import ok, run_pretrain, scalars, tiny_gpt_args, write_ds_config


def args_for(tiny_data, run_dir, ds, *extra):
    return tiny_gpt_args(tiny_data, run_dir, ds, "--data.num_workers=0", *extra)


@pytest.mark.slow
def test_init_from_a_two_rank_zero3_run_starts_fresh_with_its_weights(tiny_data, tmp_path):
    """Source: 2 ranks, ZeRO-3, fp32. Target: 1 rank, ZeRO-2. The target's step-0 validation (the
    same 4 samples: 1 batch x 2 ranks there, 2 batches here) equals the source's last one, so the
    weights arrived; iteration, data position and LR schedule start from zero."""
    source, target = tmp_path / "source", tmp_path / "target"
    ok(run_pretrain(args_for(tiny_data, source, write_ds_config(str(tmp_path / "z3.json"), stage=3, micro=2,
                                                                precision="fp32", warmup=1),
                             "--training.train_iters=3", "--training.eval_interval=3", "--training.eval_iters=1"),
                    ranks=2))
    ds = write_ds_config(str(tmp_path / "z2.json"), stage=2, micro=2, precision="fp32", warmup=1)
    common = ["--training.eval_interval=100", "--training.eval_iters=2", f"--training.init_from={source}"]
    first = ok(run_pretrain(args_for(tiny_data, target, ds, "--training.train_iters=2", *common)))
    assert f"initialised from {source / 'checkpoints' / 'iter_0000003'}" in first.stdout
    assert "note: not in" not in first.stdout  # same network: nothing fresh
    src, tgt = scalars(str(source)), scalars(str(target))
    assert tgt["val/loss"][0][0] == 0
    assert tgt["val/loss"][0][1] == pytest.approx(src["val/loss"][-1][1], rel=1e-6)
    assert tgt["val/loss"][0][1] < src["val/loss"][0][1] - 0.02  # not a fresh model's loss (6.22 -> 6.14 measured)
    assert [s for s, _ in tgt["train/loss"]] == [1, 2]  # iteration starts at 0
    assert tgt["data/consumed_samples"][0][1] == 2  # and so does the data position
    assert tgt["train/lr"] == src["train/lr"][:2]  # a fresh schedule (same warmup), not the source's
    # A requeued job with both: resume wins once the run has a checkpoint.
    again = ok(run_pretrain(args_for(tiny_data, target, ds, "--training.train_iters=3", *common,
                                     "--load", str(target))))
    assert "resumed from" in again.stdout and "at iteration 2" in again.stdout and "initialised" not in again.stdout


def test_init_from_another_network_is_refused_before_deepspeed(tiny_data, tmp_path, capsys):
    from mtds.pretrain import main

    ckpt = tmp_path / "src" / "checkpoints" / "iter_0000004"
    ckpt.mkdir(parents=True)
    from mtds.config import build_config, resolved_dict

    run = resolved_dict(build_config({"model": {"preset": "none", "num_layers": 2, "hidden_size": 128,
                                                "num_attention_heads": 2, "max_position_embeddings": 64}}))
    (ckpt / "mtds_config.json").write_text(json.dumps({"run": run, "vocab_size": 512}))
    ds = write_ds_config(str(tmp_path / "ds.json"), precision="fp32")
    rc = main(args_for(tiny_data, tmp_path / "new", ds, f"--training.init_from={tmp_path / 'src'}"))
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: training.init_from={str(tmp_path / 'src')!r}: {ckpt} holds another network: "
                   "model.hidden_size: 128 -> 64")
    assert not (tmp_path / "new" / "checkpoints").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(args_for(tiny_data, tmp_path / "new", ds, f"--training.init_from={empty}")) == 2
    assert "no complete checkpoint under it" in capsys.readouterr().err
