"""mtds's LR schedule: linear warmup, an optional constant (stable) phase, then a decay (cosine,
linear or 1-sqrt) to a floor. The DeepSpeed JSON names it `"scheduler": {"type": "WarmupStableDecay"}`.

Why mtds writes its own: DeepSpeed's WarmupLR / WarmupDecayLR / WarmupCosineLR run the first two
optimizer steps at their minimum LR (0 by default; they start at iteration -1, then 0, and both
`warmup_type`s give 0 there) and warm up logarithmically unless told otherwise, and DeepSpeed has no
warmup-stable-decay (WSD) schedule, which Megatron-LM, torchtitan and OLMo-core ship.

The closed form, for the s-th applied optimizer step (s = 1, 2, ...; a step DeepSpeed skips for
non-finite gradients does not advance it), peak LR eta (the optimizer's `lr`), W warmup steps,
T total steps, D decay steps and floor m (`min_lr_ratio`):

    s <= W:              eta * s / W                       (no step at LR 0)
    W < s <= T - D:      eta                               (stable; empty when D = T - W)
    T - D < s <= T:      eta * (m + (1 - m) * f(p)),  p = (s - (T - D)) / D
    s > T:               eta * m
    f(p) = (1 + cos(pi p)) / 2  (cosine),  1 - p  (linear),  1 - sqrt(p)  (1-sqrt)

D is `decay_num_steps`, or round(`decay_fraction` * T), or, given neither, T - W (no stable phase:
the classic warmup + cosine/linear decay). A resume continues the checkpoint's step count, but the
schedule comes from this run's JSON (the saved one is only compared, for a note), so a run resumed
with a longer `train_iters` re-plans its decay and says so; WSD's stable phase is what lets a run
be extended that way.

Torch-free: mtds.ds_config validates the JSON with it before torch is imported.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import asdict, dataclass

from mtds.errors import ConfigError

SCHEDULE_TYPE = "WarmupStableDecay"

# Decay shapes: progress p in [0, 1] through the decay -> fraction of the way from the floor to the peak.
DECAY_STYLES = {
    "cosine": lambda p: (1.0 + math.cos(math.pi * p)) / 2.0,
    "linear": lambda p: 1.0 - p,
    "1-sqrt": lambda p: 1.0 - math.sqrt(p),
}
PARAMS = ("warmup_num_steps", "total_num_steps", "decay_style", "decay_num_steps", "decay_fraction", "min_lr_ratio")


@dataclass(frozen=True)
class Schedule:
    """One WarmupStableDecay schedule, in steps; `factor(s)` times the peak LR is step s's LR."""

    warmup_steps: int
    total_steps: int
    decay_steps: int
    decay_style: str = "cosine"
    min_lr_ratio: float = 0.0

    def factor(self, step: int) -> float:
        """LR of the `step`-th optimizer step (1-based) as a fraction of the peak (module docstring)."""
        if step <= self.warmup_steps:
            return step / self.warmup_steps
        decay_start = self.total_steps - self.decay_steps
        if step <= decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / self.decay_steps)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * DECAY_STYLES[self.decay_style](progress)

    def describe(self, peak: float) -> str:
        """One line for the start of a run, e.g. 'linear warmup 30 steps to 0.001, cosine decay to
        0.0001 over steps 31-300'."""
        parts = [f"linear warmup {self.warmup_steps} steps to {peak:g}" if self.warmup_steps else f"{peak:g} from step 1"]
        decay_start = self.total_steps - self.decay_steps
        if decay_start > self.warmup_steps:
            parts.append(f"constant to step {decay_start}")
        if self.decay_steps:
            steps = f"step {self.total_steps}" if self.decay_steps == 1 else f"steps {decay_start + 1}-{self.total_steps}"
            parts.append(f"{self.decay_style} decay to {peak * self.min_lr_ratio:g} over {steps}")
        return ", ".join(parts)


