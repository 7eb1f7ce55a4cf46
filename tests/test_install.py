"""Installing mtds: the package metadata, the DeepSpeed ops `make venv` builds per accelerator, the
`mtds` command, and the wheel installed outside the source tree.

The op choice is asked of DeepSpeed's accelerator classes (its CUDA one instantiates without a
GPU), and the Makefile is read with `make -n`; only the wheel test builds and installs anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from helpers import DIST_ENV, TINY_GPT, missing

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


def test_packaged_modules_are_every_package_of_the_tree():
    """pyproject.toml lists the packages by hand (ds_configs/ and slurm/ are mapped into the package);
    a new subpackage left off that list would be missing from the wheel."""
    from setuptools import find_packages

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(str(ROOT), include=["mtds", "mtds.*", "data_tools", "data_tools.*"]))
    assert set(tool["packages"]) == found | {"mtds.configs", "mtds.ds_configs", "mtds.slurm"}
    assert tool["package-dir"] == {"mtds.ds_configs": "ds_configs", "mtds.slurm": "slurm"}


def test_mtds_command_lists_dispatches_and_copies_configs(tmp_path, capsys, monkeypatch):
    """`mtds` alone lists the commands; a typo is one line with a suggestion; `mtds configs --copy`
    writes the shipped folders and refuses to overwrite them; the README's relative config paths
    resolve to the shipped files from any directory, a wrong folder does not."""
    from mtds import cli
    from mtds.shipped import find_shipped

    assert cli.main([]) == 2 and "pretrain" in capsys.readouterr().out
    assert cli.main(["generat"]) == 2
    assert capsys.readouterr().err == "error: unknown command 'generat' (did you mean 'generate'?); `mtds --help` lists them\n"
    assert cli.main(["configs", "--copy", str(tmp_path)]) == 0
    assert {p.name for p in (tmp_path / "ds_configs").iterdir()} == {p.name for p in (ROOT / "ds_configs").iterdir()}
    assert (tmp_path / "slurm/pretrain_64gpu.sh").is_file() and (tmp_path / "configs/gpt_125m.toml").is_file()
    capsys.readouterr()
    assert cli.main(["configs", "--copy", str(tmp_path)]) == 2
    assert "would be overwritten" in capsys.readouterr().err
    assert cli.main(["pretrain", "--nproc", "x"]) == 2
    assert "--nproc takes a number of ranks" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path / "slurm")  # no ds_configs/ here: the shipped ones answer
    assert find_shipped("ds_configs/zero2.json", "ds_configs") == str(ROOT / "ds_configs/zero2.json")
    assert find_shipped("zero3", "ds_configs") == str(ROOT / "ds_configs/zero3.json")
    assert find_shipped("mtds/configs/gpt_125m.toml", "configs") == str(ROOT / "mtds/configs/gpt_125m.toml")
    assert find_shipped("mine/zero2.json", "ds_configs") == "mine/zero2.json"


@pytest.mark.slow
def test_wheel_installed_outside_the_tree_trains_and_every_command_has_help(tiny_data, tmp_path):
    """The built wheel, installed into a fresh venv and run from a directory outside the source
    tree: `mtds --help`, every command's `--help`, `mtds configs`, `mtds pretrain --nproc 2
    --print-config` through the deepspeed launcher, and a 5-step training on the shipped zero2.json.

    The venv gets the wheel with --no-deps (no network here); the dependencies come from this
    test's own environment through a .pth line added after the install (a plain path: the editable
    install's finder there is not loaded, so `import mtds` is the wheel's), and `pip check` then
    proves the wheel's declared requirements are all met by them."""
    wheel_dir, venv, work = tmp_path / "wheel", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", *DIST_ENV)}
    env["PYTHONWARNINGS"] = "ignore"
    sh = lambda *cmd, cwd=work, **kw: subprocess.run(  # noqa: E731
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kw)
    had_build_dir = (ROOT / "build").exists()
    build = sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheel_dir, ROOT)
    assert build.returncode == 0, build.stderr
    if not had_build_dir:
        shutil.rmtree(ROOT / "build", ignore_errors=True)  # what setuptools left in the tree
    (wheel,) = wheel_dir.glob("mtds_pretrain-*.whl")
    made = sh(sys.executable, "-m", "venv", "--without-pip", venv)  # its own old setuptools would shadow ours
    assert made.returncode == 0, made.stderr
    py, bin_dir = venv / "bin/python", venv / "bin"
    pip = (sys.executable, "-m", "pip", "--python", py)
    installed = sh(*pip, "install", "-q", "--no-deps", "--no-index", wheel)
    assert installed.returncode == 0, installed.stderr
    site_dir = sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    deps = sysconfig.get_paths()["purelib"]
    (Path(site_dir) / "test_deps.pth").write_text(deps + "\n")
    env["PATH"] = f"{bin_dir}:{env['PATH']}"

    where = sh(py, "-c", "import mtds, mtds.shipped as s; print(mtds.__file__); print(s.shipped_dir('ds_configs'))")
    assert where.stdout.splitlines() == [f"{site_dir}/mtds/__init__.py", f"{site_dir}/mtds/ds_configs"], where
    check = sh(*pip, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    top = sh(bin_dir / "mtds", "--help")
    assert top.returncode == 0 and "export-hf" in top.stdout, top.stderr
    helps = sh(py, "-c", "import contextlib, io\nfrom mtds.cli import COMMANDS, main\n"
                         "for name in COMMANDS:\n"
                         "    out = io.StringIO()\n"
                         "    with contextlib.redirect_stdout(out):\n"
                         "        code = main([name, '--help'])\n"
                         "    print(name, code, 'usage:' in out.getvalue())\n")
    assert helps.stdout.splitlines() == [f"{name} 0 True" for name in cli_commands()], helps.stdout + helps.stderr
    listed = sh(bin_dir / "mtds", "configs")
    assert f"{site_dir}/mtds/slurm/" in listed.stdout and "  zero2.json" in listed.stdout, listed
    launched = sh(bin_dir / "mtds", "pretrain", "--nproc", "2", "--print-config", "--deepspeed-config", "zero2.json",
                  "--training.train_iters=7")
    assert launched.returncode == 0 and launched.stdout.count("train_iters = 7") == 2, launched.stdout + launched.stderr
    trained = sh(bin_dir / "mtds", "pretrain", "--deepspeed-config", "ds_configs/zero2.json", "--run-dir", "run",
                 "--data.paths", tiny_data["prefix"], "--data.tokenizer_model", tiny_data["tokenizer_model"],
                 "--data.split=90,10,0", *TINY_GPT, "--training.train_iters=5", "--training.eval_interval=5",
                 "--ds.scheduler.params.warmup_num_steps=2",
                 "--training.eval_iters=1", "--training.progress_bar=false")
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert "iter      5/5" in trained.stdout and (work / "run/checkpoints/iter_0000005").is_dir()


def cli_commands() -> list[str]:
    from mtds.cli import COMMANDS

    return list(COMMANDS)
