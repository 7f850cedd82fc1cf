"""Generalized Preference Optimization (Tang et al. 2024) with Hydra and Lightning.

The parts, lowest first; each imports only parts above it in this list
(tests/test_layout.py checks it):

    infra        shared plumbing: errors, config, cache, summary, secrets, console,
                 tracking (W&B), csv_logs, files, interrupts, run_lock, hydra_callbacks (around every job)
    model        building the policy, running it (device, eval_mode), log-probs, export
    losses       every preference loss behind one interface; GPO families are their f;
                 scaling (beta_scale)
    data         sources of pairs, tokenization, batching, a resumable data order, the data module
    reference    the initial policy (model + SFT stage) and pi_ref from it
    training     the LightningModule (policy, reference, loss), checkpoints, preemption, identity, resume,
                 timing (the run's time split)
    evaluation   sampling-based KL / gold reward / win rate, through training; the reference's
                 samples, drawn once and cached
    report       the sweep report: tables, best beta, theory, plots
    bandit       the paper's toy bandit, solved exactly, and its experiment

The top composes them: `run` (one training run: what src/train.py runs) and
`sweeps` (the end of a sweep: failed jobs listed, the report written; Optuna
studies and the pruning callback a job reports to its trial through).
"""
