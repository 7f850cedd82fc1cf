"""Which run a command continues: the checkpoint it resumes from, whether
it already finished (a re-run skips it), and the W&B run it keeps logging to.
What a checkpoint holds and how it is written: gpo/checkpoints.py."""

import os
from pathlib import Path

import wandb
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from gpo.checkpoints import last_checkpoint
from gpo.config import RESUME_OFF
from gpo.errors import InputError
from gpo.summary import FILENAME, RunSummary


def resume_checkpoint(cfg: DictConfig, run_dir: str) -> Path | None:
    """The checkpoint this run continues from: `resume=auto` (default) the run
    directory's checkpoints/last.ckpt if there is one (a re-run with a fixed
    hydra.run.dir, a sweep re-run into its directory, a requeued job);
    `resume=<run dir>` that directory's (hydra.run.dir follows it, see
    conf/train.yaml), an error if it has none; `resume=false` none."""
    mode = cfg.get("resume", "auto")
    if mode in RESUME_OFF:
        return None
    if mode == "auto":
        path = last_checkpoint(run_dir)
        return path if path.exists() else None
    path = last_checkpoint(mode)
    if not path.exists():
        raise InputError(f"resume={mode}: no checkpoint to resume from ({path} does not exist)")
    return path


def finished_run(cfg: DictConfig, run_dir: str) -> RunSummary | None:
    """The summary of this run directory if it records a finished run (and resume is not off)."""
    path = Path(run_dir) / FILENAME
    if cfg.get("resume", "auto") in RESUME_OFF or not path.exists():
        return None
    try:
        summary = RunSummary.read(path)
    except (OSError, ValueError, TypeError):
        return None
    return summary if summary.finished else None


def earlier_segments(cfg: DictConfig, run_dir: str) -> list[dict]:
    """The parts of the run this process continues, as the processes that ran
    them recorded them in summary.json (RunSummary.segments): when the run
    resumes from its checkpoint; none when it starts over."""
    if cfg.get("resume", "auto") in RESUME_OFF or not last_checkpoint(run_dir).exists():
        return []
    try:
        return list(RunSummary.read(Path(run_dir) / FILENAME).segments)
    except (OSError, ValueError, TypeError):
        return []


WANDB_ID = "wandb_id"  # in the run directory: the W&B run id, so a resumed run continues the same W&B run


def wandb_resume(logger_cfg: DictConfig, run_dir: str) -> dict:
    """id and resume="allow" for a WandbLogger: the id stored in the run
    directory, or a new one stored there (by rank 0: the only rank that logs)."""
    if not str(logger_cfg.get("_target_", "")).endswith("WandbLogger") or logger_cfg.get("id"):
        return {}
    path = Path(run_dir) / WANDB_ID
    if path.exists():
        run_id = path.read_text().strip()
    else:
        run_id = wandb.util.generate_id()
        if rank_zero_only.rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{WANDB_ID}.{os.getpid()}")
            tmp.write_text(run_id)
            os.replace(tmp, path)
    return {"id": run_id, "resume": "allow"}
