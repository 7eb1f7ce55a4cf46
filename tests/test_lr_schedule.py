"""The LR schedule (mtds/train/lr_schedule.py): each shape against its closed form, written out here
independently, step by step; across a resume; its config errors; the shipped JSONs; and DeepSpeed's
engine stepping, saving and restoring it (DeepSpeed's own schedulers still work when named)."""

from __future__ import annotations

import glob
import math
import os

import pytest
import torch

from helpers import ROOT, tiny_cfg
from mtds.ds_config import load_ds_config, resolve_ds_config
from mtds.errors import ConfigError
from mtds.train.lr_schedule import Schedule, WarmupStableDecay, deepspeed_arguments, schedule_from_params

PEAKS = (1e-3, 5e-4)  # two param groups: each follows the schedule from its own peak


def cosine_reference(s, warmup, total, floor):
    """Linear warmup (step s at s/warmup of the peak), then cosine from the peak to `floor` at the last step."""
    if s <= warmup:
        return s / warmup
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s - warmup, total - warmup) / (total - warmup)))


def linear_reference(s, warmup, total, floor):
    if s <= warmup:
        return s / warmup
    return floor + (1 - floor) * (1 - min(s - warmup, total - warmup) / (total - warmup))


def wsd_reference(s, warmup, total, decay, shape, floor):
    """Warmup, constant until `decay` steps remain, then `shape` down to `floor` at the last step."""
    if s <= warmup:
        return s / warmup
    if s <= total - decay:
        return 1.0
    p = min(1.0, (s - (total - decay)) / decay)
    f = {"cosine": 0.5 * (1 + math.cos(math.pi * p)), "linear": 1 - p, "1-sqrt": 1 - math.sqrt(p)}[shape]
    return floor + (1 - floor) * f


# (params of the DeepSpeed JSON's scheduler block, reference factor of step s); total 40 steps
CASES = {
    "warmup-cosine": ({"warmup_num_steps": 8, "total_num_steps": 40, "min_lr_ratio": 0.1},
                      lambda s: cosine_reference(s, 8, 40, 0.1)),
    "warmup-linear": ({"warmup_num_steps": 8, "total_num_steps": 40, "decay_style": "linear"},
                      lambda s: linear_reference(s, 8, 40, 0.0)),
    "wsd-linear-steps": ({"warmup_num_steps": 5, "total_num_steps": 40, "decay_style": "linear", "decay_num_steps": 10,
                          "min_lr_ratio": 0.05}, lambda s: wsd_reference(s, 5, 40, 10, "linear", 0.05)),
    "wsd-cosine-steps": ({"warmup_num_steps": 5, "total_num_steps": 40, "decay_style": "cosine", "decay_num_steps": 12},
                         lambda s: wsd_reference(s, 5, 40, 12, "cosine", 0.0)),
    "wsd-1-sqrt-steps": ({"warmup_num_steps": 5, "total_num_steps": 40, "decay_style": "1-sqrt", "decay_num_steps": 7},
                         lambda s: wsd_reference(s, 5, 40, 7, "1-sqrt", 0.0)),
    "wsd-1-sqrt-fraction": ({"warmup_num_steps": 4, "total_num_steps": 40, "decay_style": "1-sqrt",
                             "decay_fraction": 0.2, "min_lr_ratio": 0.1},
                            lambda s: wsd_reference(s, 4, 40, 8, "1-sqrt", 0.1)),
    "wsd-linear-fraction": ({"warmup_num_steps": 4, "total_num_steps": 40, "decay_style": "linear",
                             "decay_fraction": 0.25}, lambda s: wsd_reference(s, 4, 40, 10, "linear", 0.0)),
    "no-warmup-cosine": ({"total_num_steps": 40}, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, 40) / 40))),
}


def optimizer():
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.ones(2))], "lr": PEAKS[0]},
                            {"params": [torch.nn.Parameter(torch.ones(2))], "lr": PEAKS[1]}])


def scheduler(params):
    return WarmupStableDecay(optimizer(), schedule_from_params(params, "ds.json"))


def used_lrs(sched, steps) -> list[list[float]]:
    """The LR of each param group at each of `steps` optimizer steps, read as the optimizer applies it."""
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in sched.optimizer.param_groups])
        sched.optimizer.step()
        sched.step()
    return out