def schedule_from_params(params: dict, path: str) -> Schedule:
    """The Schedule of a `scheduler.params` block whose `total_num_steps` is resolved, or a one-line
    ConfigError naming the file and the key."""
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{path}: scheduler.params.{key}={params[key]!r} {why}")

    def integer(key: str, default: int | None, least: int) -> int | None:
        value = params.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise bad(key, f"must be an integer >= {least}")
        return value

    def number(key: str, default: float | None) -> float | None:
        value = params.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise bad(key, "must be a number")
        return value

    for key in params:
        if key not in PARAMS:
            close = difflib.get_close_matches(key, PARAMS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{path}: scheduler.params.{key} is not a {SCHEDULE_TYPE} parameter ({hint}"
                              f"it takes {', '.join(PARAMS)})")
    warmup = integer("warmup_num_steps", 0, 0)
    total = integer("total_num_steps", None, 1)
    if total is None:
        raise ConfigError(f"{path}: scheduler.params.total_num_steps is missing; give a number or \"auto\"")
    if warmup >= total:
        raise ConfigError(f"{path}: scheduler warmup_num_steps={warmup} >= total_num_steps={total}; "
                          "shorten the warmup or train longer")
    style = params.get("decay_style", "cosine")
    if style not in DECAY_STYLES:
        raise bad("decay_style", f"is not one of {', '.join(DECAY_STYLES)}")
    floor = number("min_lr_ratio", 0.0)
    if not 0.0 <= floor <= 1.0:
        raise bad("min_lr_ratio", "must be between 0 and 1 (the floor as a fraction of the optimizer's lr)")
    if "decay_num_steps" in params and "decay_fraction" in params:
        raise ConfigError(f"{path}: scheduler.params has both decay_num_steps and decay_fraction; give one")
    decay = integer("decay_num_steps", None, 1)
    fraction = number("decay_fraction", None)
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise bad("decay_fraction", "must be in (0, 1]: the share of total_num_steps that decays")
        decay = round(fraction * total)
        if decay < 1:
            raise bad("decay_fraction", f"of {total} steps is no step; raise it or give decay_num_steps")
    if decay is None:
        decay = total - warmup
    elif decay > total - warmup:
        key = "decay_fraction" if fraction is not None else "decay_num_steps"
        raise bad(key, f"makes {decay} decay steps, more than the {total - warmup} after warmup_num_steps={warmup} "
                       f"(total_num_steps={total}); shorten the decay or the warmup")
    return Schedule(warmup, total, decay, style, float(floor))


class WarmupStableDecay:
    """The scheduler DeepSpeed steps: `deepspeed.initialize(lr_scheduler=...)` takes it (through
    `deepspeed_arguments`) and calls `step()` after every applied optimizer step; its checkpoints
    save and restore `state_dict()`. `optimizer` is a torch.optim.Optimizer (DeepSpeed hands over
    its basic optimizer); its param-group LRs at construction are the peaks (each group is scaled by
    the same factor), and from then on they always hold the LR of the next step."""

    def __init__(self, optimizer, schedule: Schedule, log=None):
        self.optimizer, self.schedule, self.log = optimizer, schedule, log
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.steps_done = 0
        self._apply()
        # DeepSpeed loads the optimizer's state (its saved LR with it) after this scheduler's, so the
        # schedule's LR is put back: the checkpoint's run may have had another schedule.
        optimizer.register_load_state_dict_post_hook(lambda _optimizer: self._apply())

    def lr_for_step(self, step: int) -> list[float]:
        """Each param group's LR at the `step`-th optimizer step (1-based)."""
        factor = self.schedule.factor(step)
        return [base * factor for base in self.base_lrs]

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.lr_for_step(self.steps_done + 1)):
            group["lr"] = lr

    def step(self) -> None:
        """One optimizer step was applied: set the LR of the next."""
        self.steps_done += 1
        self._apply()

    def get_lr(self) -> list[float]:
        """The LRs the next optimizer step uses."""
        return self.lr_for_step(self.steps_done + 1)

    get_last_lr = get_lr

    def state_dict(self) -> dict:
        return {"steps_done": self.steps_done, "schedule": asdict(self.schedule), "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        """Continue after the saved step count; the schedule itself stays the one this run configured."""
        self.steps_done = int(state["steps_done"])
        saved = state.get("schedule")
        if self.log is not None and (saved != asdict(self.schedule) or state.get("base_lrs") != self.base_lrs):
            self.log(f"note: the LR schedule differs from the checkpoint's; continuing at step {self.steps_done + 1} "
                     f"of this run's: {self.schedule.describe(self.base_lrs[0])}")
        self._apply()

    def describe(self) -> str:
        return self.schedule.describe(self.base_lrs[0])


def resolve_scheduler(sched: dict, path: str, train_iters: int | None) -> None:
    """Fill `total_num_steps: "auto"` of a WarmupStableDecay block in place and check its params."""
    params = sched.setdefault("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: scheduler.params must be an object")
    if params.get("total_num_steps", "auto") == "auto":
        if train_iters is None:
            raise ConfigError(f"{path}: scheduler.params.total_num_steps is 'auto' but the run length is unknown")
        params["total_num_steps"] = train_iters
    schedule_from_params(params, path)


def deepspeed_arguments(ds_cfg: dict, log=None) -> tuple[dict, object]:
    """(config, lr_scheduler) for `deepspeed.initialize`: a WarmupStableDecay block is taken out of
    the config DeepSpeed sees (it would refuse the type) and comes back as a scheduler factory;
    any other scheduler stays DeepSpeed's."""
    sched = ds_cfg.get("scheduler")
    if not isinstance(sched, dict) or sched.get("type") != SCHEDULE_TYPE:
        return ds_cfg, None
    schedule = schedule_from_params(sched.get("params", {}), "scheduler")
    config = copy.deepcopy(ds_cfg)
    del config["scheduler"]
    return config, lambda optimizer: WarmupStableDecay(optimizer, schedule, log=log)


def describe_scheduler(engine, ds_cfg: dict) -> str:
    """The start-of-run line naming the LR schedule."""
    scheduler = engine.lr_scheduler
    if isinstance(scheduler, WarmupStableDecay):
        return f"lr: {scheduler.describe()} ({SCHEDULE_TYPE})"
    sched = ds_cfg.get("scheduler")
    if not isinstance(sched, dict):
        return f"lr: constant {engine.get_lr()[0]:g} (no scheduler in the DeepSpeed JSON)"
    params = sched.get("params", {})
    line = f"lr: DeepSpeed's {sched.get('type')} {params}"
    if str(sched.get("type")).startswith("Warmup"):
        line += (f" ({params.get('warmup_type', 'log')} warmup; DeepSpeed's first two steps run at the warmup "
                 f"minimum; {SCHEDULE_TYPE} has no step at LR 0)")
    return line
