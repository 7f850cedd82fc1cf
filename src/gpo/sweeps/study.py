"""The Optuna study behind hparams_search=optuna, on Optuna's ask/tell API.

The sweeper (src/hydra_plugins/gpo_sweepers/optuna_sweeper.py) asks the study
for a batch of trials, turns each into Hydra overrides, hands the batch to the
configured launcher and tells the study how each job ended. The logic of that
loop lives here, testable without Hydra's plugin machinery:

- `SearchSpace`: hydra.sweeper.params and the command line's sweeps, in
  Hydra's override grammar (parsed by Hydra's own parser), as Optuna
  distributions;
- `open_storage`, `study_lock`: the study in SQLite in the sweep directory,
  one sweep at a time;
- `check_settings`, `prepare_resume`: a study run again continues to n_trials,
  the trials a killed sweep left RUNNING first, and only with the settings it
  was started with;
- `tell_outcome`: COMPLETE with the job's value, PRUNED, or FAIL;
- `open_trial`: the job's side, its trial re-opened from storage to report
  to (gpo/sweeps/pruning.py).
"""

import fcntl
import functools
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.utils import JobReturn, JobStatus
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from gpo.infra.errors import InputError

log = logging.getLogger(__name__)

TRIAL_KEY = "optuna_trial"  # top-level config key: the number of the trial a job evaluates (set by the sweeper)
PRUNED_AT = "pruned_at_step"  # trial user attribute: the step at which the job's pruner stopped it
RETRY_OF = "retry_of"  # trial user attribute: the interrupted trial this one runs again
SETTINGS = "settings"  # study user attribute: what the study optimises, checked when it is resumed
SQLITE = "sqlite:///"
SQLITE_TIMEOUT_S = 60  # parallel jobs write to one SQLite file: wait for its lock rather than fail
DONE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# ------------------------------------------------------------ search space


@dataclass
class SearchSpace:
    """Overrides that sweep (interval, range, choice, glob) as Optuna
    distributions; the other overrides go to every trial as written."""

    distributions: dict[str, BaseDistribution]  # config key -> distribution (the Optuna parameter name)
    prefixes: dict[str, str]  # config key -> "", "+" or "++", as the override wrote it
    fixed: list[str]  # the non-sweeping overrides, verbatim
    lines: list[str]  # every override that counts (a key's last), verbatim: what the study is run with

    @classmethod
    def parse(cls, overrides: list[str], config_loader=None) -> "SearchSpace":
        """`overrides`: hydra.sweeper.params as `key=value` lines, then the
        command line's; for a key given twice, the later wins. The config
        loader lets `glob(...)` list a config group's options."""
        parser = OverridesParser.create(config_loader=config_loader)
        latest: dict[str, Override] = {}
        for override in parser.parse_overrides(overrides):
            latest.pop(override.key_or_group, None)  # re-inserted: the order follows the winning override
            latest[override.key_or_group] = override
        sweeps = {key: o for key, o in latest.items() if o.is_sweep_override()}
        return cls(distributions={key: distribution(o) for key, o in sweeps.items()},
                   prefixes={key: o.get_key_element().removesuffix(key) for key, o in sweeps.items()},
                   fixed=[o.input_line for key, o in latest.items() if key not in sweeps],
                   lines=[o.input_line for o in latest.values()])

    def overrides(self, params: dict) -> list[str]:
        """A trial's overrides: its parameters (from `trial.params`) and the fixed ones."""
        swept = [f"{self.prefixes[key]}{key}={Transformer.str(params[key])}" for key in self.distributions]
        return swept + self.fixed


