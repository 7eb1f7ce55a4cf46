"""Clean a corpus as MassiveText (Gopher) was cleaned, before `preprocess`.

    python -m data_tools.clean --input raw/ 'more/*.parquet' --output clean/corpus.jsonl \\
        [--text-key text] [--rules rules.toml] [--set min_words=20] [--off stop_words] [--off repetition]

Reads what preprocess reads (jsonl(.gz/.zst), parquet, Arrow, folders, quoted globs; through
data_tools.inputs) and, per document, in this order:
  1. normalize the text (data_tools.normalize: ftfy mojibake repair, NFC, line endings, control
     characters, trailing whitespace); a document left empty is removed ("empty");
  2. optionally C4's line filters (data_tools.c4_lines; --set c4_lines=true); Gopher's quality
     filters (data_tools.gopher_quality), then its repetition filters (data_tools.gopher_repetition):
     the first rule failed removes the document;
  3. with --decontaminate EVAL...: documents sharing a word 13-gram with the evaluation texts are
     removed ("contaminated"; data_tools.decontaminate), or listed in the manifest (report);
  4. exact dedup of what is left (data_tools.dedup): the first occurrence in input order is kept
     ("exact_duplicate");
  5. near dedup (data_tools.near_dedup): MinHash LSH over word 5-gram shingles, 14 bands x 8 rows
     (effective Jaccard threshold ~0.72, printed before the run); the first document of each
     cluster is kept ("near_duplicate").
The paper's order: quality and repetition filtering before document dedup, so a removed
document's copies are counted under the rule that removed it.

Writes the kept records as jsonl (`.jsonl`, or compressed by the output's name: `.jsonl.gz`,
`.jsonl.zst`): every field of the input record (parquet/Arrow columns as keys) with the text
field replaced by its normalized text; and OUTPUT.manifest.json (data_tools.clean_manifest):
the rules, content hashes of inputs and output, documents and bytes in/kept/removed per rule and
a seeded sample of removed documents per rule. Both are written under temp names and renamed when
complete; bad inputs and rules are one line each before any work, and nothing is written.
Lines that are not documents (bad JSON, no text field, ...) are skipped and counted, as preprocess
skips them.

Dedup needs every earlier document, so by default its indexes live in memory (~1.4 KB a kept
document). `--work-dir W` keeps the keys on disk instead and dedups them in bounded memory, with
the same result; the input files can then be cut into shards run anywhere (`--shard I/N`, a SLURM
array task: slurm/clean.sh) and merged (`--merge`): data_tools.clean_shards.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

import orjson

from data_tools.clean_config import CleanConfig, build_config
from data_tools.clean_manifest import Counts, manifest_path, write_json
from data_tools.clean_pass import OUTPUT_SUFFIXES, Run, _open_output, _results, inputs_meta, rule_order, summary_line
from data_tools.dedup import ExactDedup
from data_tools.errors import DataToolsError, run_cli
from data_tools.gopher_quality import words_splitter
from data_tools.inputs import check_inputs, input_bytes, iter_records, resolve_inputs
from data_tools.io_utils import atomic_outputs, check_output_prefix
from data_tools.near_dedup import NearDedup
from data_tools.progress import Progress


def _check_output(output: str, inputs) -> str:
    output = check_output_prefix(output)
    if not output.endswith(OUTPUT_SUFFIXES):
        raise DataToolsError(f"--output {output}: clean writes jsonl; name it .jsonl, .jsonl.gz or .jsonl.zst")
    real = os.path.realpath(output)
    for f in inputs:
        if os.path.realpath(f.path) in (real, os.path.realpath(manifest_path(output))):
            raise DataToolsError(f"--output {output}: is also an input; write the cleaned corpus elsewhere")
    return output


def check_run(input_paths, output, cfg: CleanConfig, text_key: str) -> tuple[list, str]:
    """The resolved inputs and the output, checked with what the rules need (one line each)."""
    bad = cfg.validate()
    if bad:
        raise DataToolsError("bad cleaning rules:\n  " + "\n  ".join(bad) if len(bad) > 1 else bad[0])
    inputs = resolve_inputs(input_paths)
    output = _check_output(os.fspath(output), inputs)
    check_inputs(inputs, [text_key])  # parquet/Arrow: a missing column is one line now
    try:
        words_splitter(cfg.word_splitter)("a b")
    except ImportError as e:
        raise DataToolsError(f"word_splitter={cfg.word_splitter}: {e}") from None
    if cfg.near_dedup:
        try:
            import rensa  # noqa: F401
        except ImportError:
            raise DataToolsError("near_dedup needs rensa (pip install rensa), or --off near_dedup") from None
    return inputs, output


def clean(input_paths: Sequence[str | os.PathLike], output: str | os.PathLike, cfg: CleanConfig | None = None,
          text_key: str = "text", quiet: bool = False, log_interval: float = 1.0, workers: int = 1,
          decontaminate: Sequence[str | os.PathLike] = (), eval_key: str = "text",
          work_dir: str | os.PathLike | None = None, shards: int = 1, shard: int | None = None, merge: bool = False,
          memory_mb: float = 1024) -> dict:
    """Clean `input_paths` into `output` (jsonl) and `output`.manifest.json; returns the manifest.
    `decontaminate`: evaluation inputs (any format) whose word n-grams documents must not share.
    `work_dir`: dedup from keys on disk in `memory_mb`, the input cut into `shards` runs of files
    (data_tools.clean_shards); `shard` I: only that shard (returns its marker), `merge`: only the merge.
    Raises a one-line DataToolsError for bad inputs, rules or output before reading a document."""
    t0 = time.perf_counter()
    cfg = cfg or CleanConfig()
    bad = cfg.validate() + ([f"--workers {workers}: must be >= 1"] if workers < 1 else [])
    if work_dir is None and (shard is not None or merge or shards != 1):
        bad.append("--shard, --shards and --merge need --work-dir (where shards leave their work for the merge)")
    if memory_mb <= 0:
        bad.append(f"--memory-mb {memory_mb}: must be > 0")
    if bad:
        raise DataToolsError("bad cleaning rules:\n  " + "\n  ".join(bad) if len(bad) > 1 else bad[0])
    inputs, output = check_run(input_paths, output, cfg, text_key)
    run = Run(cfg, inputs, output, text_key, quiet, log_interval, workers, [os.fspath(p) for p in decontaminate],
              eval_key, t0)
    if work_dir is not None:
        from data_tools.clean_shards import run_on_disk

        return run_on_disk(run, os.fspath(work_dir), shards, shard, merge, memory_mb)
    return _clean_in_memory(run)


def _clean_in_memory(run: Run) -> dict:
    """One pass: filter, then dedup against indexes in memory (~1 KB a kept document), in input order."""
    cfg = run.cfg
    eval_ngrams, decontam = run.eval_ngrams()
    counts = Counts(rule_order(cfg, bool(run.decontaminate)), cfg)
    seen = ExactDedup() if cfg.exact_dedup else None
    near = NearDedup(cfg.minhash_bands, cfg.minhash_rows) if cfg.near_dedup else None
    run.print_threshold()
    progress = Progress("clean", input_bytes(run.inputs), run.quiet, run.log_interval)
    final = [run.output, manifest_path(run.output)]
    results = None
    try:
        with atomic_outputs(final) as (tmp_out, tmp_manifest):
            with _open_output(tmp_out, run.output) as out:
                results = _results(iter_records(run.inputs, None), run.workers, cfg, run.text_key, eval_ngrams)
                for chunk, processed in results:
                    lines = []
                    for d in processed:
                        if not counts.take(d):
                            continue
                        if seen is not None and seen.is_duplicate(d.text):
                            counts.remove("exact_duplicate", d.where, d.text, d.size)
                        elif near is not None and near.is_duplicate(d.signature):
                            counts.remove("near_duplicate", d.where, d.text, d.size)
                        else:
                            counts.keep(len(d.text.encode("utf-8")))
                            lines.append(orjson.dumps(d.record, default=str, option=orjson.OPT_APPEND_NEWLINE))
                    out.write(b"".join(lines))
                    progress.update(chunk.path, chunk.input_pos, counts.docs["in"])
            counts.check_not_empty(run.inputs[0].path)
            manifest = run.manifest(inputs_meta(run.inputs), tmp_out, counts, decontam)
            write_json(tmp_manifest, manifest)
    finally:
        if results is not None:
            results.close()  # stops the worker pool now
        progress.close()
    if not run.quiet:
        print(summary_line(manifest, final[1]), file=sys.stderr)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.clean", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help=".jsonl(.gz/.zst), .parquet, .arrow files; "
                   "folders of them (datasets save_to_disk too); quoted globs")
    p.add_argument("--output", required=True, help="the kept documents, .jsonl(.gz/.zst); "
                   "OUTPUT.manifest.json is written beside it")
    p.add_argument("--text-key", default="text", help="the json key (parquet/Arrow column) holding the text")
    p.add_argument("--decontaminate", nargs="+", default=[], metavar="EVAL",
                   help="evaluation texts (any --input format): documents sharing a word 13-gram with them are "
                   "removed (--set decontam_ngram=N, --set decontam_action=report to only list them)")
    p.add_argument("--eval-key", default="text", help="the key (column) of the evaluation texts")
    p.add_argument("--rules", help="a TOML file of CleanConfig fields (data_tools/clean_config.py), "
                   "top level or under [clean]")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="one CleanConfig field, e.g. min_words=20, max_words=none, unicode_form=NFKC (repeatable)")
    p.add_argument("--off", action="append", default=[], metavar="RULE",
                   help="switch off a rule (e.g. stop_words, dup_line_frac), a group (quality, repetition), "
                   "exact_dedup or fix_mojibake (repeatable)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes normalizing and filtering (dedup and writing stay in order in this one)")
    p.add_argument("--work-dir", help="dedup from keys on disk in bounded memory, with the candidates and keys "
                   "kept here (data_tools/clean_shards.py); reruns skip finished shards")
    p.add_argument("--shards", type=int, default=1, help="with --work-dir: cut the input files into N shards")
    p.add_argument("--shard", metavar="I/N", help="with --work-dir: run shard I of N only (0-based; a SLURM array "
                   "task: slurm/clean.sh), then the merge with --merge")
    p.add_argument("--merge", action="store_true", help="with --work-dir: only the merge of --shards finished "
                   "shards (cross-shard exact and near dedup, the output and its manifest)")
    p.add_argument("--memory-mb", type=float, default=1024,
                   help="with --work-dir: memory the merge's dedup may use for its sorts and buffers")
    p.add_argument("--count-inputs", action="store_true",
                   help="check the rules, inputs and output as a run would, print the number of input files, "
                   "write nothing (slurm/clean.sh sizes its array with it)")
    p.add_argument("--log-interval", type=float, default=1.0,
                   help="seconds between progress updates (off a terminal: one plain line each)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    cfg = build_config(a.rules, a.set, a.off)
    shards, shard = a.shards, None
    if a.shard is not None:
        try:
            shard, shards = (int(x) for x in a.shard.split("/"))
        except ValueError:
            raise DataToolsError(f"--shard {a.shard}: I/N, e.g. --shard 3/8 (shard 3 of 0..7)") from None
    if a.count_inputs:
        print(len(check_run(a.input, a.output, cfg, a.text_key)[0]))
        return 0
    clean(a.input, a.output, cfg, a.text_key, a.quiet, a.log_interval, a.workers, a.decontaminate, a.eval_key,
          a.work_dir, shards, shard, a.merge, a.memory_mb)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