@pytest.mark.parametrize("name", CASES)
def test_each_schedule_follows_its_closed_form_from_step_one(name):
    params, reference = CASES[name]
    got = used_lrs(scheduler(params), 43)  # three steps past the end: held at the floor
    for s, lrs in enumerate(got, start=1):
        assert lrs == pytest.approx([peak * reference(s) for peak in PEAKS], rel=1e-12, abs=1e-15), (name, s)
    assert got[0][0] > 0  # no step at LR 0
    if params.get("warmup_num_steps"):
        assert got[params["warmup_num_steps"] - 1][0] == pytest.approx(PEAKS[0])  # the peak at the last warmup step


@pytest.mark.parametrize("name", CASES)
def test_a_resumed_schedule_continues_with_the_same_lrs(name):
    params, _ = CASES[name]
    straight = used_lrs(scheduler(params), 40)
    for stop in (3, 8, 20, 33, 39):  # in warmup, at its end, stable, decaying, the last step
        first = scheduler(params)
        used_lrs(first, stop)
        state = first.state_dict()
        resumed = scheduler(params)
        resumed.load_state_dict(state)
        assert used_lrs(resumed, 40 - stop) == straight[stop:], (name, stop)


def test_the_optimizers_saved_lr_does_not_override_the_schedule_after_a_load():
    """DeepSpeed restores the optimizer (its saved LR with it) after the scheduler; a run resumed with
    another schedule (a longer train_iters) still takes this run's LR at its first step."""
    short = {"warmup_num_steps": 2, "total_num_steps": 10, "decay_style": "linear"}
    first = scheduler(short)
    used_lrs(first, 6)
    longer = scheduler({**short, "total_num_steps": 20})
    notes = []
    longer.log = notes.append
    longer.load_state_dict(first.state_dict())
    longer.optimizer.load_state_dict(first.optimizer.state_dict())  # lr of step 7 under the short schedule
    assert [g["lr"] for g in longer.optimizer.param_groups] == [p * linear_reference(7, 2, 20, 0) for p in PEAKS]
    assert notes == ["note: the LR schedule differs from the checkpoint's; continuing at step 7 of this run's: "
                     "linear warmup 2 steps to 0.001, linear decay to 0 over steps 3-20"]


def test_the_schedule_line_names_a_one_step_decay_as_one_step():
    assert Schedule(1, 3, 1, "linear", 0.1).describe(1e-3) == ("linear warmup 1 steps to 0.001, constant to step 2, "
                                                               "linear decay to 0.0001 over step 3")


def resolve(scheduler_block, iters=100):
    raw = {"train_micro_batch_size_per_gpu": 1, "scheduler": scheduler_block}
    return resolve_ds_config(raw, "ds.json", 1, iters, False, log=lambda *_: None)


def test_total_steps_auto_is_the_run_length_and_the_decay_fraction_is_rounded():
    cfg = resolve({"type": "WarmupStableDecay", "params": {"warmup_num_steps": 10, "decay_fraction": 0.1}}, iters=333)
    assert cfg["scheduler"]["params"]["total_num_steps"] == 333
    assert schedule_from_params(cfg["scheduler"]["params"], "ds.json").decay_steps == 33


@pytest.mark.parametrize("params, message", [
    ({"warmup_steps": 10}, "ds.json: scheduler.params.warmup_steps is not a WarmupStableDecay parameter (did you mean "
                           "'warmup_num_steps'? it takes warmup_num_steps, total_num_steps, decay_style, decay_num_steps, "
                           "decay_fraction, min_lr_ratio)"),
    ({"warmup_num_steps": 100}, "ds.json: scheduler warmup_num_steps=100 >= total_num_steps=100; shorten the warmup or "
                                "train longer"),
    ({"warmup_num_steps": -1}, "ds.json: scheduler.params.warmup_num_steps=-1 must be an integer >= 0"),
    ({"decay_style": "exponential"}, "ds.json: scheduler.params.decay_style='exponential' is not one of cosine, linear, "
                                     "1-sqrt"),
    ({"decay_num_steps": 10, "decay_fraction": 0.1}, "ds.json: scheduler.params has both decay_num_steps and "
                                                     "decay_fraction; give one"),
    ({"decay_fraction": 1.5}, "ds.json: scheduler.params.decay_fraction=1.5 must be in (0, 1]: the share of "
                              "total_num_steps that decays"),
    ({"decay_fraction": 0.001}, "ds.json: scheduler.params.decay_fraction=0.001 of 100 steps is no step; raise it or "
                                "give decay_num_steps"),
    ({"warmup_num_steps": 10, "decay_num_steps": 95}, "ds.json: scheduler.params.decay_num_steps=95 makes 95 decay "
                                                      "steps, more than the 90 after warmup_num_steps=10 "
                                                      "(total_num_steps=100); shorten the decay or the warmup"),
    ({"min_lr_ratio": 2}, "ds.json: scheduler.params.min_lr_ratio=2 must be between 0 and 1 (the floor as a fraction "
                          "of the optimizer's lr)"),
    ({"total_num_steps": "all"}, "ds.json: scheduler.params.total_num_steps='all' must be an integer >= 1"),
], ids=["typo", "warmup-too-long", "negative", "style", "both-lengths", "fraction-range", "fraction-zero",
        "decay-too-long", "floor", "total"])