def distribution(override: Override) -> BaseDistribution:
    """One sweep override as an Optuna distribution:

        interval(a, b)             float, uniform in [a, b]
        tag(log, interval(a, b))   float, log-uniform
        range(a, b[, step])        int (or float) on the range's grid, b excluded as in Hydra
        tag(log, range(a, b))      int, log-uniform (step 1)
        choice(...), glob(...)     categorical
    shuffle(...) is accepted and means nothing: Optuna chooses the order.
    """
    value, where = override.value(), override.input_line
    tags = set(getattr(value, "tags", ()))
    if tags - {"log"}:
        raise InputError(f"{where}: unknown tag {', '.join(sorted(tags - {'log'}))} (the Optuna sweeper knows `log`)")
    log_scale = "log" in tags
    if getattr(value, "shuffle", False):  # order means nothing to Optuna; a fixed one keeps a resumed study's space
        value.shuffle = False
    if isinstance(value, IntervalSweep):  # Hydra parses both ends as floats
        if log_scale and value.start <= 0:
            raise InputError(f"{where}: a log scale needs a positive lower end")
        return FloatDistribution(value.start, value.end, log=log_scale)
    if isinstance(value, RangeSweep):
        grid = list(override.sweep_iterator())
        if not grid:
            raise InputError(f"{where}: the range is empty")
        numbers = (value.start, value.stop, value.step)
        if log_scale and (value.step != 1 or any(isinstance(x, float) for x in numbers)):
            raise InputError(f"{where}: a log-scale range must be of integers with step 1")
        if any(isinstance(x, float) for x in numbers):
            return FloatDistribution(grid[0], grid[-1], step=value.step)
        return IntDistribution(grid[0], grid[-1], step=value.step, log=log_scale)
    if log_scale:
        raise InputError(f"{where}: `log` applies to interval(...) and range(...) only")
    return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))


# ------------------------------------------------------------ storage


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's SQL storage (SQLite in the sweep directory by default;
    any SQLAlchemy URL works). The directory is created: the sweep directory
    does not exist yet when a new study starts."""
    if url.startswith(SQLITE):
        Path(url.removeprefix(SQLITE)).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
    return optuna.storages.RDBStorage(url)


@contextmanager
def study_lock(url: str) -> Iterator[None]:
    """Held while a sweep runs the study kept in the SQLite file `url`: a
    second sweep on it (which would fail the first one's running trials as
    interrupted) stops at once, naming the file. The OS drops the lock when
    the process dies, so a killed sweep leaves none behind."""
    if not url.startswith(SQLITE):  # a database server: its users coordinate
        yield
        return
    path = Path(url.removeprefix(SQLITE) + ".lock")
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another sweep is running the study in {url.removeprefix(SQLITE)} (lock {path}); "
                             "wait for it to end, or use another hydra.sweep.dir") from None
        yield


# ------------------------------------------------------------ resume


def sampler_for(storage: optuna.storages.BaseStorage, study_name: str, factory: functools.partial):
    """The sampler (configured with `_partial_: true`) for a study that may
    hold trials already. A seeded sampler made again with its seed would draw
    the first run's random points again; its seed moves on by the number of
    trials the study holds, so a resumed study explores new points and is
    still reproducible."""
    held = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    seed, done = factory.keywords.get("seed"), held.get(study_name, 0)
    return factory(seed=seed + done) if seed is not None and done else factory()


def check_settings(study: optuna.Study, settings: dict) -> None:
    """Record what the study optimises (objective, search space, fixed
    overrides) when it starts; when it is resumed, stop if they changed, since
    trials of different settings would then be ranked together."""
    stored = study.user_attrs.get(SETTINGS)
    if stored is None:
        study.set_user_attr(SETTINGS, settings)
        return
    changed = [key for key in sorted(set(stored) | set(settings)) if stored.get(key) != settings.get(key)]
    if changed:
        details = "; ".join(_difference(key, stored.get(key), settings.get(key)) for key in changed)
        raise InputError(f"study {study.study_name!r} was started with other settings ({details}); "
                         "run it with the same ones, or start a new study in another hydra.sweep.dir")


def _difference(key: str, was, now) -> str:
    if isinstance(was, list) and isinstance(now, list):  # overrides: only those that differ
        was, now = [x for x in was if x not in now], [x for x in now if x not in was]
    return f"{key}: was {was}, now {now}"


def prepare_resume(study: optuna.Study, n_trials: int) -> int:
    """The trials still to run for the study to hold `n_trials` (its total,
    not a number to add). Trials a killed sweep left RUNNING are told FAIL and
    their parameters enqueued, so they run again first; one whose job was
    pruned before the sweep could tell it is told PRUNED. Interrupted trials
    do not count towards n_trials; failed ones do."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    interrupted = 0
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        if PRUNED_AT in trial.user_attrs:
            study.tell(trial.number, state=TrialState.PRUNED)
            continue
        study.tell(trial.number, state=TrialState.FAIL)
        interrupted += 1
        if trial.number not in retried:
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
            retried.add(trial.number)
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in DONE and t.number not in retried for t in trials)
    remaining = max(n_trials - done, 0)
    if trials:
        log.info("Study %s: %d of %d trials done, %d interrupted (run again first), %d to run",
                 study.study_name, done, n_trials, interrupted, remaining)
    return remaining


