"""data_tools.clean with its dedup on disk: shards, then one merge (clean --work-dir W).

    python -m data_tools.clean --input ... --output OUT --work-dir W [--shards N]   # every shard, then the merge
    python -m data_tools.clean --input ... --output OUT --work-dir W --shard I/N    # shard I only
    python -m data_tools.clean --input ... --output OUT --work-dir W --shards N --merge

(slurm/clean.sh runs the shards as a SLURM array job and the merge after them.) The input files, in
input order, are cut into N runs of consecutive files, so the shards' work in shard order is the
input order. A shard does the per-document work (normalize, filters, decontamination, MinHash) and
writes under W:
  shard_I.jsonl   the records no filter removed, normalized: the dedup candidates
  shard_I.where   FILE:LINE of each, one a line (for the manifest's samples)
  shard_I.sig     one fixed-size record of keys a candidate (data_tools.disk_dedup)
  shard_I.json    the marker, written last (renamed into place): the rules and input files it
                  cleaned, their hashes, and its counts. A rerun skips a shard whose marker names the
                  same rules, shard count, input and evaluation files (path, size, mtime), and redoes
                  any other.
The merge checks that every shard is done with these rules, decides exact and near duplicates
across all shards from the keys on disk (data_tools.disk_dedup: bounded memory, the same decisions
as the in-memory pass), and writes OUT and its manifest from the candidates. Shard and merge use
memory that does not grow with the corpus, beyond one byte a candidate (memory-mapped).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import orjson

from data_tools.clean_manifest import TOOL, Counts, manifest_path, write_json
from data_tools.clean_pass import Run, _open_output, _results, inputs_meta, rule_order, summary_line
from data_tools.disk_dedup import CHUNK, EXACT, SigWriter, dedup_flags, read_sig, sig_count
from data_tools.errors import DataToolsError
from data_tools.inputs import input_bytes, iter_records, resolve_inputs
from data_tools.io_utils import atomic_outputs
from data_tools.progress import Progress


def shard_inputs(inputs: list, i: int, n: int) -> list:
    """Shard i of n: the i-th of n runs of consecutive input files (as even as whole files allow)."""
    return inputs[i * len(inputs) // n:(i + 1) * len(inputs) // n]


def _paths(work_dir: str, i: int) -> dict[str, str]:
    stem = os.path.join(work_dir, f"shard_{i:05d}")
    return {k: f"{stem}.{k}" for k in ("jsonl", "where", "sig", "json")}


def _plan(run: Run, i: int, n: int) -> dict:
    """What a shard's work depends on; a marker naming anything else is stale."""
    stamp = lambda f: {"path": f.path, "bytes": os.path.getsize(f.path), "mtime_ns": os.stat(f.path).st_mtime_ns}
    evals = resolve_inputs(run.decontaminate) if run.decontaminate else []
    return {"tool": TOOL, "config": run.cfg.as_dict(), "text_key": run.text_key,
            "decontaminate": [stamp(f) for f in evals], "eval_key": run.eval_key, "shards": n, "shard": i,
            "files": [stamp(f) for f in shard_inputs(run.inputs, i, n)]}


