"""Checkpoints a run resumes from exactly, and what stops a run without losing work.

A run resumes from `<run dir>/checkpoints/last.ckpt` (gpo.run: `resume=auto`
finds it, `resume=<run dir>` names it): Lightning restores weights, optimizer,
scheduler and loop counters; this module supplies the rest of what makes the
continuation the same run:

  - `AtomicCheckpointIO`: Lightning writes a checkpoint in place (the old file
    is truncated first), so a kill mid-write would leave none; this writes a
    temporary file beside it and renames it into place. It loads with
    weights_only=True: a checkpoint is data, never code to run.
  - `ResumableSampler` / `ResumableLoader`: the order of epoch e is a
    permutation seeded by (seed, e), not drawn from the global RNG, and the
    loader remembers how many batches of the epoch it handed out, so a run
    resumed mid-epoch continues with the next batch (Lightning's stateful
    dataloader protocol).
  - `rng_state` / `restore_rng_state`: the global RNGs (dropout), saved in
    the checkpoint by the training module.
  - `CheckpointOnSignal`: on SIGUSR1/SIGUSR2/SIGTERM (SLURM preemption or time
    limit, submitit) finish the current step, save last.ckpt, stop the run and
    requeue the job, which then resumes from that step.
"""

import logging
import os
import random
import signal
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, DistributedSampler

log = logging.getLogger(__name__)

LAST = Path("checkpoints") / "last.ckpt"  # relative to the run directory (conf/callbacks: model_checkpoint.dirpath)


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LAST


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written whole or not at all: serialised to a temporary file
    in the same directory, then os.replace'd over the old one (atomic on one
    filesystem), so a kill during a write leaves the previous checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.partial")  # one name: what a killed write left is overwritten next time
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class ResumableSampler(DistributedSampler):
    """DistributedSampler's order (a permutation seeded by seed + epoch; one
    replica outside DDP), which does not depend on the global RNG and so is the
    same in a resumed run; `skip` leaves out the first indices of one epoch.
    Subclasses with another order override `epoch_indices`."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip: tuple[int, int] | None = None  # (epoch, indices already trained on in it)

    def epoch_indices(self) -> list[int]:
        """This rank's indices for the current epoch, in order."""
        return list(super().__iter__())

    def __iter__(self):
        indices = self.epoch_indices()
        if self.skip is not None and self.skip[0] == self.epoch:
            indices = indices[self.skip[1]:]
        self.skip = None
        return iter(indices)


class ResumableLoader(DataLoader):
    """A DataLoader over a ResumableSampler that Lightning saves in the
    checkpoint (state_dict) and restores before iterating (load_state_dict).
    Lightning does not prefetch from a loader with a length, so the batches
    handed out when a checkpoint is written are the batches trained on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._handed_out = 0

    def __iter__(self):
        sampler = self.sampler
        self._handed_out = (sampler.skip[1] // self.batch_size
                            if sampler.skip and sampler.skip[0] == sampler.epoch else 0)
        for batch in super().__iter__():
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches": self._handed_out}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.set_epoch(state["epoch"])
        self.sampler.skip = (state["epoch"], state["batches"] * self.batch_size)


def rng_state() -> dict:
    """The global RNG states, as tensors and ints (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": [version, list(mt), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    (gpo.checkpoints.Interrupted) and, with `requeue`, requeue the job.

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


def checkpoint_path(trainer: pl.Trainer) -> Path:
    """Where the run's last.ckpt goes: the ModelCheckpoint's directory, else <root>/checkpoints."""
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "dirpath", None):
            return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / LAST
