"""Process-group set-up and seeding: DeepSpeed's communication backend + megatron-core's
parallel state (tensor-parallel groups of model.tensor_model_parallel_size consecutive ranks,
data parallelism across them; pipeline size 1)."""

from __future__ import annotations

import datetime
import os
import random
import socket

import numpy as np
import torch


def _free_port() -> int:
    """A TCP port free now, for a one-process world's rendezvous store. Chosen below the kernel's
    ephemeral range: a port from that range (what binding port 0 gives), free again once this check
    closes it, can be taken by any process's next outgoing connection before the store binds it
    (seen: EADDRINUSE with two test workers training side by side)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    pick = random.SystemRandom()  # not the seeded generator: two runs of one seed must not pick alike
    for _ in range(100):
        port = pick.randrange(max(1024, ephemeral_low - 12000), ephemeral_low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # all taken: any free port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(timeout_minutes: float = 30.0, tensor_parallel: int = 1) -> tuple[int, int, int]:
    """Initialise torch.distributed through DeepSpeed and megatron-core's parallel state with
    `tensor_parallel` ranks per tensor-parallel group.

    A collective that waits longer than `timeout_minutes` for a peer (a rank that hung or died)
    raises instead of blocking the job forever.

    Returns (rank, world_size, local_rank). A plain `python mtds/pretrain.py` is a world of one.
    """
    import deepspeed
    from megatron.core import parallel_state

    from mtds.cpu_compat import enable_if_no_cuda

    enable_if_no_cuda()
    if "RANK" not in os.environ:  # not started by deepspeed/torchrun: a single process
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_init_required=True, auto_mpi_discovery=False,
                               timeout=datetime.timedelta(minutes=timeout_minutes))
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel,
                                                 pipeline_model_parallel_size=1)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank


# rank -> (host, pid) of every rank, gathered once at start (record_peers), so that a rank which
# loses contact can name the peer that died: gloo only says "Connection closed by peer <ip:port>".
_PEERS: dict[int, tuple[str, int]] = {}


def record_peers() -> None:
    """Gather every rank's (host, pid); call once after init_distributed."""
    world = torch.distributed.get_world_size()
    if world > 1:
        peers: list = [None] * world
        torch.distributed.all_gather_object(peers, (socket.gethostname(), os.getpid()))
        _PEERS.update(enumerate(peers))


def dead_peers() -> list[str]:
    """'rank R (pid P)' for each rank on this host whose process is gone (exited, killed, a zombie)."""
    import psutil

    host, dead = socket.gethostname(), []
    for rank, (peer_host, pid) in sorted(_PEERS.items()):
        if peer_host != host or pid == os.getpid():
            continue
        try:
            gone = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            gone = True
        if gone:
            dead.append(f"rank {rank} (pid {pid})")
    return dead


def failure_line(error: BaseException) -> str:
    """The one line a rank prints for an unforeseen error: naming a dead peer when there is one."""
    rank = os.environ.get("RANK", "0")
    cause = f"{type(error).__name__}: {error}".splitlines()[0]
    dead = dead_peers()
    if dead:  # this rank's error is the symptom (a broken connection), the peer's death the cause
        return (f"error: {', '.join(dead)} died (killed, out of memory or crashed: its log or the launcher's "
                f"exit code says which); rank {rank} lost contact with it: {cause}")
    return f"error: rank {rank} failed: {cause}"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and megatron's model-parallel RNG tracker: the default stream
    is the same on every rank (dropout outside tensor-parallel regions must agree across a
    tensor-parallel group), the tracker's 'model-parallel-rng' stream differs per tensor-parallel
    rank (attention dropout on each rank's own heads). On CPU the tracker runs on the CPU
    generator (mtds.cpu_compat)."""
    from megatron.core import parallel_state, tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if parallel_state.model_parallel_is_initialized():
        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def seed_per_data_rank(seed: int) -> None:
    """Call once the model is built (its initial weights the same on every rank, from
    `seed_everything`): reseed so that each data-parallel rank draws its own dropout masks (replicas
    that drop the same units on every rank regularise like one). Ranks of one tensor-parallel group
    share their data-parallel rank, so megatron's rules hold: the default stream agrees within the
    group, the tracker's 'model-parallel-rng' stream differs per tensor-parallel rank. Data-parallel
    rank 0 keeps the streams `seed_everything` set, so a one-rank run draws what it always drew.
    The streams are saved per rank with each checkpoint (rng_rank*.pt): a resume continues them."""
    from megatron.core import parallel_state, tensor_parallel

    if not parallel_state.model_parallel_is_initialized():
        return
    data_rank = parallel_state.get_data_parallel_rank()
    if data_rank == 0:
        return
    rank_seed = (seed + 1_000_003 * data_rank) % 2**63  # far from seed + 2718 + tp_rank, the tracker's offsets
    torch.manual_seed(rank_seed)
    tensor_parallel.model_parallel_cuda_manual_seed(rank_seed)


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def is_rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def gather_to_rank0(obj) -> list | None:
    """Every rank's `obj` (a small picklable value) as a list on rank 0, None on the others."""
    if not torch.distributed.is_initialized():
        return [obj]
    rank0 = torch.distributed.get_rank() == 0
    out = [None] * torch.distributed.get_world_size() if rank0 else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out
