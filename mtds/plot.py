"""Plot runs' training and validation loss, and their downstream scores, against consumed tokens, as a PNG.

    python -m mtds.plot RUN_DIR [RUN_DIR ...] [--out loss.png] [--log-x] [--downstream bpb,acc]

Reads the TensorBoard events under RUN_DIR/tensorboard with TensorBoard's own reader
(`EventAccumulator`): the `train_vs_tokens/loss` and `val_vs_tokens/loss` scalars that
mtds.train.metrics writes with the consumed-token count as the step, so runs with different batch
sizes share one x axis. Several runs go on one figure, a colour each (the line training, the dots
validation), labelled by their directory names. Runs with in-loop downstream evals
(training.downstream_evals) get one more panel below per task and metric (`downstream_vs_tokens/<task>/<metric>`,
the same colours; `--downstream` picks the metrics, `--downstream none` leaves them out), so cooldown
branches' scores read side by side with their losses. A resumed run appends to the same directory; when a step was written
twice (a resumed run repeating steps after its last checkpoint) the later value wins.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

from mtds.tool_cli import LoadError, run_tool

TRAIN_TAG, VAL_TAG = "train_vs_tokens/loss", "val_vs_tokens/loss"
DOWNSTREAM_PREFIX = "downstream_vs_tokens/"  # + <task>/<metric> (mtds/train/downstream.py)
DOWNSTREAM_METRICS = ("acc", "acc_norm", "bpb")  # mtds.train.downstream.METRICS (that module imports torch)


def read_scalars(event_dir: str, tags: tuple[str, ...], prefix: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...] sorted by step} from every event file under event_dir: `tags`
    (always present, maybe empty) and, with `prefix`, every tag starting with it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, tuple[float, float]]] = {t: {} for t in tags}
    # One accumulator per event file: a resumed run writes a second file into the same dir.
    for path in sorted(glob.glob(os.path.join(event_dir, "**", "events.out.tfevents.*"), recursive=True)):
        acc = EventAccumulator(path, size_guidance={"scalars": 0})  # 0 = keep every point
        acc.Reload()
        available = set(acc.Tags().get("scalars", []))
        for tag in sorted(available):
            if prefix and tag.startswith(prefix):
                out.setdefault(tag, {})
        for tag in out:
            if tag in available:
                for e in acc.Scalars(tag):
                    # keep the most recently written value for a step
                    if e.step not in out[tag] or e.wall_time >= out[tag][e.step][0]:
                        out[tag][e.step] = (e.wall_time, e.value)
    return {t: sorted((s, v) for s, (_, v) in pts.items()) for t, pts in out.items()}


def run_series(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """The run's train and validation loss series; LoadError when it has none."""
    event_dir = os.path.join(run_dir, "tensorboard")
    if not os.path.isdir(run_dir):
        raise LoadError(f"{run_dir}: run directory not found")
    if not glob.glob(os.path.join(event_dir, "**", "events.out.tfevents.*"), recursive=True):
        raise LoadError(f"{event_dir}: no TensorBoard event files (has this run logged anything yet?)")
    series = read_scalars(event_dir, (TRAIN_TAG, VAL_TAG), DOWNSTREAM_PREFIX)
    if not series[TRAIN_TAG] and not series[VAL_TAG]:
        raise LoadError(f"{event_dir}: no {TRAIN_TAG} or {VAL_TAG} scalars yet (the first log interval writes them)")
    return series


def downstream_panels(runs: dict, metrics: list[str] | None) -> list[str]:
    """The `<task>/<metric>` of every downstream series any run has, sorted; only `metrics` when given."""
    found = {tag[len(DOWNSTREAM_PREFIX):] for series in runs.values() for tag, pts in series.items()
             if tag.startswith(DOWNSTREAM_PREFIX) and pts}
    return sorted(p for p in found if metrics is None or p.rsplit("/", 1)[1] in metrics)


def plot(run_dirs: str | list[str], out: str, log_x: bool = False,
         downstream: list[str] | None = None) -> dict[str, int]:
    """Write the PNG of one run or several; returns the number of points per curve kind, over all runs.
    `downstream`: the downstream metrics to draw (None: every one logged; []: none)."""
    run_dirs = [run_dirs] if isinstance(run_dirs, str) else list(run_dirs)
    runs = {d: run_series(d) for d in run_dirs}  # every run checked before anything is drawn
    names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    panels = downstream_panels(runs, downstream)

    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1 + len(panels), 1, figsize=(8, 5 + 2.5 * len(panels)), dpi=100, sharex=True,
                             height_ratios=[2] + [1] * len(panels), squeeze=False)
    ax, panel_axes = axes[0, 0], [a for (a,) in axes[1:]]
    one = len(runs) == 1
    for i, (name, series) in enumerate(zip(names, runs.values())):
        # one run: the default colours and plain labels; several: a colour per run, named
        for tag, label, style in ((TRAIN_TAG, "train", "-"), (VAL_TAG, "validation", "o-" if one else "o:")):
            if series[tag]:
                steps, values = zip(*series[tag])
                ax.plot(steps, values, style, label=label if one else f"{name} ({label})", markersize=4,
                        color=None if one else f"C{i}")
        for panel, pax in zip(panels, panel_axes):
            if series.get(DOWNSTREAM_PREFIX + panel):
                steps, values = zip(*series[DOWNSTREAM_PREFIX + panel])
                pax.plot(steps, values, "s-", label=name, markersize=4, color=f"C{i}")
    ax.set_ylabel("loss")
    ax.set_title(names[0] if one else "loss against consumed tokens")
    ax.legend()
    for panel, pax in zip(panels, panel_axes):
        pax.set_ylabel(panel.replace("/", "\n"))  # task, then metric
        pax.set_title(f"downstream {panel} (lower is better)" if panel.endswith("bpb") else f"downstream {panel}",
                      fontsize=9)
        if not one:
            pax.legend(fontsize=8)
    for a in [ax, *panel_axes]:
        a.grid(True, alpha=0.3)
        if log_x:
            a.set_xscale("symlog")
    (panel_axes[-1] if panel_axes else ax).set_xlabel("consumed tokens")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return {"train": sum(len(s[TRAIN_TAG]) for s in runs.values()), "val": sum(len(s[VAL_TAG]) for s in runs.values()),
            "downstream": sum(len(s.get(DOWNSTREAM_PREFIX + p, [])) for s in runs.values() for p in panels)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mtds.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directory a training run wrote (several: one figure, a colour each)")
    p.add_argument("--out", help="PNG to write (default: the first RUN_DIR's loss.png)")
    p.add_argument("--log-x", action="store_true", help="logarithmic token axis")
    p.add_argument("--downstream", metavar="METRICS",
                   help="downstream metrics to draw, comma-separated (acc, acc_norm, bpb), or none "
                        "(default: every one the runs logged)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    out = a.out or os.path.join(a.run_dirs[0], "loss.png")
    downstream = None if a.downstream is None else [m for m in a.downstream.split(",") if m and m != "none"]
    unknown = sorted(set(downstream or ()) - set(DOWNSTREAM_METRICS))
    if unknown:
        raise LoadError(f"--downstream {a.downstream}: no metric {', '.join(unknown)}; give some of "
                        f"{', '.join(DOWNSTREAM_METRICS)}, or none")
    counts = plot(a.run_dirs, out, a.log_x, downstream)
    runs = f" of {len(a.run_dirs)} runs" if len(a.run_dirs) > 1 else ""
    scores = f", {counts['downstream']} downstream scores" if counts["downstream"] else ""
    print(f"wrote {out} ({counts['train']} train and {counts['val']} validation points{scores}{runs})")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
