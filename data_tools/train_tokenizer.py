"""Train a sentencepiece tokenizer (BPE or unigram), or a Hugging Face byte-level BPE one, on jsonl, parquet or Arrow documents (data_tools.inputs, as preprocess).

    python -m data_tools.train_tokenizer --input corpus.jsonl --output-prefix tok [--vocab-size 8192]
    python -m data_tools.train_tokenizer --type hf-bpe --input corpus.jsonl --output-prefix tok_hf

Writes `tok.model` and `tok.vocab` (temp names, renamed when complete); with `--type hf-bpe` the
directory `tok_hf/` (tokenizer.json + tokenizer_config.json, for AutoTokenizer and
`--tokenizer-type HuggingFaceTokenizer`). The special-token layout is the one `data_tools.spm`
documents and the training code relies on, in both:
    0 <pad>   1 <unk>   2 <s>   3 </s> (= EOD)   4 [CLS]   5 [SEP]   6 [MASK]
`--sentinel-tokens [N]` (N = 100 when the flag is given alone) adds T5's span-corruption
sentinels `<extra_id_0>` ... `<extra_id_{N-1}>` right after them (ids 7 ... 6+N), which a T5 run
(`--model-type t5`) needs; written in a text, `<extra_id_3>` then encodes to that one id, as with
Hugging Face's T5 tokenizers (it is how a span-filling prompt names its gaps).

Text is streamed line by line, never loaded whole: a uniform random sample of
`--input-sentence-size` lines (reservoir sampling, seeded) bounds memory and training time on big
corpora and is handed to the trainer through `sentence_iterator`. We sample here rather than with
sentencepiece's own `input_sentence_size` because its sampler ignored the seed when fed from an
iterator (two runs gave two different models); ours makes the same corpus give the same model.

Settings chosen so that decode(encode(text)) == text, which matters for code:
identity normalization (no NFKC), no whitespace collapsing, no dummy prefix, whitespace-only
pieces allowed (indentation becomes a few tokens), byte fallback for anything unseen
(a newline becomes the byte piece <0x0A>), digits split one by one.

hf-bpe (the `tokenizers` library's BPE trainer, on the same sampled lines; the same corpus and
seed give the same tokenizer.json): GPT-2's byte-level pre-tokenizer (every byte has a token, so
decode(encode(text)) == text with no normalization), digits split one by one, no BOS added (as
with sentencepiece: documents end with </s> from `preprocess --append-eod`), and
`split_special_tokens`, so "</s>" or "[MASK]" written in a document stays text, never a control
token (pass split_special_tokens=False to a call that needs "[MASK]" in text to be the mask).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import sys
import time
from typing import Iterator, Sequence


from data_tools.errors import DataToolsError, run_cli
from data_tools.inputs import InputFile, check_inputs, input_bytes, iter_records, load_record, resolve_inputs
from data_tools.io_utils import atomic_outputs, check_output_prefix, tmp_name
from data_tools.jsonl_reader import UnparsableLine
from data_tools.progress import Progress
from data_tools.spm import (BOS, CLS, DEFAULT_SENTINEL_TOKENS, EOD, MASK, PAD, SEP, UNK, USER_DEFINED_SYMBOLS,
                            sentinel_pieces)

# sentencepiece drops training sentences longer than max_sentence_length bytes; code lines are
# short, but long prose lines are cut into pieces of at most this many characters instead.
MAX_SENTENCE_CHARS = 4000


def iter_training_lines(inputs: Sequence, json_keys: Sequence[str], progress: Progress | None = None) -> Iterator[str]:
    """Non-blank lines (newline kept) of every document's `json_keys` fields; bad lines skipped.
    `inputs`: resolved InputFiles (jsonl, parquet, Arrow: data_tools.inputs), or jsonl paths."""
    inputs = [f if isinstance(f, InputFile) else InputFile(os.fspath(f), "jsonl") for f in inputs]
    docs = 0
    for chunk in iter_records(inputs, json_keys):
        for i in range(len(chunk.records)):
            try:
                doc = load_record(chunk, i)
            except UnparsableLine:
                continue  # preprocess reports bad lines; the tokenizer just needs text
            if not isinstance(doc, dict):
                continue
            docs += 1
            for key in json_keys:
                text = doc.get(key)
                if isinstance(text, bytes):  # a binary parquet/Arrow column
                    try:
                        text = text.decode("utf-8")
                    except UnicodeDecodeError:
                        continue
                if not isinstance(text, str):
                    continue
                for line in text.splitlines(keepends=True):
                    if not line.strip():
                        continue
                    for j in range(0, len(line), MAX_SENTENCE_CHARS):
                        yield line[j : j + MAX_SENTENCE_CHARS]
        if progress is not None:
            progress.update(chunk.path, chunk.input_pos, docs)


def _read_sample(input_paths, json_keys, input_sentence_size, seed, quiet, log_interval):
    """(sampled lines, lines in all) of the inputs behind `input_paths` (data_tools.inputs)."""
    inputs = resolve_inputs(input_paths)
    check_inputs(inputs, json_keys)  # parquet/Arrow: a missing column is one line now
    progress = Progress("train_tokenizer", input_bytes(inputs), quiet, log_interval)
    try:
        sample, n_lines = sample_lines(iter_training_lines(inputs, json_keys, progress), input_sentence_size, seed)
    finally:
        progress.close()
    if not sample:
        raise DataToolsError(f"{inputs[0].path}: no text under json keys {list(json_keys)} to train on")
    return sample, n_lines


def sample_lines(lines: Iterator[str], k: int, seed: int) -> tuple[list[str], int]:
    """Uniform sample of at most k lines (Algorithm R) and how many lines there were; k=0: all."""
    rng = random.Random(seed)
    sample: list[str] = []
    n = 0
    for n, line in enumerate(lines, 1):
        if k <= 0 or n <= k:
            sample.append(line)
        else:
            j = rng.randrange(n)
            if j < k:
                sample[j] = line
    return sample, n


def train_tokenizer(
    input_paths: Sequence[str | os.PathLike],
    output_prefix: str | os.PathLike,
    vocab_size: int = 8192,
    model_type: str = "bpe",
    json_keys: Sequence[str] = ("text",),
    input_sentence_size: int = 500_000,
    character_coverage: float = 0.9995,
    num_threads: int | None = None,
    seed: int = 1234,
    quiet: bool = False,
    sentinel_tokens: int = 0,
    log_interval: float = 1.0,
) -> str:
    """Train and write `{output_prefix}.model` / `.vocab`; return the .model path. `sentinel_tokens`:
    T5's <extra_id_N> pieces after the special tokens (see the module docstring)."""
    import sentencepiece as spm

    resolve_inputs(input_paths)  # a missing input is one line before the checks below
    prefix = check_output_prefix(output_prefix)
    if model_type not in ("bpe", "unigram"):
        raise DataToolsError(f"--model-type {model_type!r}: choose bpe or unigram")
    check_sentinel_count(sentinel_tokens)
    if vocab_size < 16 + len(USER_DEFINED_SYMBOLS) + sentinel_tokens:
        raise DataToolsError(f"--vocab-size {vocab_size} is too small")
    model_path, vocab_path = f"{prefix}.model", f"{prefix}.vocab"
    t0 = time.perf_counter()
    model = io.BytesIO()
    sample, n_lines = _read_sample(input_paths, json_keys, input_sentence_size, seed, quiet, log_interval)
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample),
            model_writer=model,
            model_type=model_type,
            vocab_size=vocab_size,
            input_sentence_size=0,  # already sampled
            shuffle_input_sentence=False,
            character_coverage=character_coverage,
            byte_fallback=True,
            pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            pad_piece=PAD, unk_piece=UNK, bos_piece=BOS, eos_piece=EOD,
            user_defined_symbols=list(USER_DEFINED_SYMBOLS) + sentinel_pieces(sentinel_tokens),
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            max_sentence_length=4 * MAX_SENTENCE_CHARS + 16,  # bytes; a char is <= 4 UTF-8 bytes
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,  # our own summary line is enough; failures still raise
        )
    except RuntimeError as e:
        # e.g. "Vocabulary size too high" on a tiny corpus: keep sentencepiece's reason, one line.
        raise DataToolsError(f"sentencepiece training failed: {str(e).splitlines()[0]}") from None
    proto = model.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    with atomic_outputs([vocab_path, model_path]) as (tmp_vocab, tmp_model):
        with open(tmp_vocab, "w", encoding="utf-8") as f:
            for i in range(sp.get_piece_size()):
                f.write(f"{sp.id_to_piece(i)}\t{sp.get_score(i)}\n")
        with open(tmp_model, "wb") as f:
            f.write(proto)
    if not quiet:
        with_sentinels = f", {sentinel_tokens} sentinels" if sentinel_tokens else ""
        print(f"train_tokenizer: {model_path} ({model_type}, vocab {sp.get_piece_size()}{with_sentinels}, trained on "
              f"{len(sample)} of {n_lines} lines) in "
              f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return model_path


def train_hf_bpe(
    input_paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    vocab_size: int = 8192,
    json_keys: Sequence[str] = ("text",),
    input_sentence_size: int = 500_000,
    seed: int = 1234,
    quiet: bool = False,
    sentinel_tokens: int = 0,
    log_interval: float = 1.0,
) -> str:
    """Train a byte-level BPE tokenizer (with `sentinel_tokens` T5 sentinels after the specials);
    write `output_dir/` (tokenizer.json, tokenizer_config.json) under a temporary name, renamed
    when complete; return the directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    resolve_inputs(input_paths)
    out = check_output_prefix(output_dir).rstrip("/")
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataToolsError(f"{out}: is a file; --type hf-bpe writes a directory there, give another --output-prefix")
    check_sentinel_count(sentinel_tokens)
    sentinels = sentinel_pieces(sentinel_tokens)
    specials = [PAD, UNK, BOS, EOD, CLS, SEP, MASK, *sentinels]  # ids 0..6(+N), data_tools.spm's layout
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials) + 1:
        raise DataToolsError(f"--vocab-size {vocab_size} is too small for --type hf-bpe (256 bytes + "
                             f"{len(specials)} special tokens + merges: give at least {len(alphabet) + len(specials) + 1})")
    t0 = time.perf_counter()
    sample, n_lines = _read_sample(input_paths, json_keys, input_sentence_size, seed, quiet, log_interval)
    tok = Tokenizer(models.BPE(unk_token=None))  # byte-level: every byte has a token, no unknowns
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(sample, trainer, length=len(sample))
    from transformers import PreTrainedTokenizerFast

    # transformers writes the tokenizer_config.json AutoTokenizer reads (and the post-processor
    # into tokenizer.json); no BOS/EOS added to a text: add_bos_token / add_eos_token stay off.
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOD,
                                 cls_token=CLS, sep_token=SEP, mask_token=MASK, split_special_tokens=True,
                                 additional_special_tokens=sentinels,
                                 clean_up_tokenization_spaces=False)
    tmp = tmp_name(out)
    try:
        hf.save_pretrained(tmp)
        if os.path.isdir(out):  # replace an earlier one: no mix of old and new files
            old = f"{out}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(f"train_tokenizer: {out}/ (hf-bpe, vocab {tok.get_vocab_size()}, trained on {len(sample)} of "
              f"{n_lines} lines) in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return out


def check_sentinel_count(n: int) -> None:
    if not 0 <= n <= 1000:
        raise DataToolsError(f"--sentinel-tokens {n}: give 0..1000 (T5 uses {DEFAULT_SENTINEL_TOKENS})")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.train_tokenizer", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help=".jsonl(.gz/.zst), .parquet, .arrow files; "
                   "folders of them (datasets save_to_disk too); quoted globs (as preprocess)")
    p.add_argument("--output-prefix", required=True,
                   help="writes PREFIX.model and PREFIX.vocab (--type hf-bpe: the directory PREFIX/)")
    p.add_argument("--type", choices=["sentencepiece", "hf-bpe"], default="sentencepiece",
                   help="hf-bpe: a Hugging Face byte-level BPE tokenizer.json (the tokenizers library)")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="json keys, or parquet/Arrow columns")
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe", help="sentencepiece model type")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--input-sentence-size", type=int, default=500_000,
                   help="lines sampled for training (bounds time and memory; 0 = all)")
    p.add_argument("--character-coverage", type=float, default=0.9995)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--sentinel-tokens", type=int, nargs="?", const=DEFAULT_SENTINEL_TOKENS, default=0, metavar="N",
                   help=f"add T5's span-corruption sentinels <extra_id_0>..<extra_id_N-1> (alone: {DEFAULT_SENTINEL_TOKENS}); "
                        "a T5 run needs them")
    p.add_argument("--log-interval", type=float, default=1.0,
                   help="seconds between progress updates while reading (off a terminal: one plain line each)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.type == "hf-bpe":
        train_hf_bpe(a.input, a.output_prefix, a.vocab_size, a.json_keys, a.input_sentence_size, a.seed, a.quiet,
                     a.sentinel_tokens, a.log_interval)
        return 0
    train_tokenizer(a.input, a.output_prefix, a.vocab_size, a.model_type, a.json_keys,
                    a.input_sentence_size, a.character_coverage, a.num_threads, a.seed, a.quiet, a.sentinel_tokens,
                    a.log_interval)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