def _retried(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """The numbers of the interrupted trials that were enqueued to run again."""
    return {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Finished trials by outcome; 'interrupted': failed because a killed sweep left them running (run again)."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    counts = {state.name.lower(): sum(t.state == state and t.number not in retried for t in trials) for state in DONE}
    return {**counts, "interrupted": len(retried)}


# ------------------------------------------------------------ outcomes


def tell_outcome(study: optuna.Study, trial: optuna.trial.Trial, job: JobReturn) -> TrialState:
    """Tell the study how the trial's job ended: PRUNED if its pruner stopped
    it (Optuna keeps the last reported value as the trial's value), COMPLETE
    with the objective the job returned, FAIL if it returned none (the job
    failed, or measured none of optimized_metric) or not a finite number."""
    current = study.get_trials(deepcopy=False)[trial.number]  # the job wrote to storage: read it back
    if PRUNED_AT in current.user_attrs:
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    where = job.hydra_cfg.hydra.runtime.output_dir if job.hydra_cfg is not None else "?"
    if job.status != JobStatus.COMPLETED:
        try:
            job.return_value  # noqa: B018 (raises the job's exception)
        except Exception as error:
            log.warning("Trial %d failed (%s): %s: %s", trial.number, where, type(error).__name__, error)
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    value = job.return_value
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        log.warning("Trial %d failed: the job returned %r as its objective (%s: its summary.json says why)",
                    trial.number, value, where)
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    study.tell(trial, float(value))
    return TrialState.COMPLETE


def results(study: optuna.Study, objective) -> dict:
    """What optimization_results.yaml holds: the best trial and the counts."""
    out = {"name": "optuna", "study": study.study_name, "objective": objective, "trials": trial_counts(study)}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        out |= {"best_trial": study.best_trial.number, "best_params": study.best_params, "best_value": study.best_value}
    return out


# ------------------------------------------------------------ the job's side


def open_trial(storage: str, study_name: str, number: int, pruner: optuna.pruners.BasePruner) -> optuna.trial.Trial:
    """The trial `number` of a stored study, re-opened in the job that
    evaluates it, to report to and ask `should_prune()`.

    Optuna has no public "trial by number" for a process other than the one
    that asked it (optuna issues #2987, #2213). The narrowest path through
    public names: the storage's documented lookups give the trial's id from
    the study name and the trial number, and `optuna.trial.Trial(study,
    trial_id)` is the public constructor that `Study.optimize` uses itself.
    The study is loaded with the sweep's pruner, which `should_prune` asks,
    and a RandomSampler: this side never samples."""
    backend = open_storage(storage)
    trial_id = backend.get_trial_id_from_study_id_trial_number(backend.get_study_id_from_name(study_name), number)
    study = optuna.load_study(study_name=study_name, storage=backend, pruner=pruner,
                              sampler=optuna.samplers.RandomSampler())
    return optuna.trial.Trial(study, trial_id)
