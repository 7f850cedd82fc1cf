"""Pruning in an Optuna study: the job reports its evaluations to its trial and
stops training when the study's pruner says so.

conf/hparams_search/optuna.yaml adds this callback (callbacks.optuna_pruning);
the sweeper gives each job its trial number (`optuna_trial=<n>`, the key
`gpo.sweeps.study.TRIAL_KEY`). Without a trial number (a run outside a study)
the callback does nothing.

What is reported: the run's objective (the first of `optimized_metric` it
measures, as src/train.py returns it), at every sample evaluation during
training (callbacks.sample_evaluation.every_n_steps: eval/ metrics, e.g. the
gold win rate) and at every validation (val/ metrics), at its training step.
Step 0 is not reported: every trial starts from the same policy there. A
pruned run stops at the end of that step, cleanly: its final evaluation and
summary are written, with status "pruned"; the sweeper then tells the trial
PRUNED (Optuna keeps its last reported value).
"""

import logging
from collections.abc import Sequence

import optuna
import pytorch_lightning as pl

from gpo.evaluation import SampleEvaluation
from gpo.infra.summary import PRUNED, RunSummary
from gpo.sweeps.study import PRUNED_AT, open_trial

log = logging.getLogger(__name__)


class OptunaPruning(pl.Callback):
    """Reports to trial `trial` of study `study_name` in `storage` and asks
    `pruner` whether to stop. Must come after callbacks.sample_evaluation
    (the preset adds it last), so that it sees the evaluation of the step."""

    def __init__(self, storage: str | None, study_name: str | None, trial: int | None,
                 pruner: optuna.pruners.BasePruner | None = None, objective: str | Sequence[str] = "val/loss"):
        self.storage, self.study_name, self.number = storage, study_name, trial
        self.pruner = pruner if pruner is not None else optuna.pruners.NopPruner()
        self.objectives = [objective] if isinstance(objective, str) else list(objective)
        self.metric: str | None = None  # the objective this run reports: the first of `objectives` it measures
        self.reported: dict[int, float] = {}  # step -> value (rank 0)
        self.decided_step = -1  # the last step an evaluation was decided on (every rank)
        self.pruned_at: int | None = None
        self.trial: optuna.trial.Trial | None = None
        self.evaluation: SampleEvaluation | None = None

    @property
    def active(self) -> bool:
        return self.number is not None and self.storage is not None

    def on_train_start(self, trainer, module):
        self.evaluation = next((c for c in trainer.callbacks if isinstance(c, SampleEvaluation)), None)
        if not (self.active and trainer.is_global_zero):
            return
        try:
            self.trial = open_trial(self.storage, self.study_name, self.number, self.pruner)
        except Exception as error:  # the run is worth finishing even if its study cannot be reached
            log.warning("Optuna trial %s of %s in %s: cannot be opened (%s: %s); this run is not reported "
                        "nor pruned", self.number, self.study_name, self.storage, type(error).__name__, error)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step, every = trainer.global_step, self.evaluation.every_n_steps if self.evaluation else None
        # The same test on every rank (a decision is broadcast from rank 0); once per step under accumulation.
        if not self.active or not every or step % every or step == self.decided_step:
            return
        self.decided_step = step
        latest = self.evaluation.trajectory[-1] if self.evaluation.trajectory else {}
        self._decide(trainer, step, latest if latest.get("step") == step else {})

    def on_validation_end(self, trainer, module):
        if self.active and not trainer.sanity_checking:
            values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self._decide(trainer, trainer.global_step, values)

    def on_train_end(self, trainer, module):
        """The final evaluation too (no decision left to make): later trials compare with it."""
        if self.active and trainer.is_global_zero and self.pruned_at is None and self.evaluation is not None:
            latest = self.evaluation.trajectory[-1] if self.evaluation.trajectory else {}
            if latest:
                self._report(latest["step"], latest)

    def _decide(self, trainer, step: int, values: dict) -> None:
        prune = trainer.is_global_zero and self._report(step, values) and self._should_prune(step)
        if trainer.world_size > 1:  # every rank stops at the same step
            prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            self.pruned_at = step
            trainer.should_stop = True

    def _report(self, step: int, values: dict) -> bool:
        """Report the objective at `step` if `values` has it; whether it did."""
        if self.trial is None or step == 0 or step in self.reported:
            return False
        if self.metric is None:
            self.metric = next((name for name in self.objectives if name in values), None)
            if self.metric is not None:
                log.info("Optuna trial %d: reporting %s", self.number, self.metric)
        if self.metric not in values:
            return False
        value = float(values[self.metric])
        try:
            self.trial.report(value, step)
        except Exception as error:
            self._lost(error)
            return False
        self.reported[step] = value
        return True

    def _should_prune(self, step: int) -> bool:
        try:
            if not self.trial.should_prune():
                return False
            self.trial.set_user_attr(PRUNED_AT, step)  # how the sweeper learns it (gpo.sweeps.study.tell_outcome)
        except Exception as error:
            self._lost(error)
            return False
        log.info("Optuna trial %d pruned at step %d (%s %.4g): training stops here", self.number, step,
                 self.metric, self.reported[step])
        return True

    def _lost(self, error: Exception) -> None:
        """The study's storage failed (locked too long, deleted, the trial
        told finished elsewhere): the run goes on, no longer reported."""
        log.warning("Optuna trial %d: reporting failed (%s: %s); the run goes on, unpruned",
                    self.number, type(error).__name__, error)
        self.trial = None

    def contribute(self, summary: RunSummary) -> None:
        if not self.active:
            return
        summary.stages["optuna"] = {
            "status": "pruned" if self.pruned_at is not None else "reported", "study": self.study_name,
            "trial": self.number, "metric": self.metric, "pruned_at_step": self.pruned_at,
            "reported": [{"step": step, "value": value} for step, value in self.reported.items()],
        }
        if self.pruned_at is not None:
            summary.status = PRUNED
        measured = next((name for name in self.objectives if name in summary.metrics), None)
        if self.metric is not None and measured != self.metric:
            log.warning("Optuna trial %d: pruning compared %s, but the run's objective is %s (evaluations during "
                        "training: callbacks.sample_evaluation.every_n_steps)", self.number, self.metric, measured)
