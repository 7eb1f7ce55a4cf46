"""Average the weights of several checkpoints into a new run dir (checkpoint averaging).

    python -m mtds.average --load RUN_DIR --tags iter_0000800 iter_0000900 iter_0001000 --out RUN_DIR_AVG
    python -m mtds.average --load RUN_DIR --last 3 --out RUN_DIR_AVG
    python -m mtds.average --tags runs/a:iter_0001000 runs/b:iter_0001000 --out runs/ab   # other runs' tags

Each member is verified against its manifest first (a damaged or unverified one is refused with one
line before any weight is read), and all must be the same network (every [model] key a resume must
keep, and the padded vocabulary). The weights averaged are what mtds.ckpt.consolidate reads: the fp32
master weights of ZeRO 1-3 checkpoints (DeepSpeed's zero_to_fp32), which is what a bf16 run trains;
ZeRO-0 keeps no master copy DeepSpeed can consolidate, so there the module weights are averaged
(fp32 runs: they are the master weights; bf16 runs: their bf16 weights, said on the first line).
The uniform mean is accumulated in float64 and rounded to fp32 once, so the mean of one checkpoint
with itself is that checkpoint bit for bit.

With `--ema` the members' moving averages of the weights (training.ema_decay, mtds/train/ema.py)
are averaged instead; `--ema --tags iter_N` alone makes that checkpoint's EMA a run dir.

The result is an ordinary run dir: a weights-only checkpoint tagged with the newest member's
iteration (mtds.ckpt.save_load.publish_weights, as mtds.import_hf writes one), its record the newest
member's with `averaged_from` (each member's run dir, tag, iteration and manifest hash) added, and
config.json beside it. mtds.evaluate, mtds.generate and mtds.export_hf load it like any run, and
`training.init_from` trains from it; it has no optimizer state to resume.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

from mtds.errors import LoadError
from mtds.tool_cli import run_tool


def members(load: str | None, tags: list[str] | None, last: int | None) -> list[str]:
    """The checkpoint dirs to average, from `--tags` (a tag of --load, or RUN_DIR:TAG) or `--last K`."""
    from mtds.ckpt.layout import TAG_RE, checkpoint_root, complete_tags
    from mtds.load_trained import find_checkpoint

    if last is not None:
        if last < 1:
            raise LoadError(f"--last {last}: give at least 1 checkpoint")
        find_checkpoint(load)  # one line if it is no run dir with a checkpoint
        root = checkpoint_root(load)
        have = complete_tags(root)
        if len(have) < last:
            raise LoadError(f"--last {last}: {root} holds {len(have)} complete checkpoint(s) ({', '.join(have)}); "
                            "average fewer, or keep more while training (training.keep_last)")
        return [os.path.join(root, t) for t in have[-last:]]
    out = []
    for entry in tags:
        run_dir, sep, tag = entry.rpartition(":")
        if not sep or not TAG_RE.match(tag):
            run_dir, tag = load, entry
        if run_dir is None:
            raise LoadError(f"--tags {entry}: name its run dir (RUN_DIR:{entry}) or give --load RUN_DIR")
        out.append(find_checkpoint(run_dir, tag))
    return out


def check_out_dir(out: str, ckpts: list[str]) -> None:
    """--out must be a new run dir: not one that holds checkpoints (a member's own included)."""
    from mtds.ckpt.layout import complete_tags

    if os.path.exists(out) and not os.path.isdir(out):
        raise LoadError(f"--out {out}: is a file; give a new run directory")
    held = complete_tags(os.path.join(out, "checkpoints"))
    if held:
        raise LoadError(f"--out {out}: already holds a run's checkpoints (newest {held[-1]}); "
                        "give a new run directory")
    for ckpt in ckpts:
        if os.path.realpath(os.path.dirname(os.path.dirname(ckpt))) == os.path.realpath(out):
            raise LoadError(f"--out {out}: is the run dir of {ckpt}; give a new run directory")


def verified(ckpt: str) -> str:
    """Check a member against its manifest (no weight read yet); returns the manifest's hash."""
    from mtds.ckpt import manifest

    try:
        if not manifest.verify(ckpt):
            raise LoadError(f"{ckpt}: no {manifest.MANIFEST_FILE} (saved before mtds wrote manifests), so its files "
                            "cannot be verified; leave it out of the average")
    except manifest.Damaged as e:
        raise LoadError(f"{e}; leave {os.path.basename(ckpt)} out of the average, or restore it from a copy") from None
    return manifest.hash_file(os.path.join(ckpt, manifest.MANIFEST_FILE))[manifest.HASH]


def check_same_network(records: dict[str, dict]) -> None:
    """Every member holds the first one's network: [model] keys a resume must keep, padded vocabulary."""
    from mtds.ckpt.resume import CHANGEABLE_MODEL_KEYS, differences
    from mtds.config import migrate

    (first, base), *rest = records.items()
    for ckpt, saved in rest:
        changed = differences(migrate(base["run"])["model"], migrate(saved["run"])["model"], "model",
                              allowed=CHANGEABLE_MODEL_KEYS)
        if base.get("vocab_size") != saved.get("vocab_size"):
            changed.append(f"padded vocabulary: {base.get('vocab_size')} -> {saved.get('vocab_size')}")
        if changed:
            raise LoadError(f"{ckpt}: another network than {first} ({'; '.join(changed[:4])}); average checkpoints "
                            "of one network")


def ema_weights(ckpt: str, saved: dict | None = None) -> dict:
    """The moving average of the weights a checkpoint holds (training.ema_decay, mtds/train/ema.py)."""
    import torch

    from mtds.train.ema import EMA_FILE

    path = os.path.join(ckpt, EMA_FILE)
    if not os.path.isfile(path):
        raise LoadError(f"{ckpt}: no {EMA_FILE} (trained without training.ema_decay); "
                        "average its weights without --ema")
    return torch.load(path, map_location="cpu", weights_only=True)["weights"]


def mean_state(ckpts: list[str], records: dict[str, dict], ema: bool = False) -> dict:
    """The uniform mean of the members' consolidated weights (or of their EMAs): float64 sums, one
    rounding to fp32."""
    import torch

    from mtds.ckpt.consolidate import consolidated_state_dict

    sums, first = {}, None
    for ckpt in ckpts:  # one member in memory at a time, beside the float64 sums
        state = ema_weights(ckpt) if ema else consolidated_state_dict(ckpt, records[ckpt])
        if first is None:
            first = {k: v for k, v in state.items() if not v.is_floating_point()}
            sums = {k: v.double() for k, v in state.items() if v.is_floating_point()}
            shapes = {k: v.shape for k, v in state.items()}
            continue
        differ = [f"{k}: {tuple(shapes[k])} -> {tuple(state[k].shape)}" for k in shapes
                  if k in state and state[k].shape != shapes[k]]
        differ += [f"{k}: only in {ckpts[0]}" for k in shapes.keys() - state.keys()]
        differ += [f"{k}: not in {ckpts[0]}" for k in state.keys() - shapes.keys()]
        if differ:
            raise LoadError(f"{ckpt}: its tensors differ from {ckpts[0]}'s ({'; '.join(sorted(differ)[:3])}); "
                            "average checkpoints of one network")
        for k, v in state.items():
            if k in sums:
                sums[k] += v.double()
            elif not torch.equal(v, first[k]):
                raise LoadError(f"{ckpt}: integer tensor {k} differs from {ckpts[0]}'s and has no mean")
    return {**{k: (v / len(ckpts)).float() for k, v in sums.items()}, **first}


def average(load: str | None, tags: list[str] | None, last: int | None, out: str, log=print, ema: bool = False) -> str:
    """Average the members (their EMAs with `ema`) into a new run dir `out`; returns its checkpoint dir."""
    from mtds.ckpt.consolidate import weights_source
    from mtds.ckpt.layout import iteration_of, read_config
    from mtds.ckpt.save_load import publish_weights
    from mtds.ds_config import set_precision

    ckpts = members(load, tags, last)
    check_out_dir(out, ckpts)
    hashes = {ckpt: verified(ckpt) for ckpt in ckpts}  # every member, before any weight is read
    records = {ckpt: read_config(ckpt) for ckpt in ckpts}
    check_same_network(records)
    if ema:
        sources = sorted({f"EMA of the weights (training.ema_decay="
                          f"{records[c]['run']['training'].get('ema_decay')})" for c in ckpts})
    else:
        sources = sorted({weights_source(c, records[c]) for c in ckpts})
    log(f"average of {len(ckpts)} checkpoint(s): {' and '.join(sources)}")
    state = mean_state(ckpts, records, ema)
    newest = max(ckpts, key=lambda c: iteration_of(os.path.basename(c)))
    record = copy.deepcopy(records[newest])
    record.pop("train_order", None)  # the resume's order probes: a weights-only checkpoint resumes nothing
    record.pop("branched_from", None)
    set_precision(record["deepspeed"], "fp32")  # the weights are fp32, in ZeRO-0's layout, whatever trained them
    record["deepspeed"]["zero_optimization"] = {"stage": 0}
    data_parallel = int(record.get("parallel", {}).get("data", record.get("world_size", 1)))
    record["parallel"] = {"world": data_parallel, "tensor": 1, "data": data_parallel}  # shards merged
    record["run"]["model"].update(tensor_model_parallel_size=1, sequence_parallel=False)
    record["run"]["training"]["run_dir"] = out
    record["averaged_from"] = {
        "weights": sources, "mean": "uniform, float64 sums rounded to fp32",
        "members": [{"run_dir": os.path.abspath(os.path.dirname(os.path.dirname(c))), "tag": os.path.basename(c),
                     "iteration": iteration_of(os.path.basename(c)), "manifest_xxh3_128": hashes[c]} for c in ckpts]}
    os.makedirs(out, exist_ok=True)
    final = publish_weights(out, state, record, iteration=iteration_of(os.path.basename(newest)))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(record, f, indent=2)
    log(f"averaged {', '.join(os.path.basename(c) for c in ckpts)} -> {final}")
    return final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtds.average", description=__doc__.split("\n\n")[0])
    p.add_argument("--load", metavar="RUN_DIR", help="run directory whose checkpoints to average")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--tags", nargs="+", metavar="TAG",
                       help="checkpoint tags of --load (iter_0000040), or RUN_DIR:TAG of any run")
    which.add_argument("--last", type=int, metavar="K", help="the newest K complete checkpoints of --load")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="new run directory to write the average to")
    p.add_argument("--ema", action="store_true",
                   help="average the checkpoints' EMA of the weights (training.ema_decay) instead of their weights; "
                        "one tag: that checkpoint's EMA as a run dir")
    a = p.parse_args(argv)
    if a.last is not None and not a.load:
        p.error("--last needs --load RUN_DIR")
    final = average(a.load, a.tags, a.last, a.out, log=lambda line: print(line, file=sys.stderr), ema=a.ema)
    from mtds.ckpt.layout import read_config
    from mtds.kinds import KINDS

    kind, out = KINDS[read_config(final)["run"]["model"]["model_type"]], a.out
    commands = [f"python -m mtds.evaluate --load {out}"]
    if kind.task.next_token_logits is not None or kind.task.seq2seq_logits is not None:
        commands.insert(0, f'python -m mtds.generate --load {out} --prompt "..."')
    if kind.family.hf_architectures:
        commands.append(f"python -m mtds.export_hf --load {out} --out hf/{os.path.basename(os.path.normpath(out))}")
    for command in commands:
        print(f"next: {command}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
