"""Downstream eval packs: a local multiple-choice or cloze set, tokenized once, offline, with a run's tokenizer.

    python -m data_tools.eval_pack --input hellaswag_val.jsonl --tokenizer-model tok.model --output hs.pack.json
    python -m data_tools.eval_pack --input arc.parquet --tokenizer-model hf_tok/ --output arc.pack.json --layout choices

Layouts (`--layout auto` picks one from the first record's fields):
  hellaswag  ctx, endings (list), label (index, as an int or a digit string)
  choices    question, choices, answer: ARC/PIQA-style; choices a list of texts or {"text": [...], "label": [...]}
             (ARC) or a list of {"text", "label"}; answer (or answerKey / label / gold) an index, a label or a text
  cloze      text whose final word is the continuation (LAMBADA)
Each example is scored the way lm-evaluation-harness scores such a task: the log-likelihood of
" " + choice after the context (cloze: " " + last word after the rest). Its ids are lm-eval's
`_encode_pair`: the pair's whole text encoded, the context's ids cut off the front (trailing
spaces of a context go to the continuation), no special tokens; an empty context is the
tokenizer's end-of-document token.

The pack (JSON) holds per example the context ids, each choice's continuation ids, the gold
index, each continuation's UTF-8 bytes (bits per byte) and each choice's length in characters
(lm-eval's acc_norm divides by `len(choice)`); the tokenizer's path, type and content hash
(training refuses a pack of another tokenizer: mtds/train/downstream.py); the inputs' hashes; and
the pack's own xxh3-128 content hash (of its canonical examples JSON, checked when it is read).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Callable, Sequence

import xxhash

from data_tools.errors import DataToolsError, run_cli
from data_tools.hf_tokenizer import HF_FILES, HUGGINGFACE, TOKENIZER_TYPES, tokenizer_type
from data_tools.spm import EOD, TokenizerError

FORMAT = "mtds-eval-pack"
VERSION = 1
LAYOUTS = {"hellaswag": ("ctx", "endings", "label"), "choices": ("question", "choices", "answer"), "cloze": ("text",)}
ANSWER_KEYS = ("answer", "answerKey", "label", "gold")


def tokenizer_hash(path: str) -> str:
    """xxh3-128 of a tokenizer's content: a sentencepiece .model file, or a Hugging Face directory's
    tokenizer files (names and bytes, sorted). Paths do not count: a copy elsewhere is the same tokenizer."""
    h = xxhash.xxh3_128()
    files = [path] if os.path.isfile(path) else [os.path.join(path, n) for n in sorted(HF_FILES)
                                                 if os.path.isfile(os.path.join(path, n))]
    for f in files:
        h.update(os.path.basename(f).encode() + b"\0" if os.path.isdir(path) else b"")
        with open(f, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def load_encoder(path: str, type: str = "auto") -> tuple[Callable[[str], list[int]], int, str]:
    """(encode(text) -> ids without special tokens, end-of-document id, resolved type) of a tokenizer."""
    kind = tokenizer_type(path, type)
    if kind == HUGGINGFACE:
        from data_tools.hf_tokenizer import load_hf_tokenizer, special_id

        tok = load_hf_tokenizer(path)
        eod = special_id(tok, "eos")
        if eod is None:
            raise TokenizerError(f"{path}: tokenizer has no eos token (an empty context is scored after it)")
        return (lambda text: list(tok(text, add_special_tokens=False)["input_ids"])), eod, kind
    from data_tools.spm import load_sentencepiece

    sp = load_sentencepiece(path)
    return (lambda text: list(sp.encode(text))), sp.piece_to_id(EOD), kind


def encode_pair(encode: Callable[[str], list[int]], eod: int, context: str, continuation: str
                ) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval's HFLM._encode_pair makes them (see the module doc)."""
    if not context:
        return [eod], encode(continuation)
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, ctx = encode(context + continuation), encode(context)
    return ctx, whole[len(ctx):]


