"""Optuna studies (hparams_search=optuna): the study the project's Hydra
sweeper runs (`study`: storage, search space, resume, outcomes) and the
callback through which a job reports to its trial and is pruned (`pruning`).
The sweeper itself is a Hydra plugin: src/hydra_plugins/gpo_sweepers."""
