"""The fault table in tests/README.md names only tests that exist."""

from __future__ import annotations

import ast
import os
import re

from helpers import ROOT

REF = re.compile(r"`(?:(test_\w+\.py))?::(\w+)(?:\[[^\]]*\])?`")


def test_every_test_the_fault_table_names_exists():
    with open(os.path.join(ROOT, "tests", "README.md")) as f:
        rows = [line for line in f if line.startswith("| ")]
    missing, named = [], 0
    for row in rows:
        current = None  # `::name` continues the file named before it in the same row
        for file, name in REF.findall(row):
            current = file or current
            with open(os.path.join(ROOT, "tests", current)) as f:
                defined = {n.name for n in ast.walk(ast.parse(f.read())) if isinstance(n, ast.FunctionDef)}
            named += 1
            if name not in defined:
                missing.append(f"{current}::{name}")
    assert named > 25 and not missing, missing
