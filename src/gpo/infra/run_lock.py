"""One writer per run directory: a run holds `<run dir>/.lock` while it runs.

An fcntl lock, not a pid file: the OS releases it when its process ends,
however it ends (a crash, SIGKILL, a node's reboot for a local disk), so a lock
is never left held by the dead. The file keeps the holder's pid and host, for
the message a second process gets; a file still naming a pid when the lock is
free is what a killed holder left: taken over, with a log line.
"""

import fcntl
import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path

from gpo.infra.errors import RunRefused

log = logging.getLogger(__name__)

LOCK = ".lock"


@contextmanager
def run_directory_lock(run_dir: str | os.PathLike):
    """Hold `run_dir` for this process inside the block; RunRefused, in one line, if another process holds it."""
    path = Path(run_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (held open by the lock until the block ends)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown pid"
            raise RunRefused(f"{run_dir} is in use by another process ({holder}): wait until it ends, or give this "
                             "run another directory (hydra.run.dir=..., or hydra.sweep.dir=... for a sweep)") from None
        handle.seek(0)
        left = handle.read().strip()
        if left:
            log.warning("%s: taking over the lock its last holder (%s) left: that process is gone", run_dir, left)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()  # released cleanly: nothing left for the next holder to report
    finally:
        handle.close()
