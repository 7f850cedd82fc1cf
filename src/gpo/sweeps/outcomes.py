"""The end of a sweep (Hydra callbacks on multirun end, hydra.callbacks in
conf/train.yaml): list the jobs that did not finish, write the sweep report.
What runs around every job: gpo/infra/hydra_callbacks.py; one job: gpo/run.py."""

import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gpo.infra.summary import FILENAME, PRUNED, RunSummary

log = logging.getLogger(__name__)

REFUSED = "refused_jobs.jsonl"  # in the sweep directory: jobs of this sweep command that did not run (gpo.run)


def note_refused_job(sweep_dir: str | Path, job_dir: str | Path, reason: str) -> None:
    """Record that a job of this sweep did not run in `job_dir` (another process
    holds it, or it holds another experiment): its directory keeps the earlier
    run's files, which must not pass for this sweep's result. One line per job,
    appended (jobs of a parallel sweep write at once: O_APPEND keeps lines whole)."""
    with open(Path(sweep_dir) / REFUSED, "a") as handle:
        handle.write(json.dumps({"job": str(job_dir), "reason": reason}) + "\n")


def refused_jobs(sweep_dir: str | Path) -> dict[str, str]:
    path = Path(sweep_dir) / REFUSED
    if not path.exists():
        return {}
    return {Path(entry["job"]).name: entry["reason"] for entry in map(json.loads, path.read_text().splitlines())}


def job_outcomes(sweep_dir: str | Path) -> dict[str, list[tuple[Path, str]]]:
    """Jobs of a sweep directory by outcome: 'finished', 'pruned' (stopped
    early by an Optuna study's pruner), 'failed' (with the error train.py
    recorded), 'missing' (a job directory without summary.json: the
    process was killed, e.g. out of memory or by the scheduler) and 'refused'
    (the last sweep command did not run it there: `note_refused_job`)."""
    outcomes = {"finished": [], "pruned": [], "failed": [], "missing": [], "refused": []}
    refused = refused_jobs(sweep_dir)
    for hydra_dir in sorted(Path(sweep_dir).rglob(".hydra")):
        job_dir = hydra_dir.parent
        if job_dir.name in refused:
            outcomes["refused"].append((job_dir, refused[job_dir.name]))
            continue
        summary_path = job_dir / FILENAME
        if not summary_path.exists():
            outcomes["missing"].append((job_dir, "no summary.json"))
            continue
        summary = RunSummary.read(summary_path)
        outcome = "finished" if summary.finished else "pruned" if summary.status == PRUNED else "failed"
        outcomes[outcome].append((job_dir, summary.error or ""))
    return outcomes


class ListFailedJobs(Callback):
    """At the end of a multirun, log every job that failed, left no summary or
    was refused, so one failure in a long sweep is not lost in the other jobs' output."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        (Path(config.hydra.sweep.dir) / REFUSED).unlink(missing_ok=True)  # this command's refusals only

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        outcomes = job_outcomes(config.hydra.sweep.dir)
        bad = outcomes["failed"] + outcomes["missing"] + outcomes["refused"]
        total = sum(map(len, outcomes.values()))
        if not bad:
            pruned = f" ({len(outcomes['pruned'])} pruned early)" if outcomes["pruned"] else ""
            log.info("All %d jobs of %s finished%s", total, config.hydra.sweep.dir, pruned)
            return
        lines = [f"{len(bad)} of {total} jobs did not finish:"] + [f"  {job}: {error}" for job, error in bad]
        log.error("\n".join(lines))


class WriteSweepReport(Callback):
    """At the end of a multirun, write the sweep report (src/report.py) into
    the sweep directory."""

    def __init__(self, metric: str | None = None, reference: str = "ipo"):
        self.metric, self.reference = metric, reference

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from gpo import report  # matplotlib and pandas: only when a sweep ends

        if not job_outcomes(config.hydra.sweep.dir)["finished"]:
            log.warning("No finished job in %s: no sweep report", config.hydra.sweep.dir)
            return
        try:
            result = report.write_report(config.hydra.sweep.dir, None, self.metric, self.reference)
        except LookupError as error:  # e.g. the same runs twice under the sweep: the jobs stand, the report waits
            log.warning("No sweep report: %s (python src/report.py %s once resolved)", error, config.hydra.sweep.dir)
            return
        log.info("Sweep report:\n%s\nWritten: %s", report.results_markdown(result.table),
                 ", ".join(str(p) for p in result.paths))
