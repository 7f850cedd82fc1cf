"""What a run's checkpoint holds beyond Lightning's own state, and how it is written.

A run resumes from `<run dir>/checkpoints/last.ckpt` (gpo.training.resume:
`resume=auto` finds it, `resume=<run dir>` names it): Lightning restores
weights, optimizer, scheduler, loop counters and the data order
(gpo.data.resumable); this module supplies the rest:

  - `AtomicCheckpointIO`: Lightning writes a checkpoint in place (the old file
    is truncated first), so a kill mid-write would leave none; this writes a
    temporary file beside it and renames it into place. It loads with
    weights_only=True: a checkpoint is data, never code to run.
  - `rng_state` / `restore_rng_state`: the global RNGs (dropout), saved in
    the checkpoint by the training module.

What stops a run at a step boundary and saves it: gpo.training.preemption.
"""

import os
import random
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io import TorchCheckpointIO

LAST = Path("checkpoints") / "last.ckpt"  # relative to the run directory (conf/callbacks: model_checkpoint.dirpath)


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LAST


def checkpoint_path(trainer: pl.Trainer) -> Path:
    """Where the run's last.ckpt goes: the ModelCheckpoint's directory, else <root>/checkpoints."""
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "dirpath", None):
            return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / LAST


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
