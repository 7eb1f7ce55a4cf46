"""An SFT task from the embedded default corpus (no download): "docstring -> function signature".

    python -m data_tools.sft_corpus --output data/docsig.jsonl [INPUT_DIR ...]   # default: the stdlib

For every public, documented function or method in the Python sources (read with `ast`, in sorted
path order, so the same interpreter always gives the same bytes), one line
`{"prompt": "Signature of the function documented as:\\n<first docstring paragraph>",
  "response": "def name(args) -> ret:", "source": "<relpath>"}`.
The model must turn a description into a name and an argument list: learnable, checkable by eye.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from typing import Iterator, Sequence

import orjson

from data_tools.corpus import stdlib_root, walk_files
from data_tools.errors import DataToolsError, run_cli
from data_tools.io_utils import atomic_outputs, check_output_prefix

PROMPT = "Signature of the function documented as:\n"
MAX_DOC_CHARS = 300


def signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    ret = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    asyn = "async " if isinstance(node, ast.AsyncFunctionDef) else ""
    return f"{asyn}def {node.name}({ast.unparse(node.args)}){ret}:"


def pairs_of_source(text: str) -> Iterator[tuple[str, str]]:
    """(first docstring paragraph, signature) of each public documented function in `text`."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):  # test files with deliberate syntax errors, NUL bytes
        return
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node, clean=True)
        if not doc:
            continue
        first = doc.split("\n\n")[0].strip()
        if len(first) < 10:
            continue
        yield first[:MAX_DOC_CHARS], signature(node)


def build_sft_corpus(output: str, inputs: Sequence[str] = (), quiet: bool = False) -> int:
    """Write the pairs of every .py file under `inputs` (default: the stdlib) to `output`; returns the count."""
    output = check_output_prefix(output)
    roots = list(inputs) or [stdlib_root()]
    for r in roots:
        if not os.path.isdir(r):
            raise DataToolsError(f"{r}: not a directory of Python sources")
    n = 0
    with atomic_outputs([output]) as (tmp,), open(tmp, "wb") as f:
        for root in roots:
            for path in walk_files(root, (".py",)):
                try:
                    with open(path, encoding="utf-8") as src:
                        text = src.read()
                except (UnicodeDecodeError, OSError):
                    continue
                rel = os.path.relpath(path, root)
                for doc, sig in pairs_of_source(text):
                    f.write(orjson.dumps({"prompt": PROMPT + doc, "response": sig, "source": rel}) + b"\n")
                    n += 1
    if not quiet:
        print(f"sft_corpus: {n} docstring -> signature pairs in {output}", file=sys.stderr)
    return n


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.sft_corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True)
    p.add_argument("inputs", nargs="*", help="directories of .py files (default: the running interpreter's stdlib)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    build_sft_corpus(a.output, a.inputs, a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
