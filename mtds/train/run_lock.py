"""One run per run directory: rank 0 holds an exclusive lock on `<run_dir>/.lock` for the life of
the run, so a second run started into the same directory (a resubmitted job while the first still
runs, a copy-pasted command) stops with one line naming the holder instead of interleaving its
checkpoints, config.json and TensorBoard events with the first run's.

`fcntl.flock` locks belong to the open file, so the kernel drops the lock when the process dies,
however it dies (SIGKILL included): a lock file left behind never blocks. On shared filesystems
flock works where the filesystem supports it (NFSv4, Lustre with `flock`, GPFS); where it does not,
the lock is not enforced and a warning says so.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time

from mtds.errors import ConfigError

LOCK_FILE = ".lock"
_held: list = []  # open lock files of this process (kept open = lock held)


def lock_run_dir(run_dir: str, log=print) -> None:
    """Take the run dir's lock or raise a one-line ConfigError naming who holds it."""
    path = os.path.join(run_dir, LOCK_FILE)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConfigError(f"training.run_dir={run_dir!r} is in use by another run ({holder}); wait for it to "
                              "end, or give this run another --run-dir") from None
        log(f"warning: cannot lock {path} ({e.strerror}); nothing stops a second run from writing into {run_dir}")
        f.close()
        return
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    _held.append(f)


def release_run_dir_locks() -> None:
    """Drop the locks this process holds (the run is over; a process that dies drops them anyway)."""
    while _held:
        _held.pop().close()
