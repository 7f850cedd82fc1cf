"""The run's W&B record, through Lightning's WandbLogger (conf/logger/wandb.yaml):
one room for everything W&B-specific.

    WandbLogger                                       # Lightning's; a dead W&B service costs the record, not the run

    logger = make_logger(cfg.logger, run_dir, name)   # continues this run directory's W&B run
    record_config(logger, config)                     # secrets masked (config and command line)
    record_summary(logger, summary)                   # summary.json's run fields and metrics in the W&B summary
    finish(exit_code, preempted)                      # close the run, wait for its files

Other loggers (conf/logger/csv.yaml) pass through untouched.
"""

import logging
import os
import secrets
import string
import threading
from pathlib import Path

import wandb
from omegaconf import DictConfig
from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger
from pytorch_lightning.utilities import rank_zero_only

from gpo.infra.config import instantiate
from gpo.infra.secrets import redact, redacted_argv
from gpo.infra.summary import RunSummary

log = logging.getLogger(__name__)

WANDB_ID = "wandb_id"  # in the run directory: the W&B run id, so a resumed run continues the same W&B run
SERVICE_GONE = (BrokenPipeError, ConnectionError)  # what W&B's socket raises once its service process died


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger, except that losing W&B's service mid-run (a
    process of its own, which SLURM's requeue signals with the job) costs the
    W&B record, not the run: the first failed call is a warning, later ones
    are skipped; the run's checkpoints and summary.json are its record."""

    _service_gone = False

    def _guarded(self, call, *args, **kwargs):
        if self._service_gone:
            return None
        try:
            return call(*args, **kwargs)
        except SERVICE_GONE as error:
            self._service_gone = True
            log.warning("W&B: its service is gone (%s: %s); the run goes on without it", type(error).__name__, error)
            return None

    def log_metrics(self, metrics, step=None) -> None:
        self._guarded(super().log_metrics, metrics, step)

    def log_table(self, *args, **kwargs) -> None:
        self._guarded(super().log_table, *args, **kwargs)


def new_run_id() -> str:
    """A W&B run id in W&B's own format (8 base-36 characters). wandb no longer
    exposes its generator (wandb.util.generate_id, gone in 0.23); from the OS's
    entropy, like it, so the run's seeded random generators are not touched."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def resume_id(logger_cfg: DictConfig, run_dir: str) -> dict:
    """id and resume="allow" for a WandbLogger: the id stored in the run
    directory, or a new one stored there (by rank 0: the only rank that logs)."""
    if not str(logger_cfg.get("_target_", "")).endswith("WandbLogger") or logger_cfg.get("id"):
        return {}
    path = Path(run_dir) / WANDB_ID
    if path.exists():
        run_id = path.read_text().strip()
    else:
        run_id = new_run_id()
        if rank_zero_only.rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{WANDB_ID}.{os.getpid()}")
            tmp.write_text(run_id)
            os.replace(tmp, path)
    return {"id": run_id, "resume": "allow"}


def make_logger(logger_cfg: DictConfig, run_dir: str, name: str | None = None):
    """The configured Lightning logger; a WandbLogger continues the W&B run of
    `run_dir` (a resumed run) and is called `name` unless the config names it
    (logger.name: null by default, as the run's name holds the beta it used,
    known only once the data is read under beta_scale=link)."""
    wandb_logger = str(logger_cfg.get("_target_", "")).endswith("WandbLogger")
    named = {"name": name} if wandb_logger and logger_cfg.get("name") is None and name else {}
    logger = instantiate(logger_cfg, **resume_id(logger_cfg, run_dir), **named)
    if isinstance(logger, WandbLogger):
        # Lightning 2.6 passes wandb.init anonymous=None whatever the config says; wandb 0.31 warns about any
        # value ("The anonymous setting has no effect", wandb PR #10909). No public setting leaves it out.
        logger._wandb_init.pop("anonymous", None)
    return logger


def record_config(logger, config: dict) -> None:
    """The run's config, secrets masked, as the logger's hyperparameters. For
    W&B this creates the run, which records the command line: masked too."""
    if hasattr(logger, "log_hyperparams"):
        with redacted_argv():
            logger.log_hyperparams(redact(config))


RUN_FIELDS = ("loss", "beta", "beta_requested", "beta_scale", "seed", "status")


def record_summary(logger, summary: RunSummary) -> None:
    """The run summary in the W&B run summary: the fields that name the run
    (with summary.json's meanings: `beta` used, `beta_requested` given) and
    the metrics (the final values, the sample evaluation)."""
    fields = {**{key: getattr(summary, key) for key in RUN_FIELDS}, **summary.metrics}
    if isinstance(logger, WandbLogger):
        logger._guarded(lambda: logger.experiment.summary.update(fields))
    elif isinstance(logger, LightningWandbLogger):
        logger.experiment.summary.update(fields)


# A preempted job is SIGKILLed after SLURM's KillWait (30 s by default): the requeue hand-over must come first.
PREEMPTED_CLOSE_S = 15


def finish(exit_code: int = 0, preempted: bool = False) -> bool:
    """Close this process's W&B run and wait until its files are written.

    wandb.finish() returns once the W&B service (a separate process) has the
    run's last record; the service writes and closes the run file after that,
    so until then an offline run reads back empty or partial, for longer on a
    loaded machine. Shutting the service down (wandb.teardown) waits for it.
    That also takes WANDB_SERVICE out of os.environ: left there, it hands the
    runs of every process started later from this one (a test's CLI
    subprocess) to this process's service, and their exit no longer waits for
    their files.

    Never raises: it runs on the way out of failed and interrupted runs too,
    when the service may be gone. `preempted` (a signal stopped the run;
    run_job requeues the job next): the run is marked preempting (to be
    resumed, not failed) and closing gets PREEMPTED_CLOSE_S at most. `scontrol
    requeue` sends SIGTERM to every process of the job, W&B's service too, and
    then each call to it fails (BrokenPipeError) or waits for minutes. What the
    service wrote stays, and the requeued job continues the same W&B run.

    Returns whether W&B's service was shut down: if not, its exit hooks would
    wait on it, and the caller ends the process without them (gpo.run.exit_now)."""
    shut_down = []

    def close() -> None:
        if wandb.run is not None:
            if preempted:
                _attempt("mark the run preempted", wandb.run.mark_preempting)
            _attempt("finish the run", lambda: wandb.finish(exit_code=exit_code))
        if _attempt("shut its service down", wandb.teardown):
            shut_down.append(True)

    if not preempted:
        close()
        return bool(shut_down)
    closing = threading.Thread(target=close, name="wandb-close", daemon=True)
    closing.start()
    closing.join(PREEMPTED_CLOSE_S)
    if closing.is_alive():
        log.warning("W&B run not closed (no answer in %s s): its service has stopped (a signal to the whole job, "
                    "e.g. scontrol requeue); what it wrote is kept and the requeued job continues the run",
                    PREEMPTED_CLOSE_S)
    return bool(shut_down) and not closing.is_alive()


def _attempt(what: str, step) -> bool:
    try:
        step()
        return True
    except Exception as error:  # finish must not raise: see there
        log.warning("W&B: could not %s (%s: %s); the run's own files are kept", what, type(error).__name__, error)
        return False
