"""Weights & Biases, optional (training.wandb_project): the scalars mtds/train/metrics.py writes to
TensorBoard, at the same iteration steps, into one W&B run per run dir, from rank 0 only.

One run dir, one W&B run: the run's id is kept in RUN_DIR/wandb_run_id, and a resume from this run
dir's checkpoint (a SLURM requeue, a restart by hand) continues that run (`resume="allow"`) instead
of starting another, as Megatron-LM and OLMo-core do. A run that starts from scratch starts a new W&B
run. W&B's own files go under RUN_DIR/wandb/; offline (air-gapped nodes) each process writes one
`offline-run-*` folder there with the same id, and `wandb sync RUN_DIR/wandb/offline-run-*` uploads
them, in order, into the one run.

W&B keeps a run's steps increasing: resumed online from a checkpoint older than the run's last logged
step (a crash after the last save, a training.load_tag rollback), the iterations up to that step go
to TensorBoard only (a note says so). W&B's rewind (`resume_from`) would replace them but is a private
preview and needs the server. W&B never stops training: if it fails mid-run (under SLURM the
time-limit SIGTERM reaches its service process too, which quits at once) a warning says so and the
run goes on without it; the rows the service had not yet written to its file (it writes every 15 s)
are missing from W&B.
"""

from __future__ import annotations

import importlib.util
import os

from mtds.errors import ConfigError

RUN_ID_FILE = "wandb_run_id"


def tokens_tag(tag: str) -> str | None:
    """The tag a scalar is also written under with consumed tokens as its step (`<group>_vs_tokens/<name>`):
    losses and downstream scores, the series runs of different batch sizes are compared by (mtds.plot);
    None for the rest. Here, torch-free, as TensorBoard's writer (mtds/train/metrics.py) shares it."""
    group, _, name = tag.partition("/")
    return f"{group}_vs_tokens/{name}" if "loss" in name or group == "downstream" else None
MODES = ("online", "offline", "disabled")


def check_installed(project: str | None) -> None:
    """A run that asks for W&B without the package is refused before any training work."""
    if project and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"training.wandb_project={project!r} needs the wandb package: pip install 'mtds-pretrain[wandb]' "
                          "(or pip install wandb), or leave training.wandb_project unset")


class WandbRun:
    """The W&B run of this process; every call is guarded (W&B failing must not stop training)."""

    def __init__(self, run, first_step: int, log):
        self.run, self.first_step, self.log = run, first_step, log

    def scalars(self, values: dict[str, float], iteration: int, tokens: int | None) -> None:
        if self.run is None or iteration < self.first_step:  # steps W&B would drop (it already has them)
            return
        row = dict(values)
        if tokens is not None:  # TensorBoard's <group>_vs_tokens/<name> series; their x-axis is tokens (start)
            row["data/consumed_tokens"] = float(tokens)
            for tag, value in values.items():
                if tokens_tag(tag):
                    row[tokens_tag(tag)] = value
        # step given: rows of one iteration (training, then validation) merge into one W&B step
        self._guarded(lambda: self.run.log(row, step=iteration))

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self._guarded(lambda: self.run.finish(exit_code=exit_code))
            self.run = None

    def _guarded(self, call) -> None:
        try:
            call()
        except Exception as e:  # noqa: BLE001 - any W&B failure: warn once, train on without it
            self.log(f"warning: W&B stopped ({type(e).__name__}: {e}); training goes on without it "
                     "(TensorBoard has every step)")
            self.run = None
            import wandb

            try:  # drop the broken service connection now, or W&B's exit hook prints its traceback
                wandb.teardown()
            except (Exception, SystemExit):  # noqa: BLE001 - it fails the same way; the hook is gone
                pass


def start(t, config: dict, resumed_at: int | None, log=print) -> WandbRun | None:
    """The W&B run of training config `t` (None when training.wandb_project is unset): the run dir's
    run continued when this run resumed (`resumed_at`: the checkpoint's iteration) from it, else a new
    one. `config`: the saved-run record (mtds/ckpt/run_record.py), shown as the W&B run's config."""
    if not t.wandb_project:
        return None
    import wandb

    id_file = os.path.join(t.run_dir, RUN_ID_FILE)
    run_id = None
    if resumed_at is not None and os.path.isfile(id_file):
        with open(id_file) as f:
            run_id = f.read().strip() or None
    try:
        run = wandb.init(project=t.wandb_project, entity=t.wandb_entity, id=run_id,
                         resume="allow" if run_id else None, mode=t.wandb_mode, dir=t.run_dir,
                         name=t.wandb_name or os.path.basename(os.path.normpath(t.run_dir)), tags=t.wandb_tags or None,
                         config={k: v for k, v in config.items() if k != "train_order"})  # the order probes: noise
    except Exception as e:  # noqa: BLE001 - no login, no network, a bad entity: one line
        raise ConfigError(f"training.wandb_project={t.wandb_project!r}: W&B could not start ({type(e).__name__}: {e}); "
                          "log in (wandb login) or run offline (WANDB_MODE=offline, then wandb sync RUN_DIR/wandb/"
                          "offline-run-*)") from None
    if run_id is None:
        from mtds.ckpt.layout import atomic_write

        atomic_write(id_file, run.id + "\n")
    first = 0
    if resumed_at is not None and run.starting_step > resumed_at + 1:  # online: the run already has later steps
        first = run.starting_step
        log(f"note: W&B run {run.id} already has steps up to {first - 1}; this run resumes at iteration {resumed_at}, "
            f"and W&B keeps a run's steps increasing: iterations {resumed_at + 1}-{first - 1} go to TensorBoard only")
    return WandbRun(run, first, log)