def _marker(work_dir: str, run: Run, i: int, n: int) -> dict | None:
    """Shard i's marker when it is done with this plan, else None."""
    try:
        with open(_paths(work_dir, i)["json"], encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    plan = json.loads(json.dumps(_plan(run, i, n)))  # as the marker reads back (tuples as lists)
    return marker if {k: marker.get(k) for k in plan} == plan else None


def clean_shard(run: Run, work_dir: str, i: int, n: int) -> dict:
    """Shard i of n: the per-document work on its files; writes its candidates, keys and marker."""
    cfg, paths = run.cfg, _paths(work_dir, i)
    files = shard_inputs(run.inputs, i, n)
    eval_ngrams, decontam = run.eval_ngrams()
    counts = Counts(rule_order(cfg, bool(run.decontaminate)), cfg, shard=i)
    progress = Progress(f"clean shard {i}/{n}", input_bytes(files), run.quiet, run.log_interval)
    names = [paths["jsonl"], paths["where"], paths["sig"], paths["json"]]  # the marker renamed last
    results = None
    try:
        with atomic_outputs(names) as (tmp_jsonl, tmp_where, tmp_sig, tmp_marker):
            with open(tmp_jsonl, "wb") as out, open(tmp_where, "w", encoding="utf-8") as where, \
                    open(tmp_sig, "wb") as sig:
                keys = SigWriter(sig, cfg.minhash_bands, cfg.minhash_rows)
                results = _results(iter_records(files, None), run.workers, cfg, run.text_key, eval_ngrams)
                for chunk, processed in results:
                    lines, places = [], []
                    for d in processed:
                        if counts.take(d):
                            lines.append(orjson.dumps(d.record, default=str, option=orjson.OPT_APPEND_NEWLINE))
                            places.append(d.where.replace("\n", " ") + "\n")
                            keys.add(d.text, d.size, d.signature)
                    out.write(b"".join(lines))
                    where.write("".join(places))
                    keys.flush()
                    progress.update(chunk.path, chunk.input_pos, counts.docs["in"])
            marker = {**_plan(run, i, n), "inputs": inputs_meta(files), "decontamination": decontam,
                      "candidates": keys.count, "counts": counts.state()}
            write_json(tmp_marker, marker)
    finally:
        if results is not None:
            results.close()
        progress.close()
    if not run.quiet:
        print(f"clean: shard {i}/{n} done: {counts.docs['in']} documents, {keys.count} left for dedup "
              f"({paths['json']})", file=sys.stderr)
    return marker


def merge_shards(run: Run, work_dir: str, n: int, memory_mb: float) -> dict:
    """Dedup across every finished shard (keys on disk) and write the output and its manifest."""
    cfg = run.cfg
    markers = []
    for i in range(n):
        marker = _marker(work_dir, run, i, n)
        if marker is None:
            why = ("was cleaned with other rules or inputs" if os.path.exists(_paths(work_dir, i)["json"])
                   else "is not done")
            raise DataToolsError(f"clean --merge: shard {i}/{n} in {work_dir} {why}; run it (--shard {i}/{n}) "
                                 "with this command's rules and inputs first")
        markers.append(marker)
    counts = Counts(rule_order(cfg, bool(run.decontaminate)), cfg)
    for m in markers:
        counts.merge(m["counts"])
    counts.check_not_empty(run.inputs[0].path)
    run.print_threshold()  # before the dedup
    sigs = [_paths(work_dir, i)["sig"] for i in range(n)]
    if [sig_count(p, cfg.minhash_bands) for p in sigs] != [m["candidates"] for m in markers]:
        raise DataToolsError(f"clean --merge: the .sig files in {work_dir} do not hold what the markers count; "
                             "remove the work dir and rerun")
    flags = dedup_flags(sigs, os.path.join(work_dir, "dedup"), cfg.minhash_bands, cfg.exact_dedup, cfg.near_dedup,
                        memory_mb, run.quiet, run.log_interval)
    total = sum(os.path.getsize(_paths(work_dir, i)["jsonl"]) for i in range(n))
    progress = Progress("clean merge", total, run.quiet, run.log_interval)
    final = [run.output, manifest_path(run.output)]
    start, key = 0, run.text_key
    with atomic_outputs(final) as (tmp_out, tmp_manifest):
        with _open_output(tmp_out, run.output) as out:
            for i in range(n):
                counts.tallies.shard = i  # samples sort in shard order
                paths = _paths(work_dir, i)
                with open(paths["jsonl"], "rb") as cand, open(paths["where"], encoding="utf-8") as where:
                    count = markers[i]["candidates"]
                    for off in range(0, count, CHUNK):
                        rec = read_sig(paths["sig"], cfg.minhash_bands, off, min(CHUNK, count - off))
                        flag = np.asarray(flags[start + off:start + off + len(rec)]).tolist()
                        sizes, kept = rec["size"].tolist(), rec["kept_bytes"].tolist()
                        for j in range(len(rec)):  # line by line: a chunk's lines could be GBs
                            line, place = cand.readline(), where.readline().rstrip("\n")
                            if flag[j]:
                                rule = "exact_duplicate" if flag[j] & EXACT else "near_duplicate"
                                counts.remove(rule, place, lambda line=line: orjson.loads(line)[key], sizes[j])
                            else:
                                counts.keep(kept[j])
                                out.write(line)
                        progress.update(paths["jsonl"], cand.tell(), counts.docs["kept"])
                start += count
        inputs = [f for m in markers for f in m["inputs"]]
        manifest = run.manifest(inputs, tmp_out, counts, markers[0]["decontamination"], shards=n)
        write_json(tmp_manifest, manifest)
    progress.close()
    if not run.quiet:
        print(summary_line(manifest, final[1]), file=sys.stderr)
    return manifest


def run_on_disk(run: Run, work_dir: str, shards: int, shard: int | None, merge: bool, memory_mb: float) -> dict:
    """clean --work-dir: shard `shard` only, the merge only, or every unfinished shard then the merge."""
    if not 1 <= shards <= len(run.inputs):
        raise DataToolsError(f"--shards {shards}: between 1 and the {len(run.inputs)} input file(s) (a shard is a run "
                             "of whole files; split a large file first)")
    if shard is not None and not 0 <= shard < shards:
        raise DataToolsError(f"--shard {shard}/{shards}: the shard number must be 0..{shards - 1}")
    if shard is not None and merge:
        raise DataToolsError("--shard and --merge: one at a time (the merge runs after every shard)")
    os.makedirs(work_dir, exist_ok=True)
    for i in [shard] if shard is not None else [] if merge else range(shards):
        done = _marker(work_dir, run, i, shards)
        if done is not None:
            if not run.quiet:
                print(f"clean: shard {i}/{shards} done before ({_paths(work_dir, i)['json']}), skipped",
                      file=sys.stderr)
        else:
            done = clean_shard(run, work_dir, i, shards)
        if shard is not None:
            return done
    return merge_shards(run, work_dir, shards, memory_mb)
