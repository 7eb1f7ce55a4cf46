"""A classification task from the embedded default corpus (no download): is a paragraph code or prose?

    python -m data_tools.cls_corpus --output data/code_prose.jsonl [INPUT_DIR ...]   # default: the stdlib

Every Python source under the inputs (read with `ast`, in sorted path order) gives paragraphs
(blank-line-separated chunks) of two kinds:
- `"prose"`: a paragraph of a module, class or function docstring (cleaned as `ast.get_docstring` does);
- `"code"`: a chunk of source lines that touches no docstring and is not only comments.
Paragraphs shorter than 40 characters are skipped, longer ones cut to 600. The stdlib has about
five code paragraphs per prose one: a seeded sample of the code paragraphs, as many as there are
prose ones, keeps the classes balanced (majority baseline 50%). The lines
`{"text": ..., "label": "code"|"prose", "source": relpath}` are shuffled with a fixed seed, so a
contiguous data.split (how mtds splits samples) gets both classes from all over the library, and the
same interpreter always gives the same bytes.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import random
import sys
from typing import Iterator, Sequence

import orjson

from data_tools.corpus import stdlib_root, walk_files
from data_tools.errors import DataToolsError, run_cli
from data_tools.io_utils import atomic_outputs, check_output_prefix

MIN_CHARS, MAX_CHARS = 40, 600
SEED = 1234


def _docstring_nodes(tree: ast.AST) -> Iterator[ast.Expr]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                yield first


def paragraphs_of_source(text: str) -> Iterator[tuple[str, str]]:
    """(paragraph, "code" | "prose") for one Python source; nothing for a file that does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):  # test files with deliberate syntax errors, NUL bytes
        return
    doc_lines: set[int] = set()  # 1-based lines a docstring spans
    for expr in _docstring_nodes(tree):
        doc_lines.update(range(expr.lineno, expr.end_lineno + 1))
        for para in inspect.cleandoc(expr.value.value).split("\n\n"):  # what ast.get_docstring(clean=True) does
            if len(para.strip()) >= MIN_CHARS:
                yield para.strip()[:MAX_CHARS], "prose"
    chunk: list[tuple[int, str]] = []
    for n, line in enumerate(text.splitlines() + [""], 1):
        if line.strip():
            chunk.append((n, line))
            continue
        if chunk and not any(i in doc_lines for i, _ in chunk) \
                and not all(s.lstrip().startswith("#") for _, s in chunk):
            para = "\n".join(s for _, s in chunk)
            if len(para.strip()) >= MIN_CHARS:
                yield para[:MAX_CHARS], "code"
        chunk = []


def build_cls_corpus(output: str, inputs: Sequence[str] = (), quiet: bool = False) -> dict[str, int]:
    """Write the shuffled paragraphs of every .py file under `inputs` (default: the stdlib) to
    `output`; returns the count per label."""
    output = check_output_prefix(output)
    roots = list(inputs) or [stdlib_root()]
    for r in roots:
        if not os.path.isdir(r):
            raise DataToolsError(f"{r}: not a directory of Python sources")
    by_label: dict[str, list[bytes]] = {"code": [], "prose": []}
    for root in roots:
        for path in walk_files(root, (".py",)):
            try:
                with open(path, encoding="utf-8") as src:
                    text = src.read()
            except (UnicodeDecodeError, OSError):
                continue
            rel = os.path.relpath(path, root)
            for para, label in paragraphs_of_source(text):
                by_label[label].append(orjson.dumps({"text": para, "label": label, "source": rel}) + b"\n")
    rng = random.Random(SEED)
    if len(by_label["code"]) > len(by_label["prose"]):  # the stdlib has ~5x more code: balance the classes
        by_label["code"] = rng.sample(by_label["code"], len(by_label["prose"]))
    counts = {k: len(v) for k, v in by_label.items()}
    lines = by_label["code"] + by_label["prose"]
    rng.shuffle(lines)
    with atomic_outputs([output]) as (tmp,), open(tmp, "wb") as f:
        f.writelines(lines)
    if not quiet:
        print(f"cls_corpus: {len(lines)} paragraphs ({counts['code']} code, {counts['prose']} prose) in {output}",
              file=sys.stderr)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.cls_corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True)
    p.add_argument("inputs", nargs="*", help="directories of .py files (default: the running interpreter's stdlib)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    build_cls_corpus(a.output, a.inputs, a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
