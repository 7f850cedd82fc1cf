"""Which run a command continues: the checkpoint it resumes from, and whether
it already finished (a re-run skips it). The W&B run it keeps logging to:
gpo.infra.tracking; what a checkpoint holds: gpo.training.checkpoints."""

from pathlib import Path

from omegaconf import DictConfig

from gpo.infra.config import RESUME_OFF
from gpo.infra.errors import InputError
from gpo.infra.summary import FILENAME, RunSummary
from gpo.training.checkpoints import last_checkpoint


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
