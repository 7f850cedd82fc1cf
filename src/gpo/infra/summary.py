"""The record one training run leaves: `summary.json` in its run directory,
and the same metrics in the W&B run summary.

Written by the run whether it finished or failed; read back by the Hydra
callbacks (which jobs failed), the sweep report and the benchmarks. One
schema, so none of them keeps its own list of keys.
"""

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from gpo.infra.files import atomic_write_text
from gpo.infra.secrets import redact

FILENAME = "summary.json"
FINISHED, FAILED = "finished", "failed"
PRUNED = "pruned"  # stopped early, cleanly, by an Optuna study's pruner (gpo/sweeps/pruning.py)


@dataclass
class RunSummary:
    loss: str  # the conf/loss option, e.g. "dpo"
    beta: float  # the beta the loss used (after beta_scale)
    seed: int
    status: str = FINISHED  # FINISHED, FAILED or PRUNED
    error: str | None = None  # "<ExceptionType>: <message>" when FAILED
    beta_requested: float | None = None  # beta as given; differs from `beta` under beta_scale
    beta_scale: str = "none"  # none | taylor | link
    method: str = ""  # the non-default axis choices, e.g. "rho=mean weighting=wpo" (gpo.training.names.method)
    overrides: list[str] = field(default_factory=list)  # the job's Hydra overrides
    loss_config: dict = field(default_factory=dict)  # the resolved conf/loss node: rebuilds the loss (link, theory)
    theory: dict[str, float] = field(default_factory=dict)  # GPO families: f0, df0, d2f0, regularisation_scale
    metrics: dict[str, float] = field(default_factory=dict)  # final train/, val/ and eval/ values
    trajectory: list[dict[str, float]] = field(default_factory=list)  # eval/ metrics at "step", through training
    data: dict = field(default_factory=dict)  # per split: pairs kept, truncated, dropped; preference probabilities
    stages: dict = field(default_factory=dict)  # sft / reference: {"status": ..., "seconds": ...}
    resumed_from_step: int | None = None  # the checkpoint's step when the run continued one (gpo.training.resume)
    # One per process that ran it (a preempted and requeued run has several): start, end, seconds, ended_by
    # ("finished", or the signal that stopped it), time_split (that part's seconds by stage, gpo/training/timing.py).
    # wall_time_s is their sum: the run's time, not its last part's; time_split is their splits' sum, stage by stage.
    segments: list[dict] = field(default_factory=list)
    identity: dict = field(default_factory=dict)  # the experiment it ran: fingerprint and keys (gpo.training.identity)
    evaluated: str | None = None  # src/evaluate.py: the policy evaluated (a checkpoint, a Hugging Face model path)
    time_split: dict[str, float] = field(default_factory=dict)
    wall_time_s: float | None = None

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def objective(self, names: str | Sequence[str] | None) -> float | None:
        """The value of the first of `names` (`optimized_metric`: a metric, or
        a list in order of preference) that this run measured."""
        names = [names] if isinstance(names, str) else names or []
        return next((self.metrics[name] for name in names if name in self.metrics), None)

    def add_segment(self, started: float, ended_by: str, time_split: dict[str, float] | None = None) -> None:
        """This process's part of the run, from `started` (a time.time()) to
        now, with where its time went (`time_split`, seconds by stage)."""
        ended = time.time()
        segment = {"start": _timestamp(started), "end": _timestamp(ended), "seconds": round(ended - started, 3),
                   "ended_by": ended_by}
        self.segments.append(segment if time_split is None else {**segment, "time_split": time_split})
        self.wall_time_s = sum(part["seconds"] for part in self.segments)
        self.time_split = {}  # summed over the parts that have one (an older version's records may not)
        for part in self.segments:
            for stage, seconds in part.get("time_split", {}).items():
                self.time_split[stage] = self.time_split.get(stage, 0.0) + seconds

    def write(self, directory: str | Path) -> Path:
        """Atomically (temp file + rename): a reader never sees half a summary.
        Secrets (in overrides, the loss config, an error message) are masked."""
        return atomic_write_text(Path(directory) / FILENAME, json.dumps(redact(asdict(self)), indent=2, default=float))

    @classmethod
    def read(cls, path: str | Path) -> "RunSummary":
        """From summary.json (or the run directory holding it). Unknown keys are
        ignored, so summaries of newer versions still load."""
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        record = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="milliseconds")


@runtime_checkable
class SummaryContributor(Protocol):
    """A callback that adds what it measured to the run summary."""

    def contribute(self, summary: RunSummary) -> None: ...
