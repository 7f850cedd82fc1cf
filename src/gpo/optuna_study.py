"""Resuming an Optuna study kept in persistent storage (an SQLite file in the
sweep directory by default: conf/hparams_search/optuna.yaml). Used by the
sweeper in src/hydra_plugins/gpo_sweepers; optuna 2.10's SQL storage needs
SQLAlchemy < 2 (pinned in requirements.txt)."""

import logging
from pathlib import Path

log = logging.getLogger(__name__)

SQLITE = "sqlite:///"


def resume_study(storage: str, study_name: str, n_trials: int) -> tuple[int, int]:
    """(trials still to run, the next job number) for the study `study_name`
    in `storage`, so that it ends with `n_trials` trials. Trials left RUNNING
    (their sweep was killed) are marked failed and their parameters enqueued,
    so they run again first. Assumes no other sweep is running this study."""
    import optuna  # only when a study runs

    if storage.startswith(SQLITE):  # the sweep directory does not exist yet when the study is created
        Path(storage[len(SQLITE):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # a new study
        return n_trials, 0
    state = optuna.trial.TrialState
    stale = [t for t in study.trials if t.state == state.RUNNING]
    for trial in stale:
        study._storage.set_trial_state(trial._trial_id, state.FAIL)
        study.enqueue_trial(trial.params)
    stale_ids = {t._trial_id for t in stale}
    done = sum(t.state in (state.COMPLETE, state.PRUNED, state.FAIL) and t._trial_id not in stale_ids
               for t in study.trials)
    remaining = max(n_trials - done, 0)
    log.info("Study %s in %s: %d of %d trials done, %d interrupted (run again), %d to run",
             study_name, storage, done, n_trials, len(stale), remaining)
    return remaining, len(study.trials)
