"""The configs and scripts mtds ships: `ds_configs/` (DeepSpeed JSONs), `configs/` (run configs) and
`slurm/` (batch scripts).

In a source checkout they are the repository's top-level folders (mtds/configs for run configs);
an installed wheel carries them inside the package (pyproject.toml maps ds_configs/ and slurm/ to
mtds/ds_configs and mtds/slurm). `find_shipped` lets the README's paths (`ds_configs/zero2.json`,
`mtds/configs/gpt_125m.toml`) work from any directory: a path that names no file there is looked up
among the shipped files.
"""

from __future__ import annotations

import os
from pathlib import Path

FOLDERS = ("ds_configs", "configs", "slurm")
_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """The shipped folder `name` (one of FOLDERS): inside the package, else at the checkout's top."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"mtds ships no {name}/ folder here ({_PACKAGE})")


def shipped_files(name: str) -> list[Path]:
    return sorted(f for f in shipped_dir(name).iterdir() if f.is_file() and f.name != "__init__.py")


def find_shipped(path: str, folder: str) -> str:
    """`path` if it names a file; else, when it is a bare name or under the folder's own name
    (`ds_configs/zero2.json`, `zero2.json`, `zero2`; `mtds/configs/gpt_125m.toml`), the shipped file
    of that name, else `path` unchanged (the caller's not-found error names it). A missing
    `my_dir/zero2.json` is not replaced by the shipped one: that would hide a wrong path."""
    if os.path.isfile(path):
        return path
    head, name = os.path.split(os.path.normpath(path))
    if head not in ("", folder, f"mtds/{folder}"):
        return path
    try:
        folder_dir = shipped_dir(folder)
    except FileNotFoundError:
        return path
    for candidate in (folder_dir / name, folder_dir / (name + (".json" if folder == "ds_configs" else ".toml"))):
        if candidate.is_file():
            return str(candidate)
    return path
