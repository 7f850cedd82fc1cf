"""Generalized Preference Optimization (Tang et al. 2024) with Hydra and Lightning.

    run          one training run composed from the config (what src/train.py runs)
    losses       every preference loss behind one interface; GPO families are their f
    data         sources of pairs, tokenization, the data module
    reference    the initial policy (model + SFT stage) and pi_ref from it
    module       the LightningModule: policy, reference, loss
    evaluation   sampling-based KL / gold reward / win rate, through training
    report       the sweep report: tables, best beta, theory, plots
    bandit       the paper's toy bandit, solved exactly
    cache, summary, config, console, hydra_callbacks, wandb_offline: shared plumbing
"""