def detect_layout(record: dict, where: str) -> str:
    found = set(record)
    for name, keys in LAYOUTS.items():
        if name == "choices":
            if {"question", "choices"} <= found and any(k in found for k in ANSWER_KEYS):
                return name
        elif set(keys) <= found:
            return name
    known = "; ".join(f"{n}: {', '.join(k)}" for n, k in LAYOUTS.items())
    raise DataToolsError(f"{where}: layout not recognised from its fields ({', '.join(sorted(found)) or 'none'}); "
                         f"known layouts: {known} (or pass --layout)")


def _need(record: dict, keys: Sequence[str], layout: str, where: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataToolsError(f"{where}: missing field {', '.join(missing)} of layout {layout} "
                             f"(fields: {', '.join(sorted(record)) or 'none'})")


def _index(value, n: int, where: str, labels: Sequence[str] | None = None, texts: Sequence[str] = ()) -> int:
    """A gold answer as an index into n choices: an int, a digit string, a choice label or a choice text."""
    if isinstance(value, str) and labels and value in labels:
        return list(labels).index(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, str) and value in texts:
        return list(texts).index(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise DataToolsError(f"{where}: answer {value!r} names none of its {n} choices")
    return value


def _choices(raw, where: str) -> tuple[list[str], list[str] | None]:
    """Choice texts and labels (None: none given) of a `choices` field in any of its shapes."""
    if isinstance(raw, dict) and "text" in raw:
        texts, labels = raw["text"], raw.get("label")
    elif isinstance(raw, list) and raw and all(isinstance(c, dict) and "text" in c for c in raw):
        texts, labels = [c["text"] for c in raw], [c.get("label") for c in raw]
    else:
        texts, labels = raw, None
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise DataToolsError(f"{where}: choices must be a non-empty list of texts or {{text, label}} (got {raw!r:.80})")
    return texts, ([str(x) for x in labels] if labels else None)


def parse_record(record: dict, layout: str, where: str) -> tuple[str, list[str], int]:
    """(context, choice texts, gold index) of one record."""
    if layout == "hellaswag":
        _need(record, LAYOUTS[layout], layout, where)
        texts, _ = _choices(record["endings"], where)
        return record["ctx"], texts, _index(record["label"], len(texts), where)
    if layout == "choices":
        _need(record, ("question", "choices"), layout, where)
        key = next((k for k in ANSWER_KEYS if k in record), None)
        if key is None:
            raise DataToolsError(f"{where}: missing field answer (or {', '.join(ANSWER_KEYS[1:])}) of layout choices "
                                 f"(fields: {', '.join(sorted(record))})")
        texts, labels = _choices(record["choices"], where)
        return record["question"], texts, _index(record[key], len(texts), where, labels, texts)
    _need(record, ("text",), layout, where)
    text = str(record["text"]).rstrip()
    if " " not in text.strip():
        raise DataToolsError(f"{where}: a cloze text needs a context and a final word (got {text!r:.80})")
    context, last = text.rsplit(" ", 1)
    return context, [last], 0


def build_pack(inputs: Sequence[str], tokenizer_model: str, layout: str = "auto", tokenizer_type_: str = "auto",
               name: str | None = None) -> dict:
    """The pack of `inputs` (see the module doc); one-line DataToolsError for a bad input or tokenizer."""
    from data_tools.inputs import iter_records, load_record, resolve_inputs

    if layout != "auto" and layout not in LAYOUTS:
        raise DataToolsError(f"--layout {layout!r}: choose auto or one of {', '.join(LAYOUTS)}")
    files = resolve_inputs(inputs)
    try:
        encode, eod, resolved_type = load_encoder(tokenizer_model, tokenizer_type_)
    except TokenizerError as e:
        raise DataToolsError(str(e)) from None
    examples = []
    for chunk in iter_records(files):
        for i in range(len(chunk.records)):
            where = chunk.where(i)
            try:
                record = load_record(chunk, i)
            except ValueError as e:
                raise DataToolsError(f"{where}: not a JSON record ({e})") from None
            if record is None:
                continue
            if not isinstance(record, dict):
                raise DataToolsError(f"{where}: a record must be a JSON object")
            if layout == "auto":
                layout = detect_layout(record, where)
            context, texts, gold = parse_record(record, layout, where)
            pairs = [encode_pair(encode, eod, context, " " + t) for t in texts]
            if any(not cont for _, cont in pairs):
                raise DataToolsError(f"{where}: a choice encodes to no tokens")
            examples.append({"context": pairs[0][0], "continuations": [c for _, c in pairs], "gold": gold,
                             "bytes": [len((" " + t).encode("utf-8")) for t in texts],
                             "chars": [len(t) for t in texts]})
    if not examples:
        raise DataToolsError(f"{', '.join(map(str, inputs))}: no examples in the input (empty set)")
    pack = {"format": FORMAT, "version": VERSION,
            "task": name or os.path.basename(str(inputs[0])).split(".")[0], "layout": layout,
            "tokenizer": {"path": os.path.abspath(tokenizer_model), "type": resolved_type,
                          "xxh3_128": tokenizer_hash(tokenizer_model)},
            "inputs": [{"path": f.path, "xxh3_128": _file_hash(f.path)} for f in files],
            "examples": examples}
    pack["xxh3_128"] = content_hash(pack)
    return pack


def _file_hash(path: str) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def content_hash(pack: dict) -> str:
    """xxh3-128 of what scores depend on: layout, tokenizer hash and examples, as canonical JSON."""
    body = {"layout": pack["layout"], "tokenizer": pack["tokenizer"]["xxh3_128"], "examples": pack["examples"]}
    return xxhash.xxh3_128_hexdigest(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def read_pack(path: str) -> dict:
    """A pack file, checked (format, content hash); one-line DataToolsError if it is not a sound pack."""
    try:
        with open(path) as f:
            pack = json.load(f)
    except FileNotFoundError:
        raise DataToolsError(f"{path}: eval pack not found (build one with `python -m data_tools.eval_pack`)") from None
    except (OSError, ValueError) as e:
        raise DataToolsError(f"{path}: not an eval pack ({str(e)[:80]})") from None
    if not isinstance(pack, dict) or pack.get("format") != FORMAT:
        raise DataToolsError(f"{path}: not an eval pack (build one with `python -m data_tools.eval_pack`)")
    if pack.get("version") != VERSION:
        raise DataToolsError(f"{path}: eval pack version {pack.get('version')}, this mtds reads {VERSION}; rebuild it")
    if content_hash(pack) != pack.get("xxh3_128"):
        raise DataToolsError(f"{path}: eval pack content does not match its hash (damaged or edited); rebuild it")
    return pack


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.eval_pack", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help="jsonl / parquet / arrow files, folders or globs")
    p.add_argument("--tokenizer-model", required=True,
                   help="the run's tokenizer: sentencepiece .model, or a Hugging Face tokenizer directory")
    p.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default="auto")
    p.add_argument("--output", required=True, help="the pack file to write (JSON)")
    p.add_argument("--layout", default="auto", choices=("auto", *LAYOUTS))
    p.add_argument("--name", help="the task's name in scores and TensorBoard tags (default: the input's file name)")
    a = p.parse_args(argv)
    pack = build_pack(a.input, a.tokenizer_model, a.layout, a.tokenizer_type, a.name)
    tmp = a.output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(pack, f, separators=(",", ":"))
    os.replace(tmp, a.output)
    n = len(pack["examples"])
    choices = sum(len(e["continuations"]) for e in pack["examples"])
    print(f"{a.output}: {n} examples ({choices} continuations), layout {pack['layout']}, task {pack['task']}, "
          f"xxh3-128 {pack['xxh3_128']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
