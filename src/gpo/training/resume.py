"""Which run a command continues: the checkpoint it resumes from, whether it
already finished (a re-run skips it), and that it is the same experiment
(gpo.training.identity: a run directory holds one experiment). The W&B run it
keeps logging to: gpo.infra.tracking; what a checkpoint holds:
gpo.training.checkpoints."""

import logging
import shutil
import zipfile
from pathlib import Path

from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from gpo.infra.config import RESUME_OFF
from gpo.infra.errors import InputError
from gpo.infra.summary import FILENAME, RunSummary
from gpo.reference.initial import non_finite
from gpo.training.checkpoints import START_OVER, last_checkpoint, load_checkpoint_file
from gpo.training.identity import RunRecord, check_same_experiment, extends

log = logging.getLogger(__name__)

PREVIOUS = "previous"  # <run dir>/previous/<n>: the files of the runs `resume=false` started over from
KEPT_IN_PLACE = {".hydra", PREVIOUS, ".lock"}  # this job's (Hydra wrote .hydra for it), and the runs set aside


def resume_checkpoint(cfg: DictConfig, run_dir: str, identity: dict) -> Path | None:
    """The checkpoint this run continues from: `resume=auto` (default) the run
    directory's checkpoints/last.ckpt if there is one (a re-run with a fixed
    hydra.run.dir, a sweep re-run into its directory, a requeued job);
    `resume=<run dir>` that directory's (hydra.run.dir follows it, see
    conf/train.yaml), an error if it has none; `resume=false` none, the
    directory's earlier files moved to previous/<n>. RunRefused if the
    directory holds another experiment (its checkpoint's identity, else its
    summary's); InputError if its checkpoint cannot be read or is damaged."""
    mode = cfg.get("resume", "auto")
    if mode in RESUME_OFF:
        set_aside(run_dir)
        return None
    directory = run_dir if mode == "auto" else mode
    path = last_checkpoint(directory)
    if mode != "auto" and not path.exists():
        raise InputError(f"resume={mode}: no checkpoint to resume from ({path} does not exist)")
    if path.exists():
        recorded, what = checkpoint_identity(path), "its checkpoint"
    else:
        recorded, what = summary_identity(directory), "its summary.json"
    check_same_experiment(recorded, identity, directory, what)
    return path if path.exists() else None


def finished_run(cfg: DictConfig, run_dir: str, identity: dict) -> RunSummary | None:
    """The summary of this run directory if it records this experiment,
    finished (and resume is not off): the run is skipped. None to train: not
    finished, or finished with fewer trainer.max_steps (the run is extended).
    RunRefused if it records another experiment."""
    path = Path(run_dir) / FILENAME
    if cfg.get("resume", "auto") in RESUME_OFF or not path.exists():
        return None
    summary = _read_summary(path)
    if summary is None or not summary.finished:
        return None
    if not summary.identity:
        log.warning("%s records no experiment identity (an older version): skipping it unchecked", path)
        return summary
    check_same_experiment(summary.identity, identity, run_dir, "its summary.json")
    return None if extends(summary.identity, identity) else summary


def checkpoint_identity(path: Path) -> dict | None:
    """The identity a checkpoint records (None: written by an older version), read
    without loading its tensors (mmap); InputError if it is unreadable, untrusted
    or holds non-finite weights (a damaged file that still loads)."""
    checkpoint = load_checkpoint_file(path, map_location="cpu", mmap=zipfile.is_zipfile(path))  # mmap: zip only
    damaged = non_finite(checkpoint.get("state_dict", {}))
    if damaged:
        raise InputError(f"{path}: {len(damaged)} weight tensor(s) hold NaN or Inf (e.g. {damaged[0]}): the "
                         f"checkpoint is damaged; {START_OVER}")
    record = checkpoint.get(RunRecord.KEY)
    if record is None:
        log.warning("%s records no experiment identity (an older version): resuming it unchecked", path)
    return None if record is None else record["identity"]


def summary_identity(directory) -> dict | None:
    path = Path(directory) / FILENAME
    summary = _read_summary(path) if path.exists() else None
    return summary.identity if summary is not None else None


def _read_summary(path: Path) -> RunSummary | None:
    try:
        return RunSummary.read(path)
    except (OSError, ValueError, TypeError):
        return None
def set_aside(run_dir: str) -> Path | None:
    """Move what an earlier run left in `run_dir` (checkpoints, summary, logs,
    W&B files, the exported policy) to <run dir>/previous/<n>, so a run
    started over there (`resume=false`) neither mixes with it nor deletes it.
    Hydra's files for this job (.hydra, the job's .log, which it has open) stay."""
    run_dir = Path(run_dir)
    if rank_zero_only.rank != 0 or not run_dir.is_dir():
        return None  # under DDP, rank 0 moves them (once)
    earlier = [path for path in run_dir.iterdir()
               if path.name not in KEPT_IN_PLACE and path.suffix != ".log" and not path.name.startswith(".pl_hydra")]
    if not earlier:
        return None
    previous = run_dir / PREVIOUS
    taken = [int(p.name) for p in previous.glob("*") if p.name.isdigit()] if previous.is_dir() else []
    target = previous / str(max(taken, default=0) + 1)
    target.mkdir(parents=True)
    for path in earlier:
        shutil.move(str(path), target / path.name)
    log.info("resume=false: the earlier run's files in %s are kept in %s", run_dir, target)
    return target


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
