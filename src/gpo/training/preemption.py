"""What stops a run without losing work: a preemption or time-limit signal
(SLURM, submitit) ends the current step, saves last.ckpt at that step, stops
the run (`Interrupted`) and requeues the job, which then resumes from that step
(gpo.training.resume). gpo.run.run_job catches `Interrupted` and hands it over.
"""

import logging
import os
import signal
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl

from gpo.training.checkpoints import checkpoint_path

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """The run stopped on a signal after saving a checkpoint at the current
    step; `hand_over()` requeues the job (gpo.run.run_job calls it)."""

    def __init__(self, signum: int, step: int, path: Path, previous_handler, requeue: bool):
        self.signum, self.step, self.path = signum, step, path
        self.previous_handler, self.requeue = previous_handler, requeue
        super().__init__(f"{signal.Signals(signum).name} at step {step}; checkpoint saved ({path}): "
                         "the same command resumes from it")

    def hand_over(self) -> None:
        """Requeue: the handler that was there before ours (submitit's: it
        requeues the job and exits), else `scontrol requeue` under SLURM (what
        Lightning's own SLURM auto-requeue runs)."""
        if callable(self.previous_handler):
            log.info("Handing %s over to the previous handler (%s)", signal.Signals(self.signum).name,
                     getattr(self.previous_handler, "__qualname__", self.previous_handler))
            self.previous_handler(self.signum, None)
            return
        job = slurm_job_id()
        if self.requeue and job:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if done.returncode == 0:
                log.info("Requeued SLURM job %s: it resumes from %s", job, self.path)
            else:
                log.error("scontrol requeue %s failed (%s): re-run the job to resume", job, done.stderr.strip())


def slurm_job_id() -> str | None:
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class CheckpointOnSignal(pl.Callback):
    """On one of `signals` (SLURM sends SIGUSR1 or the job's --signal before
    its time limit and SIGTERM on preemption; submitit uses SIGUSR2): finish
    the current optimizer step, write last.ckpt at that step, stop the run
    (`Interrupted`) and, with `requeue`, requeue the job.

    The handler only records the signal: the checkpoint is written at a step
    boundary, never from inside the handler in the middle of a step. Under DDP
    the ranks agree (any rank signalled) before saving, which is collective.
    A handler installed before ours (submitit's requeue) is called after the
    checkpoint instead of `scontrol requeue`."""

    def __init__(self, signals=("SIGUSR1", "SIGUSR2", "SIGTERM"), requeue: bool = True):
        self.signals = [getattr(signal, name) if isinstance(name, str) else name for name in signals]
        self.requeue = requeue
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        log.warning("Received %s: checkpointing at the end of this step", signal.Signals(signum).name)
        self.received = signum

    def setup(self, trainer, pl_module, stage) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        self.received = None
        for signum in self.signals:
            previous = signal.signal(signum, self._handle)
            self._previous[signum] = previous if previous not in (signal.SIG_DFL, signal.SIG_IGN, None) else None

    def teardown(self, trainer, pl_module, stage) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous or signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        path = checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the whole training state
        signum = self.received or signal.SIGTERM  # another rank was signalled
        log.warning("Saved %s at step %d after %s", path, trainer.global_step, signal.Signals(signum).name)
        raise Interrupted(signum, trainer.global_step, path, self._previous.get(signum), self.requeue)


@contextmanager
def signal_handlers_kept(signals=("SIGUSR1", "SIGUSR2", "SIGTERM")):
    """The process's own handlers for `signals` back after a fit, however it
    ended: when fit raises, Lightning puts back the handlers it found at its
    start (CheckpointOnSignal's) and no callback teardown runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {signum: signal.getsignal(signum) for signum in (getattr(signal, name) for name in signals)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
