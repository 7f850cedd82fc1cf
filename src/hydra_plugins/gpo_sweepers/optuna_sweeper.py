"""The project's Optuna sweeper (hydra/sweeper=optuna, selected by
hparams_search=optuna): Optuna's ask/tell loop around any Hydra launcher.

Each round asks the study for `n_jobs` trials, hands their overrides to the
configured launcher as one batch (as Hydra's BasicSweeper hands its grid),
and tells the study how each job ended. The study lives in `storage` (SQLite
in the sweep directory): the same command run again into that directory
continues it up to `n_trials`. Job numbers are trial numbers. The logic is in
gpo/sweeps/study.py; jobs report to their trial through gpo/sweeps/pruning.py.
"""

import functools
import logging
import sys
from pathlib import Path

import optuna
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from gpo.infra.errors import InputError
from gpo.sweeps.study import (
    TRIAL_KEY,
    SearchSpace,
    check_settings,
    open_storage,
    prepare_resume,
    results,
    sampler_for,
    study_lock,
    tell_outcome,
    trial_counts,
)

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: functools.partial, pruner: optuna.pruners.BasePruner | None,
                 direction: str, storage: str, study_name: str, n_trials: int, n_jobs: int = 1,
                 max_failure_rate: float = 0.5, params: DictConfig | None = None):
        """`sampler`: a sampler factory (`_partial_: true`, gpo.sweeps.study.sampler_for);
        `storage`: an SQLAlchemy URL (resumable; there is no in-memory
        study, since jobs in other processes report to it); `n_trials`: the
        study's total; `max_failure_rate`: the sweep stops once more than this
        share of n_trials has failed; `params`: the search space, one Hydra
        sweep override per key (gpo.sweeps.study.distribution)."""
        if not storage:
            raise InputError("hydra.sweeper.storage: the Optuna sweeper needs a storage URL (default: "
                             "sqlite:///${hydra.sweep.dir}/optuna.db)")
        if n_trials < 1 or n_jobs < 1 or not 0 <= max_failure_rate <= 1:
            raise InputError(f"hydra.sweeper: n_trials and n_jobs must be >= 1 and max_failure_rate in [0, 1], got "
                             f"{n_trials}, {n_jobs}, {max_failure_rate}")
        self.sampler, self.pruner, self.direction = sampler, pruner, direction
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = {str(k): str(v) for k, v in (params or {}).items()}

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        try:
            self._sweep(arguments)
        except InputError as error:  # bad input: one line, no traceback (as src/train.py does for a run)
            sys.exit(f"error: {error}")

    def _sweep(self, arguments: list[str]) -> None:
        space = SearchSpace.parse([f"{k}={v}" for k, v in self.params.items()] + list(arguments),
                                  self.hydra_context.config_loader)
        if not space.distributions:
            raise InputError("hparams_search=optuna: nothing to search (hydra.sweeper.params has no sweep override)")
        # One sampled point composed first: a bad override stops here, before the study records anything.
        probe = optuna.create_study(sampler=optuna.samplers.RandomSampler()).ask(space.distributions)
        self.validate_batch_is_legal([space.overrides(probe.params)])
        objective = self.config.get("optimized_metric")
        if OmegaConf.is_config(objective):
            objective = OmegaConf.to_container(objective)
        with study_lock(self.storage):
            storage = open_storage(self.storage)
            study = optuna.create_study(storage=storage, study_name=self.study_name, pruner=self.pruner,
                                        sampler=sampler_for(storage, self.study_name, self.sampler),
                                        direction=self.direction, load_if_exists=True)
            check_settings(study, {"objective": objective, "overrides": space.lines})
            remaining = prepare_resume(study, self.n_trials)
            log.info("Optuna study %s in %s: %s %s over %s; %d trials to run, %d at a time", study.study_name,
                     self.storage, self.direction, objective, ", ".join(space.distributions), remaining, self.n_jobs)
            while remaining > 0:
                self._run_batch(study, space, min(self.n_jobs, remaining))
                remaining -= min(self.n_jobs, remaining)
            summary = results(study, objective)
        OmegaConf.save(OmegaConf.create(summary), Path(self.config.hydra.sweep.dir) / "optimization_results.yaml")
        log.info("Optuna study %s: %s; best %s", study.study_name, summary["trials"],
                 f"{summary['best_value']:.4g} with {summary['best_params']}" if "best_value" in summary
                 else "none (no trial completed)")

    def _run_batch(self, study: optuna.Study, space: SearchSpace, size: int) -> None:
        trials = [study.ask(space.distributions) for _ in range(size)]
        first = trials[0].number
        if [t.number for t in trials] != list(range(first, first + size)):  # job number = trial number
            raise InputError(f"study {study.study_name!r}: another process is asking trials of it")
        batch = [[*space.overrides(t.params), f"++{TRIAL_KEY}={t.number}"] for t in trials]
        try:
            self.validate_batch_is_legal(batch)  # e.g. a choice that names no config: before any job starts
        except Exception:
            for trial in trials:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        for trial, job in zip(trials, self.launcher.launch(batch, initial_job_idx=first)):
            tell_outcome(study, trial, job)
        failed = trial_counts(study)["fail"]
        if failed > self.max_failure_rate * self.n_trials:
            raise RuntimeError(f"Optuna study {study.study_name!r} stopped: {failed} of its {self.n_trials} trials "
                               f"failed (more than hydra.sweeper.max_failure_rate={self.max_failure_rate}); the "
                               "failed jobs' summary.json files say why")
