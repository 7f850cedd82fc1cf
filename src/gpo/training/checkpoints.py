"""What a run's checkpoint holds beyond Lightning's own state, and how it is written.

A run resumes from `<run dir>/checkpoints/last.ckpt` (gpo.training.resume:
`resume=auto` finds it, `resume=<run dir>` names it): Lightning restores
weights, optimizer, scheduler, loop counters and the data order
(gpo.data.resumable); this module supplies the rest:

  - `AtomicCheckpointIO`: Lightning writes a checkpoint in place (the old file
    is truncated first), so a kill mid-write would leave none; this writes a
    temporary file beside it and renames it into place; a write that fails (a
    full disk) says so in one line and leaves the previous checkpoint. It loads
    with weights_only=True (`load_checkpoint_file`): a checkpoint is data, never
    code to run; an unreadable or untrusted one is named in one line;
  - `LastCheckpoint`: Lightning's ModelCheckpoint, except that the checkpoint at
    the end of training is written once the end-of-training validation and
    evaluation are done, so a checkpoint at the last step is a complete run;
  - `rng_state` / `restore_rng_state`: the global RNGs (dropout), saved in
    the checkpoint by the training module.

What stops a run at a step boundary and saves it: gpo.training.preemption.
"""

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from gpo.infra.errors import InputError, RunError

LAST = Path("checkpoints") / "last.ckpt"  # relative to the run directory (conf/callbacks: model_checkpoint.dirpath)


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LAST


def checkpoint_path(trainer: pl.Trainer) -> Path:
    """Where the run's last.ckpt goes: the ModelCheckpoint's directory, else <root>/checkpoints."""
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "dirpath", None):
            return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / LAST


START_OVER = "resume=false starts over (the old run's files are moved to previous/ in the run directory)"


def load_checkpoint_file(path, **kwargs) -> dict:
    """torch.load(path, weights_only=True); InputError in one line, naming the
    file, if it cannot be read (truncated, damaged) or holds more than tensors
    and plain data (objects whose loading could run code: none of our checkpoints)."""
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError:
        raise InputError(f"{path}: refused: it holds Python objects beyond tensors and plain data (loading them "
                         f"could run code), so no run of this project wrote it; {START_OVER}") from None
    except Exception as error:
        detail = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else "no detail"
        raise InputError(f"{path}: cannot read the checkpoint ({type(error).__name__}: {detail}): it is truncated "
                         f"or damaged; {START_OVER}") from None


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
        except OSError as error:  # a full disk, a quota, a vanished mount
            kept = "the previous one there is kept" if path.exists() else "there is no earlier one"
            raise RunError(f"cannot write the checkpoint {path} ({error.strerror or error}): {kept}; "
                           "free space (or set hydra.run.dir elsewhere) and run the same command to resume") from None
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        return load_checkpoint_file(path, map_location=map_location)


def ends_training(trainer: pl.Trainer) -> bool:
    """Whether the step just done is the run's last (by trainer.max_steps, or the last batch of the last epoch)."""
    if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return True
    epochs = trainer.max_epochs
    return (epochs is not None and epochs > 0 and trainer.current_epoch >= epochs - 1
            and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (last.ckpt every n steps), except at the end
    of training: there it writes last.ckpt after the end-of-training validation
    and sample evaluation (on_train_end: Lightning calls checkpoint callbacks
    last), so a checkpoint at the last step holds a complete run (the final
    metrics: gpo.training.identity.RunRecord). A run killed before that resumes
    from the checkpoint before and trains the last steps again."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not ends_training(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not ends_training(trainer):
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not ends_training(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(checkpoint_path(trainer), weights_only=False)


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
