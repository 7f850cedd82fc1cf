"""The end of a sweep (Hydra callbacks on multirun end, hydra.callbacks in
conf/train.yaml): list the jobs that did not finish, write the sweep report.
What runs around every job: gpo/infra/hydra_callbacks.py; one job: gpo/run.py."""

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gpo.infra.summary import FILENAME, PRUNED, RunSummary

log = logging.getLogger(__name__)


def job_outcomes(sweep_dir: str | Path) -> dict[str, list[tuple[Path, str]]]:
    """Jobs of a sweep directory by outcome: 'finished', 'pruned' (stopped
    early by an Optuna study's pruner), 'failed' (with the error train.py
    recorded) and 'missing' (a job directory without summary.json: the
    process was killed, e.g. out of memory or by the scheduler)."""
    outcomes = {"finished": [], "pruned": [], "failed": [], "missing": []}
    for hydra_dir in sorted(Path(sweep_dir).rglob(".hydra")):
        job_dir = hydra_dir.parent
        summary_path = job_dir / FILENAME
        if not summary_path.exists():
            outcomes["missing"].append((job_dir, "no summary.json"))
            continue
        summary = RunSummary.read(summary_path)
        outcome = "finished" if summary.finished else "pruned" if summary.status == PRUNED else "failed"
        outcomes[outcome].append((job_dir, summary.error or ""))
    return outcomes


class ListFailedJobs(Callback):
    """At the end of a multirun, log every job that failed or left no summary,
    so one failure in a long sweep is not lost in the other jobs' output."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        outcomes = job_outcomes(config.hydra.sweep.dir)
        bad = outcomes["failed"] + outcomes["missing"]
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
