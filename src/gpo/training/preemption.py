"""What stops a training run without losing work: a signal (Ctrl-C's SIGINT;
SIGTERM, SIGUSR1, SIGUSR2 from a scheduler) received while training is
recorded by the job's handler (gpo.infra.interrupts); at the end of the
current training step or validation this callback writes last.ckpt at that
step and stops the run (`Interrupted`); gpo.run.run_job records it and, for a
scheduler's signal, requeues the job, which resumes from that step
(gpo.training.resume). Signals in the other stages: gpo.infra.interrupts.
"""

import logging
import signal

import pytorch_lightning as pl

from gpo.infra import interrupts
from gpo.infra.interrupts import Interrupted
from gpo.training.checkpoints import checkpoint_path, ends_training

log = logging.getLogger(__name__)

__all__ = ["CheckpointOnSignal", "Interrupted"]


class CheckpointOnSignal(pl.Callback):
    """Stop a training run at a safe point after a signal, with last.ckpt at
    that point: the end of the training step in progress (the run stops once
    Lightning has logged that step's metrics and run the validation due at
    that step, if any), or of the validation in progress. A signal after the last step stops the run
    once the checkpoint at the end of training is written
    (gpo.training.checkpoints.LastCheckpoint). This callback comes first in
    conf/callbacks: the sample evaluation due at the step it stops at is left
    to the resumed run, which does it before its first step.

    `signals`: those a scheduler sends (SLURM: SIGUSR1 or the job's --signal
    before its time limit, SIGTERM on preemption and requeue; submitit:
    SIGUSR2): with `requeue`, the job is requeued after it stopped, by the
    handler that was there before the job's (submitit's) or `scontrol
    requeue`. SIGINT stops the run the same way, without a requeue. Under DDP
    the ranks agree (any rank signalled) before saving, which is collective."""

    def __init__(self, signals=("SIGUSR1", "SIGUSR2", "SIGTERM"), requeue: bool = True):
        self.signals = {getattr(signal, name) if isinstance(name, str) else name for name in signals}
        self.requeue = requeue
        self._saved_step: int | None = None
        self._stopping: Interrupted | None = None  # decided at a step's end, raised once the step is logged

    @property
    def handler(self) -> interrupts.InterruptHandler | None:
        return interrupts.active()

    def setup(self, trainer, pl_module, stage) -> None:
        self._stopping = None
        if self.handler is not None:
            self.handler.requeue_on = self.signals if self.requeue else set()

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning puts its own SIGTERM handler in front of ours as fit starts; it makes the loops raise
        # SIGTERMException, a SystemExit (exit status 0) that skips the checkpoint and the record. Ours only.
        if self.handler is not None:
            self.handler.reinstall(signal.SIGTERM)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._saved_step = trainer.global_step  # whoever saved it (ModelCheckpoint too)

    def _checkpoint_if_signalled(self, trainer, where: str) -> Interrupted | None:
        """last.ckpt at this step and the exception that stops the run, if a signal came (on any rank)."""
        signalled = self.handler is not None and self.handler.pending
        if not trainer.strategy.reduce_boolean_decision(signalled, all=False) or ends_training(trainer):
            return None  # at the end: the end-of-training evaluation and checkpoint come first
        path = checkpoint_path(trainer)
        if self._saved_step != trainer.global_step:
            trainer.save_checkpoint(path, weights_only=False)  # the whole training state
            log.warning("Saved %s at step %d", path, trainer.global_step)
        if self.handler is None:  # outside a job's handler: another rank was signalled
            return Interrupted(signal.SIGTERM, where, path)
        return self.handler.interrupted(where, path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stopping = self._checkpoint_if_signalled(trainer, f"in training step {trainer.global_step}")

    def _stop(self, *args, **kwargs) -> None:
        """Where a run goes after a step's end and its logging: the next step, or the end."""
        if self._stopping is not None:
            raise self._stopping

    on_train_batch_start = on_train_end = _stop

    def on_validation_end(self, trainer, pl_module) -> None:
        """After the validation due at a step (part of the step's work; a resumed run skips it), or in which the
        signal came: its metrics are logged by now."""
        if trainer.sanity_checking:
            return
        if self._stopping is None:
            self._stopping = self._checkpoint_if_signalled(trainer, f"during the validation at step "
                                                                    f"{trainer.global_step}")
        self._stop()
