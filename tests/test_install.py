"""Installing mtds: the package metadata and the DeepSpeed ops `make venv` builds per accelerator.

Nothing here installs or compiles anything: the op choice is asked of DeepSpeed's accelerator
classes (its CUDA one instantiates without a GPU), and the Makefile is read with `make -n`.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

from helpers import missing

from mtds.ops import NO_NVCC, WANTED, ops_for

ROOT = Path(__file__).resolve().parent.parent


def test_ops_follow_the_accelerator():
    """CPU: the shm collectives and its fused Adam, as before. CUDA: no ShareMemCommBuilder (a
    CPU-only op, which `make` once called .load() on and crashed), FusedAdam only with nvcc,
    otherwise a note naming nvcc and "torch_adam"."""
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator
    from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator

    cuda = CUDA_Accelerator()
    assert cuda.create_op_builder("ShareMemCommBuilder") is None  # why the old Makefile crashed
    assert ops_for(cuda, "/usr/local/cuda/bin/nvcc") == (["FusedAdamBuilder"], [])
    ops, notes = ops_for(cuda, None)
    assert ops == [] and notes == [NO_NVCC]
    assert "nvcc" in NO_NVCC and '"torch_adam": true' in NO_NVCC and "\n" not in NO_NVCC
    assert ops_for(CPU_Accelerator(), None) == (list(WANTED), [])
    assert WANTED == ("ShareMemCommBuilder", "FusedAdamBuilder")


def test_make_venv_builds_ops_through_the_helper(tmp_path):
    """`make -n -B venv` (a dry run: prints, runs nothing) builds the ops with mtds.ops, never a
    hard-coded op list; TORCH_INDEX puts the CUDA wheel's index on the torch install line."""
    if shutil.which("make") is None:
        missing("make is not installed")
    run = lambda *extra: subprocess.run(  # noqa: E731
        ["make", "-n", "-B", "venv", f"VENV={tmp_path / 'venv'}", *extra], cwd=ROOT,
        capture_output=True, text=True, check=True).stdout
    plan = run()
    assert "-m mtds.ops" in plan and "ShareMemCommBuilder" not in plan
    torch_line = next(line for line in plan.splitlines() if "install -q torch==" in line)
    assert "--index-url" not in torch_line
    plan = run("TORCH_INDEX=https://download.pytorch.org/whl/cu128")
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" in plan


def test_pyproject_runtime_metadata():
    """`pip install` alone gives a working package: transformers (every HF tokenizer) is a runtime
    dependency, the Python floor matches the stdlib tomllib that config.py imports, and the
    license is declared and shipped."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in project["dependencies"]]
    assert "transformers" in names
    assert "transformers" not in str(project["optional-dependencies"]["test"])
    assert project["requires-python"] == ">=3.11"
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
