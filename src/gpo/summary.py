"""The record one training run leaves: `summary.json` in its run directory,
and the same metrics in the W&B run summary.

Written by the run whether it finished or failed; read back by the Hydra
callbacks (which jobs failed), the sweep report and the benchmarks. One
schema, so none of them keeps its own list of keys.
"""

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol, runtime_checkable

from gpo.secrets import redact

FILENAME = "summary.json"
FINISHED, FAILED = "finished", "failed"


@dataclass
class RunSummary:
    loss: str  # the conf/loss option, e.g. "dpo"
    beta: float  # the beta the loss used (after beta_scale)
    seed: int
    status: str = FINISHED  # FINISHED or FAILED
    error: str | None = None  # "<ExceptionType>: <message>" when FAILED
    beta_requested: float | None = None  # beta as given; differs from `beta` under beta_scale
    beta_scale: str = "none"  # none | taylor | link
    overrides: list[str] = field(default_factory=list)  # the job's Hydra overrides
    loss_config: dict = field(default_factory=dict)  # the resolved conf/loss node: rebuilds the loss (link, theory)
    theory: dict[str, float] = field(default_factory=dict)  # GPO families: f0, df0, d2f0, regularisation_scale
    metrics: dict[str, float] = field(default_factory=dict)  # final train/, val/ and eval/ values
    trajectory: list[dict[str, float]] = field(default_factory=list)  # eval/ metrics at "step", through training
    data: dict = field(default_factory=dict)  # per split: pairs kept, truncated, dropped; preference probabilities
    stages: dict = field(default_factory=dict)  # sft / reference: {"status": ..., "seconds": ...}
    time_split: dict[str, float] = field(default_factory=dict)  # wall seconds by stage (gpo/timing.py)
    resumed_from_step: int | None = None  # the checkpoint's step when the run continued one (gpo.checkpoints)
    wall_time_s: float | None = None

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def write(self, directory: str | Path) -> Path:
        """Atomically (temp file + rename): a reader never sees half a summary.
        Secrets (in overrides, the loss config, an error message) are masked."""
        path = Path(directory) / FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{FILENAME}.", delete=False) as tmp:
            json.dump(redact(asdict(self)), tmp, indent=2, default=float)
        os.replace(tmp.name, path)
        return path

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


@runtime_checkable
class SummaryContributor(Protocol):
    """A callback that adds what it measured to the run summary."""

    def contribute(self, summary: RunSummary) -> None: ...
