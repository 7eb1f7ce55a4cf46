"""Session-wide fixtures shared by the test modules (helpers live in tests/helpers.py)."""

from __future__ import annotations

import os

import pytest

from helpers import DIST_ENV, USED_PORTS, build_tiny_data, end_world, missing, release_shm_buffers

_SESSION_DIST_ENV = {k: os.environ.get(k) for k in DIST_ENV}


@pytest.fixture(scope="session", autouse=True)
def no_deepspeed_buffers_left():
    """Every launcher run of this process (worker) is over at the end of the session: remove the
    /dev/shm buffers DeepSpeed left under their ports (helpers.release_shm_buffers says why)."""
    yield
    for port in USED_PORTS:
        release_shm_buffers(port)


@pytest.fixture
def read_only():
    """`read_only(folder)`: make `folder` read-only for everyone, root included (CI runs as root,
    which writes through permission bits): a read-only bind mount of it onto itself, undone after
    the test. Not root: chmod 555 does it. Fails under CI if neither works."""
    import subprocess

    mounted, chmodded = [], []

    def make(folder) -> None:
        folder = str(folder)
        if os.geteuid() != 0:
            os.chmod(folder, 0o555)
            chmodded.append(folder)
            return
        for cmd in (["mount", "--bind", folder, folder], ["mount", "-o", "remount,ro,bind", folder]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                if cmd[1] != "--bind":
                    subprocess.run(["umount", folder], check=False)
                missing(f"cannot make {folder} read-only ({' '.join(cmd)}: {proc.stderr.strip()})")
        mounted.append(folder)

    yield make
    for folder in mounted:  # lazily: the test's datasets may still map files there
        subprocess.run(["umount", "-l", folder], check=False)
    for folder in chmodded:
        os.chmod(folder, 0o755)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    """Small corpus, 512-piece tokenizer, `_document` and `_sentence` .bin/.idx; built once."""
    return build_tiny_data(str(tmp_path_factory.mktemp("tiny_data")), sentences=True)


@pytest.fixture(scope="module")
def world_of_one():
    """A one-process gloo group and megatron-core parallel state (TP = PP = 1), torn down after.

    megatron-core layers look up their tensor-parallel group when built, and the BERT dataset
    asks torch.distributed for the rank when it builds its sample index.
    """
    import torch
    from megatron.core import parallel_state

    from mtds.cpu_compat import enable_if_no_cuda

    enable_if_no_cuda()
    made_group = not torch.distributed.is_initialized()
    if made_group:
        torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    made_state = not parallel_state.model_parallel_is_initialized()
    if made_state:
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    yield
    if made_state:
        parallel_state.destroy_model_parallel()
    if made_group:
        torch.distributed.destroy_process_group()


@pytest.fixture(autouse=True)
def no_inherited_rendezvous():
    """A test that loads a model in-process (mtds.load_trained) sets RANK/MASTER_PORT/... in this
    process and its gloo store holds that port; a training subprocess a later test starts must not
    inherit them (it would try to bind the same port: EADDRINUSE)."""
    yield
    for k, v in _SESSION_DIST_ENV.items():  # as the session started: module fixtures set them too
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module", autouse=True)
def no_world_left_behind():
    """After each module (its own fixtures torn down first), take down a world a test left in this worker
    (mtds.load_trained makes a gloo group of one and keeps it): while one exists, helpers.run_pretrain
    must start a subprocess per run (~4 s each) instead of training in-process, for every later module."""
    yield
    end_world()


# The modules with the longest training runs, first: `make test` runs two xdist workers a module at a
# time (--dist loadscope), in collection order, and a long module started last keeps one worker busy
# while the other idles (measured: a 6-minute tail). Order inside a module is kept.
HEAVY_FIRST = ("test_reliability.py", "test_tensor_parallel.py", "test_pretrain.py", "test_slurm.py",
               "test_bert_e2e.py", "test_classification.py", "test_bench.py", "test_checkpoint_manifest.py",
               "test_t5.py", "test_tools.py", "test_init_from.py", "test_sft.py", "test_moe.py", "test_distill.py",
               "test_per_token_loss.py", "test_downstream.py", "test_prune.py", "test_wandb.py", "test_plm.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
