"""A throw-away one-node SLURM cluster on loopback, for tests that submit real sbatch jobs.

Everything lives under one directory: a private munge key and socket (the machine's own
munged, if any, is left alone), slurm.conf on non-default ports, state, spool, pid and log
files. `start()` brings munged, slurmctld and slurmd up and waits for the node to be idle;
`stop()` cancels what is left and stops the daemons by their pid files. Clients (sbatch,
squeue, scancel, scontrol) find the cluster through `SLURM_CONF` in `env`.

Needs root (slurmd launches jobs as the submitting user) and Debian's `slurm-wlm` + `munge`.
`unavailable_reason()` says why a cluster cannot be started here, so tests can skip.

Configuration notes (each one learned the hard way, see /work/shared/DESIGN.md):
- node and controller names must equal `hostname -s`; slurmd is started with `-N` that name;
- `EnforcePartLimits=ALL` makes an impossible request fail at submission (without it
  `sbatch --wait` waits forever on a job pending for PartitionConfig);
- `MinJobAge=5` keeps `sbatch --wait` prompt (it polls the controller for the job record);
- a requeued job may not start again for `cred_expire` seconds (default 120): 10 here;
- stopped daemons can linger as zombies (no init reaps them here), so "is it gone" reads
  /proc/PID/stat rather than trusting `kill -0`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "sinfo")


def unavailable_reason() -> str | None:
    """Why a local cluster cannot be started on this machine, or None when it can."""
    missing = [b for b in BINARIES if shutil.which(b) is None and not os.path.exists(f"/usr/sbin/{b}")]
    if missing:
        return (f"SLURM/munge not installed (missing {', '.join(missing)}); "
                "apt-get install -y --no-install-recommends slurm-wlm munge")
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd runs jobs as their user); run the tests as root"
    return None


def _which(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class ClusterError(RuntimeError):
    """The cluster did not come up; the message carries the daemons' log tails."""


class LocalSlurm:
    """One node named after `hostname -s`, `cpus` CPUs, one default partition `debug`."""

    def __init__(self, root: str | os.PathLike, cpus: int | None = None):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        for var in list(self.env):  # a test run inside a SLURM job must not leak its job into ours
            if var.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and var != "SLURM_CONF":
                del self.env[var]

    # -- configuration ---------------------------------------------------------------------
    def _memory_mb(self) -> int:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return max(int(line.split()[1]) // 1024 - 1024, 512)
        return 1024

    def _write_config(self) -> None:
        for d in ("munge", "state", "spool", "log", "run"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(f"""\
ClusterName=mtdstest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
EnforcePartLimits=ALL
MinJobAge=5
KillWait=30
InactiveLimit=0
MailProg=/bin/true
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self._memory_mb()} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE OverSubscribe=YES State=UP
""")

    # -- daemons ---------------------------------------------------------------------------
    def _pidfiles(self) -> dict[str, Path]:
        return {"slurmd": self.root / "run" / "slurmd.pid", "slurmctld": self.root / "run" / "slurmctld.pid",
                "munged": self.root / "munge" / "munged.pid"}

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        m = self.root / "munge"
        subprocess.run([_which("munged"), "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                        f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"],
                       check=True, capture_output=True, text=True, timeout=30)

    def logs(self, lines: int = 15) -> str:
        """Tails of the daemon logs, for failure messages."""
        out = []
        for p in (self.root / "munge" / "munged.log", self.root / "log" / "slurmctld.log",
                  self.root / "log" / "slurmd.log"):
            if p.exists():
                out.append(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def start(self, timeout: float = 60) -> None:
        """Start munged, slurmctld and slurmd; return once the node is idle."""
        self._write_config()
        try:
            self._start_munge()
            subprocess.run([_which("slurmctld"), "-f", str(self.conf)], env=self.env, check=True,
                           capture_output=True, text=True, timeout=60)
            subprocess.run([_which("slurmd"), "-f", str(self.conf), "-N", self.host], env=self.env, check=True,
                           capture_output=True, text=True, timeout=60)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            self.stop()
            raise ClusterError(f"{e}: {getattr(e, 'stderr', '')}\n{self.logs()}") from None
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            state = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
            if state.startswith("idle"):
                return
            time.sleep(0.5)
        self.stop()
        raise ClusterError(f"node not idle after {timeout:.0f} s (state {state!r})\n{self.logs()}")

    def stop(self, timeout: float = 30) -> None:
        """Cancel remaining jobs, then stop slurmd, slurmctld and munged by their pid files."""
        if _alive(_read_pid(self._pidfiles()["slurmctld"]) or -1):
            self.run("scancel", "--full", "--signal=KILL", "--user", str(os.getuid()), check=False)
            self.run("scancel", "--user", str(os.getuid()), check=False)
            deadline = time.time() + timeout
            while time.time() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
                time.sleep(0.5)
        for name, pidfile in self._pidfiles().items():
            pid = _read_pid(pidfile)
            if pid is None or not _alive(pid):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.time() + timeout
            while _alive(pid) and time.time() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> "LocalSlurm":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients ---------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, timeout: float = 60, cwd=None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        return subprocess.run(list(cmd), env={**self.env, **(env or {})}, cwd=cwd, check=check,
                              capture_output=True, text=True, timeout=timeout)

    def job_field(self, job_id: str, field: str) -> str | None:
        """One field of `scontrol show job` (e.g. JobState, ExitCode, Restarts); None once forgotten."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        for item in out.split():
            key, _, value = item.partition("=")
            if key == field:
                return value
        return None
