"""Signals that stop a run, handled alike in every stage: Ctrl-C (SIGINT),
SIGTERM (SLURM preemption, `scontrol requeue`, a plain `kill`), SIGUSR1 and
SIGUSR2 (SLURM's and submitit's warning before a time limit).

One handler per job (gpo.run installs it with `handling()`):

  - outside training (data preparation, the SFT stage, reference log-probs,
    export) the first signal stops the stage where it is: `Interrupted` is
    raised in the main thread, as Ctrl-C raises KeyboardInterrupt;
  - while training (`deferred()`: gpo.run wraps trainer.fit in it) the signal
    is only recorded; the run stops at the next point where its state is whole:
    the end of the current training step or validation, where
    gpo.training.preemption writes last.ckpt at that step, or the end of
    training (`enter` the next stage);
  - a second Ctrl-C aborts at once, without a checkpoint or a record.

`Interrupted` is a BaseException, as KeyboardInterrupt is, so that no `except
Exception` on the way (a cache read that rebuilds what it cannot read, a
library's retry) takes it for a failure of its own. What happens next (the
record, the W&B run, the requeue) is gpo.run.run_job's.
"""

import functools
import logging
import os
import signal
import subprocess
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
PREEMPTION = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)  # a scheduler's: requeued (SIGINT is a person's)


def slurm_job_id() -> str | None:
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class Interrupted(BaseException):  # noqa: N818 (what happened to the run, not an error of its own)
    """The run stopped on a signal `where` it was; `checkpoint`: the checkpoint
    saved at that point (None: training had not started, or nothing new to save)."""

    def __init__(self, signum: int, where: str, checkpoint: Path | None = None, previous_handler=None,
                 requeue: bool = False):
        self.signum, self.where, self.checkpoint = signum, where, checkpoint
        self.previous_handler, self.requeue = previous_handler, requeue
        saved = (f"checkpoint saved ({checkpoint}): the same command resumes from it" if checkpoint else
                 "the same command resumes from the last checkpoint, if any")
        super().__init__(f"{signal.Signals(signum).name} {where}; {saved}")

    def hand_over(self) -> None:
        """Requeue the job, for a scheduler's signal: the handler that was there
        before ours (submitit's: it requeues the job and exits), else `scontrol
        requeue` under SLURM (what Lightning's own SLURM auto-requeue runs).
        Never raises: the process must go on to exit."""
        if not self.requeue:
            return
        name = signal.Signals(self.signum).name
        try:
            if callable(self.previous_handler):
                log.info("Handing %s over to the previous handler (%s)", name,
                         getattr(self.previous_handler, "__qualname__", self.previous_handler))
                self.previous_handler(self.signum, None)
                return
            job = slurm_job_id()
            if job:
                done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
                if done.returncode == 0:
                    log.info("Requeued SLURM job %s: it resumes from its last checkpoint", job)
                else:
                    log.error("scontrol requeue %s failed (%s): re-run the job to resume", job, done.stderr.strip())
        except Exception as error:  # the hand-over is the last thing a stopping job does
            log.error("Requeue after %s failed (%s: %s): re-run the job to resume", name, type(error).__name__, error)


class InterruptHandler:
    """The job's handler for SIGNALS (see the module's docstring)."""

    def __init__(self):
        self.received: int | None = None
        self.stage = "while starting"  # where the run is, for the record ("during the SFT stage", ...)
        self.requeue_on: set[int] = set(PREEMPTION)  # gpo.training.CheckpointOnSignal(signals, requeue) sets it
        self._deferring = 0
        self._previous: dict[int, object] = {}

    # -- installation -------------------------------------------------------------------------------------------
    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def reinstall(self, signum: int) -> None:
        """Ours again for `signum` (Lightning puts its own SIGTERM handler in front at the start of fit)."""
        if self._previous and threading.current_thread() is threading.main_thread():
            signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    # -- what a signal does -------------------------------------------------------------------------------------
    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: the person wants out now
                log.error("Second SIGINT: aborting now, without a checkpoint or a record")
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGINT)
            return  # stopping already
        self.received = signum
        if self._deferring:
            log.warning("Received %s: stopping at the end of this training step%s", name,
                        " (Ctrl-C again aborts at once)" if signum == signal.SIGINT else "")
            return
        log.warning("Received %s %s: stopping", name, self.stage)
        raise self.interrupted()

    def interrupted(self, where: str | None = None, checkpoint: Path | None = None) -> Interrupted:
        """The exception that stops the run for the signal received."""
        signum = self.received or signal.SIGTERM
        return Interrupted(signum, where or self.stage, checkpoint, self._previous.get(signum),
                           requeue=signum in self.requeue_on)

    @property
    def pending(self) -> bool:
        return self.received is not None

    def enter(self, stage: str) -> None:
        """The run enters `stage` ("during the SFT stage"); a signal received
        while training (deferred) stops it here."""
        self.stage = stage
        if self.received is not None and not self._deferring:
            raise self.interrupted()

    @contextmanager
    def deferred(self):
        """Signals are recorded, not raised, inside: the caller stops at its own safe points (`pending`)."""
        self._deferring += 1
        try:
            yield self
        finally:
            self._deferring -= 1


_ACTIVE: list[InterruptHandler] = []  # the job's handler (process-global: signals are)


def active() -> InterruptHandler | None:
    return _ACTIVE[-1] if _ACTIVE else None


@contextmanager
def handling():
    """The job's InterruptHandler, installed inside (the active one if a caller installed it already);
    the process's previous handlers back after, however the block ends."""
    if _ACTIVE:
        yield _ACTIVE[-1]
        return
    handler = InterruptHandler()
    handler.install()
    _ACTIVE.append(handler)
    try:
        yield handler
    finally:
        _ACTIVE.pop()
        handler.uninstall()


def handled(function):
    """`function` runs under the job's handler (`handling()`)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with handling():
            return function(*args, **kwargs)
    return wrapper


def enter(stage: str) -> None:
    """The active handler's `enter` (nothing outside a job)."""
    if _ACTIVE:
        _ACTIVE[-1].enter(stage)


def deferred():
    """The active handler's `deferred` (nothing outside a job)."""
    return _ACTIVE[-1].deferred() if _ACTIVE else nullcontext()
