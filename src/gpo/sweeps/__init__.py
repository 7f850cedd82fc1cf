"""Sweeps, on top of single runs: the end of a multirun (`outcomes`: which
jobs finished, were pruned, failed or left nothing; the sweep report written),
Optuna studies (`study`: storage, search space, resume, outcomes) and the
callback through which a job reports to its trial and is pruned (`pruning`).
The Optuna sweeper itself is a Hydra plugin: src/hydra_plugins/gpo_sweepers."""
