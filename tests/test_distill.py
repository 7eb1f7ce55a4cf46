"""Knowledge distillation, issue #26 (training.teacher, mtds/train/distill.py).

One tiny teacher (2 x 64, trained 30 steps) and a smaller student (1 x 32): the loss against a plain
float64 reference on the same logits, a distilled run under ZeRO-3 and its exact resume, the same run on
two data-parallel ranks (the deepspeed launcher) at the same global batch, alpha = 0 against the plain
run, the zero-weights teacher refused by the first-batch check, and bad teachers refused with one line
before training."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch
from helpers import flags, ok, run_pretrain, scalars, tiny_gpt_args, write_ds_config

STUDENT = flags("model", {"num_layers": 1, "hidden_size": 32})


def test_distill_loss_equals_a_plain_reference():
    """KL(teacher || student) at T, times T^2, and the cross entropy, summed over the weighted positions,
    against float64 sums written out position by position."""
    from mtds.train.distill import distill_sums

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), 3 * torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    weights = torch.tensor([[1, 1, 0, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.float32)
    T = 2.0
    kd, ce, n = distill_sums(s, t, labels, weights, T)
    want_kd = want_ce = 0.0
    for b in range(2):
        for i in range(5):
            if weights[b, i]:
                ps = [math.exp(x / T) for x in s[b, i].double().tolist()]
                pt = [math.exp(x / T) for x in t[b, i].double().tolist()]
                ps, pt = [x / sum(ps) for x in ps], [x / sum(pt) for x in pt]
                want_kd += T * T * sum(q * math.log(q / p) for p, q in zip(ps, pt))
                z = s[b, i].double()
                want_ce += (torch.logsumexp(z, 0) - z[labels[b, i]]).item()
    assert n.item() == 7
    assert kd.item() == pytest.approx(want_kd, rel=1e-5) and ce.item() == pytest.approx(want_ce, rel=1e-5)
    same, _, _ = distill_sums(s, s, labels, weights, T)
    assert abs(same.item()) < 1e-5  # a student that is its teacher has nothing to learn from it


@pytest.fixture(scope="module")
def teacher(tiny_data, tmp_path_factory):
    """(teacher run dir, fp32 ZeRO-3 DeepSpeed JSON of the students): TINY_GPT trained 30 steps."""
    tmp = tmp_path_factory.mktemp("distill")
    ds = write_ds_config(str(tmp / "ds_teacher.json"), stage=2, micro=4, precision="fp32", lr=3e-3)
    ok(run_pretrain(tiny_gpt_args(tiny_data, tmp / "teacher", ds, "--training.train_iters=30",
                                  "--training.eval_interval=30")))
    students = write_ds_config(str(tmp / "ds.json"), stage=3, micro=2, precision="fp32", torch_adam=True)
    return tmp / "teacher", students


def student_args(tiny_data, run_dir, ds, teacher, *extra):
    return tiny_gpt_args(tiny_data, run_dir, ds, *STUDENT, "--training.train_iters=4", "--training.eval_interval=2",
                         f"--training.teacher={teacher}", *extra)


def losses(run_dir, tag="train/loss") -> dict[int, float]:
    return dict(scalars(str(run_dir))[tag])


EXTRA = ("--training.distill_alpha=0.5", "--training.distill_temperature=2")


@pytest.fixture(scope="module")
def straight(teacher, tiny_data, tmp_path_factory):
    """(run dir, stdout) of a distilled student, 1 rank x micro-batch 2, ZeRO-3, 4 steps, alpha 0.5, T 2."""
    teacher_dir, ds = teacher
    run_dir = tmp_path_factory.mktemp("distill_straight") / "straight"
    return run_dir, ok(run_pretrain(student_args(tiny_data, run_dir, ds, teacher_dir, *EXTRA))).stdout


def test_a_distilled_run_logs_both_parts_and_resumes_exactly(teacher, straight, tiny_data, tmp_path):
    """alpha 0.5, T 2 under ZeRO-3: train/loss = 0.5 kd + 0.5 lm_hard at every step, val/loss is the
    student's own next-token loss, the record names the teacher by its manifest hash; stopped at step 2
    and resumed, steps 3-4 equal the straight run's bit for bit."""
    from mtds.ckpt.manifest import hash_file

    teacher_dir, ds = teacher
    extra, (straight_dir, stdout) = EXTRA, straight
    assert f"teacher: {teacher_dir}/checkpoints/iter_0000030 (gpt, " in stdout
    s = scalars(str(straight_dir))
    for (step, loss), (_, kd), (_, hard) in zip(s["train/loss"], s["train/kd"], s["train/lm_hard"]):
        assert loss == pytest.approx(0.5 * kd + 0.5 * hard, rel=1e-5), step
    assert [k for k, _ in s["val/kd"]] == [0, 2, 4] and len(s["val/loss"]) == 3
    assert "val/lm_hard" not in s  # validation is the student's own loss (the engine's module in eval mode)
    record = json.loads((straight_dir / "checkpoints/iter_0000004/mtds_config.json").read_text())
    assert record["distilled_from"] == {
        "run_dir": str(teacher_dir), "tag": "iter_0000030", "alpha": 0.5, "temperature": 2.0,
        "manifest_xxh3_128": hash_file(str(teacher_dir / "checkpoints/iter_0000030/manifest.json"))["xxh3_128"]}

    ok(run_pretrain(student_args(tiny_data, tmp_path / "split", ds, teacher_dir, *extra,
                                 "--training.exit_interval=2")))
    ok(run_pretrain(student_args(tiny_data, tmp_path / "split", ds, teacher_dir, *extra,
                                 "--load", str(tmp_path / "split"))))
    want, got = losses(straight_dir), losses(tmp_path / "split")
    assert [got[i] for i in (3, 4)] == [want[i] for i in (3, 4)]


