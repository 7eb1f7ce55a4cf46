"""Where checkpoints live and which one is the newest complete one. No torch, no DeepSpeed.

Layout under <run_dir>/checkpoints:
    iter_0000100/            a complete checkpoint (DeepSpeed shards + mtds_config.json + rng_rank*.pt)
    iter_0000200.tmp/        a save in progress (or killed mid-way): never loaded
    latest                   text file naming the newest complete tag (DeepSpeed's own format)
    abandoned/iter_0000300/  a checkpoint of an abandoned timeline: newer than the one a run was
                             rolled back to (training.load_tag), moved aside, never loaded or deleted

A tag is complete when its directory holds mtds_config.json and has its final name: a save is
renamed from `<tag>.tmp` only after every rank finished writing (see save_load.py). Training
resumes and the tools read checkpoints through `find` alone.

One timeline per folder: no complete tag is newer than the newest save. A run resumed from an older
tag moves the newer ones aside once it has loaded (`abandon_newer`, called by save_load), so `latest`
names the newest save, tag order is save order, and `keep_last` never deletes the saves of the
timeline the run is on.
"""

from __future__ import annotations

import json
import os
import re

TAG_RE = re.compile(r"^iter_(\d{7,})$")
CONFIG_FILE = "mtds_config.json"
LATEST_FILE = "latest"
ABANDONED_DIR = "abandoned"
MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's ZeRO-0 model file (rank 0 of TP 1)


def checkpoint_root(run_dir: str) -> str:
    """The checkpoints folder of a run dir; a path that is one already (holds `latest`) is kept."""
    return run_dir if os.path.isfile(os.path.join(run_dir, LATEST_FILE)) else os.path.join(run_dir, "checkpoints")


def tag_for(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def complete_tags(root: str) -> list[str]:
    """Published checkpoint tags under a checkpoints folder, oldest first."""
    if not os.path.isdir(root):
        return []
    tags = [t for t in os.listdir(root) if TAG_RE.match(t) and os.path.isfile(os.path.join(root, t, CONFIG_FILE))]
    return sorted(tags, key=lambda t: int(TAG_RE.match(t).group(1)))


def partial_saves(root: str) -> list[str]:
    """Directories of saves that did not finish (`<tag>.tmp`)."""
    return sorted(t for t in os.listdir(root) if t.endswith(".tmp")) if os.path.isdir(root) else []


def read_config(ckpt_dir: str) -> dict:
    """The resolved config a checkpoint was saved with (its mtds_config.json)."""
    with open(os.path.join(ckpt_dir, CONFIG_FILE)) as f:
        return json.load(f)


def find(run_dir: str, tag: str | None = None, log=None) -> str | None:
    """The checkpoint directory to load from a run dir (or its checkpoints folder), or None.

    `tag=None`: the tag `latest` names if that one is complete, else the newest complete one
    (a `latest` naming a partial save is skipped). A given tag must be complete. `log`, if given,
    hears about partial saves and a stale `latest`.
    """
    root = checkpoint_root(run_dir)
    tags = complete_tags(root)
    if tag is not None:
        return os.path.join(root, tag) if tag in tags else None
    if log:
        for t in partial_saves(root):
            log(f"warning: skipping partial checkpoint {os.path.join(root, t)} (a save did not finish)")
    latest_file = os.path.join(root, LATEST_FILE)
    if os.path.isfile(latest_file):
        with open(latest_file) as f:
            named = f.read().strip()
        if named in tags:
            return os.path.join(root, named)
        if log:
            log(f"warning: {latest_file} names {named!r}, which is not a complete checkpoint; "
                "using the newest complete one")
    return os.path.join(root, tags[-1]) if tags else None


def iteration_of(tag: str) -> int:
    return int(TAG_RE.match(tag).group(1))


def atomic_write(path: str, text: str) -> None:
    """Write `text` to `path` so a reader sees the old content or the new, never half."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_latest(root: str, tag: str) -> None:
    """Point `latest` at `tag` atomically."""
    atomic_write(os.path.join(root, LATEST_FILE), tag)


def newer_tags(root: str, tag: str) -> list[str]:
    """Complete tags under root of a higher iteration than `tag`, oldest first."""
    return [t for t in complete_tags(root) if iteration_of(t) > iteration_of(tag)]


def abandon_newer(root: str, tag: str) -> list[str]:
    """Move every complete checkpoint newer than `tag` into `<root>/abandoned/` and point `latest` at
    `tag`; returns the tags moved (oldest first), for the caller's log line.

    Why: a run resumed from an older tag (a rollback) starts a new timeline. Left in place, the newer
    tags of the old one would be kept by `keep_last` (which keeps the highest iterations) while the
    new saves were deleted, and `latest` would send the next resume back to the old timeline. Moved,
    never deleted: a rollback is undone by moving them back. A name taken in abandoned/ by an
    earlier rollback gets a suffix (`iter_0000300.2`).
    """
    newer = newer_tags(root, tag)
    if not newer:
        return []
    aside = os.path.join(root, ABANDONED_DIR)
    os.makedirs(aside, exist_ok=True)
    write_latest(root, tag)  # first: a kill mid-way must not leave `latest` naming a moved tag
    for t in newer:
        target, n = os.path.join(aside, t), 1
        while os.path.exists(target):
            n += 1
            target = os.path.join(aside, f"{t}.{n}")
        os.replace(os.path.join(root, t), target)
    return newer
