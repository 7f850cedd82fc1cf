"""The paper's toy bandit: exact population GPO on a tabular bandit (solver),
and the experiment src/bandit.py runs on it (experiment: the beta sweep, the
trajectories, CSV files and the table; plots: the figures). docs/bandit.md."""