def test_bad_schedule_params_are_one_line_naming_file_and_key(params, message):
    with pytest.raises(ConfigError) as e:
        resolve({"type": "WarmupStableDecay", "params": params})
    assert str(e.value) == message


def test_shipped_configs_warm_up_linearly_with_no_step_at_lr_zero():
    """A user following the README gets mtds's schedule: step 1 at peak/warmup, not DeepSpeed's 0."""
    for path in glob.glob(os.path.join(ROOT, "ds_configs", "*.json")):
        cfg = resolve_ds_config(load_ds_config(path), path, 1, 10_000, False, log=lambda *_: None)
        assert cfg["scheduler"]["type"] == "WarmupStableDecay", path
        schedule = schedule_from_params(cfg["scheduler"]["params"], path)
        assert schedule.factor(1) == 1 / schedule.warmup_steps and schedule.factor(schedule.warmup_steps) == 1, path
        for_deepspeed, factory = deepspeed_arguments(cfg)
        assert "scheduler" not in for_deepspeed and "scheduler" in cfg and factory is not None  # DeepSpeed would refuse it


def engine_lrs(ds_cfg, steps, load_from=None, save_to=None) -> list[float]:
    """Build a tiny GPT engine from `ds_cfg` as a run does (mtds.train.engine), optionally load a
    checkpoint, and return the LR of each of `steps` optimizer steps (read before the step)."""
    from mtds.train.engine import build_engine

    cfg = tiny_cfg("gpt")
    engine = build_engine(cfg, cfg.kind, ds_cfg, 512, False, log=lambda *_: None)[0]
    if load_from:
        engine.load_checkpoint(load_from, tag="t")
    ids = torch.randint(0, 512, (1, 16))
    lrs = []
    for _ in range(steps):
        lrs.append(engine.get_lr()[0])
        engine.backward(engine(ids, torch.arange(16)[None], None, labels=ids).mean())
        engine.step()
    if save_to:
        engine.save_checkpoint(save_to, tag="t")
    return lrs


@pytest.mark.parametrize("block, expected", [
    ({"type": "WarmupStableDecay", "params": {"warmup_num_steps": 2, "decay_num_steps": 3, "decay_style": "linear"}},
     [1e-3 * wsd_reference(s, 2, 8, 3, "linear", 0) for s in range(1, 9)]),
    # DeepSpeed's own type, named by the user: DeepSpeed's values (its first two steps at LR 0, the
    # peak one step after the warmup ends), saved and restored by DeepSpeed as before.
    ({"type": "WarmupCosineLR", "params": {"warmup_num_steps": 4, "warmup_type": "linear", "cos_min_ratio": 0.0}},
     [0.0, 0.0, 2.5e-4, 5e-4, 7.5e-4] + [1e-3 * 0.5 * (1 + math.cos(math.pi * p / 4)) for p in (1, 2, 3)]),
], ids=["mtds", "deepspeed"])
def test_deepspeeds_engine_steps_saves_and_restores_the_schedule(world_of_one, monkeypatch, tmp_path, block, expected):
    monkeypatch.setenv("LOCAL_RANK", "0")  # what the launcher sets; DeepSpeed's engine asks for it
    raw = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 0}, "steps_per_print": 10**9,
           "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}}, "scheduler": block}
    ds_cfg = resolve_ds_config(raw, "ds.json", 1, 8, False, log=lambda *_: None)
    first = engine_lrs(ds_cfg, 5, save_to=str(tmp_path))
    rest = engine_lrs(ds_cfg, 3, load_from=str(tmp_path))
    assert first + rest == pytest.approx(expected, rel=1e-12, abs=1e-15)
