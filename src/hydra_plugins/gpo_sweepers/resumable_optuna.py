"""The Optuna sweeper of hparams_search=optuna, resumable (logic in gpo/optuna_study.py)."""

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

from gpo.optuna_study import resume_study


class ResumableOptunaSweeper(OptunaSweeper):
    """hydra-optuna-sweeper's sweeper, continuing a study kept in persistent
    storage: run again into the same sweep directory, it runs only the trials
    still missing from `n_trials` (the study's total, not a number to add),
    retries the trials a killed sweep left running, and numbers its jobs after
    the study's existing ones (their directories are kept)."""

    def sweep(self, arguments):
        impl = self.sweeper
        if impl.storage:
            impl.n_trials, impl.job_idx = resume_study(impl.storage, impl.study_name, impl.n_trials)
        return super().sweep(arguments)