@pytest.mark.slow
def test_two_data_parallel_ranks_distill_as_one_at_the_same_global_batch(teacher, straight, tiny_data, tmp_path):
    """The straight run again on 2 ranks x micro-batch 1 (the deepspeed launcher, ZeRO-3: the student
    partitioned, the teacher whole on each rank): the same 2 samples per step, so the teacher check (its
    first micro-batch's loss, summed over the ranks) reads the same tokens and loss, and every step's
    per-token KD and hard losses, and the validation KD, are the 1-rank run's (fp32; the ranks' sums add
    in another order)."""
    teacher_dir, _ = teacher
    straight_dir, stdout = straight
    ds = write_ds_config(str(tmp_path / "ds_two.json"), stage=3, micro=1, precision="fp32", torch_adam=True)
    two = ok(run_pretrain(student_args(tiny_data, tmp_path / "two", ds, teacher_dir, *EXTRA), ranks=2))
    assert "world 2" in two.stdout and "ZeRO 3" in two.stdout

    def check(out: str) -> tuple[float, int]:
        found = re.findall(r"^teacher check: loss ([0-9.]+) on the first micro-batch's (\d+) tokens", out, re.M)
        assert len(found) == 1, out[-3000:]  # rank 0 logs it, once
        return float(found[0][0]), int(found[0][1])

    (loss_one, tokens_one), (loss_two, tokens_two) = check(stdout), check(two.stdout)
    assert tokens_two == tokens_one > 0 and loss_two == pytest.approx(loss_one, abs=1e-4)
    one, both = scalars(str(straight_dir)), scalars(str(tmp_path / "two"))
    for tag in ("train/loss", "train/kd", "train/lm_hard", "val/kd", "val/loss"):
        assert [step for step, _ in both[tag]] == [step for step, _ in one[tag]], tag
        assert [v for _, v in both[tag]] == [pytest.approx(v, rel=1e-5) for _, v in one[tag]], tag


def test_alpha_zero_is_the_plain_run(teacher, tiny_data, tmp_path):
    """With alpha 0 the teacher weighs nothing: the training losses are the run without a teacher's (fp32;
    the hard loss is computed from the logits here, by megatron-core's fused cross entropy there). With
    dropout on, so building the teacher (which draws initial weights) must leave the student's RNG as it was."""
    teacher_dir, ds = teacher
    dropout = "--model.hidden_dropout=0.1"
    ok(run_pretrain(student_args(tiny_data, tmp_path / "alpha0", ds, teacher_dir, "--training.distill_alpha=0",
                                 dropout)))
    plain = tiny_gpt_args(tiny_data, tmp_path / "plain", ds, *STUDENT, "--training.train_iters=4",
                          "--training.eval_interval=2", dropout)
    ok(run_pretrain(plain))
    want, got = losses(tmp_path / "plain"), losses(tmp_path / "alpha0")
    assert sorted(got) == [1, 2, 3, 4]
    assert [got[i] for i in got] == [pytest.approx(want[i], rel=1e-5) for i in got]


def test_bad_teachers_are_one_line(teacher, tiny_data, tmp_path, monkeypatch):
    """No such dir, another family, tensor parallelism, another vocabulary, a teacher whose weights are
    zeros: one line each; the first four before DeepSpeed starts."""
    from mtds.ckpt.consolidate import consolidated_state_dict
    from mtds.ckpt.layout import read_config
    from mtds.ckpt.save_load import publish_weights

    teacher_dir, ds = teacher

    def refused(name, teacher_value, *extra, env=None) -> str:
        proc = run_pretrain(student_args(tiny_data, tmp_path / name, ds, teacher_value, *extra), env=env)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
        assert not (tmp_path / name / "checkpoints").exists()
        return errors[0]

    assert refused("nodir", tmp_path / "nope") == (
        f"error: training.teacher='{tmp_path / 'nope'}': {tmp_path / 'nope'} is not a directory; give the run dir "
        "of a trained teacher")
    other = tmp_path / "bert_teacher"
    shutil.copytree(teacher_dir, other)
    saved = other / "checkpoints/iter_0000030/mtds_config.json"
    doc = json.loads(saved.read_text())
    doc["run"]["model"]["model_type"] = "bert"
    saved.write_text(json.dumps(doc))
    assert "is a 'bert' model and the student a 'gpt'; the teacher must be a causal model of the student's " \
           "family (gpt)" in refused("family", other)
    assert refused("tp", teacher_dir, "--model.tensor_model_parallel_size=2", env={"WORLD_SIZE": "2"}) == (
        "error: training.teacher: distillation with model.tensor_model_parallel_size=2 is not supported yet; train "
        "the student with tensor_model_parallel_size=1 (ZeRO 1-3 and data parallelism work)")
    assert "has a padded vocabulary of 512 and the student 1024" in refused(
        "vocab", teacher_dir, "--model.make_vocab_size_divisible_by=1024")
    ckpt = teacher_dir / "checkpoints/iter_0000030"
    zeros = {k: torch.zeros_like(v) for k, v in consolidated_state_dict(str(ckpt), read_config(str(ckpt))).items()}
    publish_weights(str(tmp_path / "zero_teacher"), zeros, read_config(str(ckpt)), iteration=30)
    proc = run_pretrain(student_args(tiny_data, tmp_path / "zero", ds, tmp_path / "zero_teacher"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "error: training.teacher: the teacher's loss on the first batch is 6.2383, no better than a uniform guess "
        "(ln 512 = 6.2383): its weights are not a trained model (zeros, or another vocabulary's); check the teacher "
        "run dir"), proc.stderr[-2000:]
