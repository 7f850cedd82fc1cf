"""The toy bandit experiment of the GPO paper (src/bandit.py runs it;
config: conf/bandit.yaml): every GPO family of conf/loss solved exactly over
a beta grid, with and without data on one action, and optimised by gradient
descent with deterministic labels. `run(cfg, out)` writes into `out`:

  bandit_sweep.csv               per (data, policy, beta): KL, reward, no-data ratio, pi
  bandit_trajectory.csv          KL, reward, margin along gradient descent (log-spaced steps)
  bandit_summary.txt             the table printed at the end
  bandit_kl_reward_vs_beta.png   KL and reward of each family's solution against beta
  bandit_kl_vs_steps.png         KL along optimisation with deterministic labels
  bandit_no_data_action.png      what the loss does to an action the data never shows
"""

import csv
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from gpo.bandit.solver import (
    OPTIMUM,
    expected_reward,
    implied_reward,
    kl,
    kl_optimum_logits,
    make_bandit,
    policy_logits,
    trajectory,
)
from gpo.infra.config import group_options
from gpo.losses import GPOLoss


def gpo_families(names=None) -> dict:
    """The GPO families of conf/loss (every option whose loss is a function of
    beta * rho alone), or the opt-in subset `names`."""
    losses = {name: instantiate(node) for name, node in group_options("loss").items() if names is None or name in names}
    return {name: loss for name, loss in losses.items() if isinstance(loss, GPOLoss)}


def evaluate(bandit, logits, betas, policy, data, actions, watched):
    """One CSV row per beta for the policies softmax(logits[i])."""
    log_pi = F.log_softmax(logits, dim=-1)
    log_opt = F.log_softmax(kl_optimum_logits(bandit, torch.as_tensor(betas).reshape(-1, 1)), dim=-1)
    log_ref = F.log_softmax(bandit.ref_logits, dim=-1)
    kls, rewards = kl(logits, bandit), expected_reward(logits, bandit)
    rows = []
    for i, beta in enumerate(betas):
        row = {"data": data, "policy": policy, "beta": float(beta),
               "kl": kls[i].item(), "reward": rewards[i].item(),
               f"ratio_{actions[watched]}": (log_pi[i, watched] - log_ref[watched]).exp().item(),
               f"theta_shift_{actions[watched]}": (logits[i, watched] - bandit.ref_logits[watched]).item(),
               "max_abs_log_ratio_to_opt": (log_pi[i] - log_opt[i]).abs().max().item()}
        row.update({f"pi_{a}": p.item() for a, p in zip(actions, log_pi[i].exp())})
        rows.append(row)
    return rows


def sweep(bandit, families, betas, cfg, data, watched):
    """Every family's exact solution over the beta grid, plus pi* for reference."""
    optimum = kl_optimum_logits(bandit, torch.as_tensor(betas).reshape(-1, 1))
    rows = evaluate(bandit, optimum, betas, OPTIMUM, data, cfg.actions, watched)
    implied = {}
    for name, loss in families.items():
        implied[name] = implied_reward(bandit, loss, cfg.deterministic, **cfg.solver)
        logits = policy_logits(bandit, implied[name], betas)
        rows += evaluate(bandit, logits, betas, name, data, cfg.actions, watched)
    return rows, implied


def pick(rows, data, policy, beta, key):
    (row,) = [r for r in rows if r["data"] == data and r["policy"] == policy and np.isclose(r["beta"], beta)]
    return row[key]


def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def vec(values):
    return "[" + " ".join(f"{x:+.3f}" for x in values.tolist()) + "]"


def summary(rows, implied, families, paths, cfg, bandit, bound):
    name = cfg.no_data_action
    centred = bandit.reward - bandit.reward.mean()
    lines = [f"actions {list(cfg.actions)}, r = {list(cfg.reward)}, "
             f"pi_ref = {[round(p, 3) for p in F.softmax(bandit.ref_logits, -1).tolist()]}",
             f"labels: {'deterministic' if cfg.deterministic else 'Bradley-Terry'}; KL in nats; "
             f"u = implied reward (theta = ref + u/beta); r - mean(r) = {vec(centred)}", ""]
    head = "".join(f"  KL@{b:<5g} R@{b:<5g}" for b in cfg.summary_betas)
    for data, title in [("full", "every pair in the data"), ("no_data", f"no pair with {name}")]:
        lines += [f"== {title} ==", f"{'policy':22s} {'f2/|f1|':>7s} {'u':32s}{head}  max|log pi/pi*|"]
        for policy in [OPTIMUM, *families]:
            scale = f"{families[policy].regularisation_scale:7.2f}" if policy in families else " " * 7
            u = vec(implied[data][policy]) if policy in families else ""
            cells = "".join(f"  {pick(rows, data, policy, b, 'kl'):8.4f} {pick(rows, data, policy, b, 'reward'):7.4f}"
                            for b in cfg.summary_betas)
            worst = max(r["max_abs_log_ratio_to_opt"] for r in rows if r["data"] == data and r["policy"] == policy)
            lines.append(f"{policy:22s} {scale} {u:32s}{cells}  {worst:.2e}")
        lines.append("")
    lines += [f"pi({name})/pi_ref({name}) with no data on {name}:"]
    for policy in [OPTIMUM, *families]:
        cells = "  ".join(f"beta={b:g}: {pick(rows, 'no_data', policy, b, f'ratio_{name}'):.4f}"
                          for b in cfg.summary_betas)
        shift = max(abs(r[f"theta_shift_{name}"]) for r in rows if r["data"] == "no_data" and r["policy"] == policy)
        lines.append(f"  {policy:22s} {cells}   max|theta_{name} - ref| = {shift:.1e}")
    lines += ["", f"KL along gradient descent, deterministic labels, beta={cfg.trajectory.beta} "
                  f"(collapse bound {bound:.4f}):"]
    for policy, descent in paths.items():
        cells = "  ".join(f"step {s}: {descent['kl'][s]:.4f}" for s in cfg.trajectory.summary_steps
                          if s <= cfg.trajectory.steps)
        lines.append(f"  {policy:22s} {cells}   final margin {descent['margin'][-1]:.2f}")
    return "\n".join(lines)


def run(cfg: DictConfig, out: Path) -> str:
    """The whole experiment; returns the summary table (also written to bandit_summary.txt)."""
    from gpo.bandit import plots  # matplotlib: only when figures are drawn

    start = time.perf_counter()
    bandit = make_bandit(cfg.reward, cfg.ref_logits, cfg.mu)
    watched = list(cfg.actions).index(cfg.no_data_action)
    families = gpo_families(cfg.families)
    styles = plots.line_styles(families)

    grid = np.logspace(cfg.betas.log10_low, cfg.betas.log10_high, cfg.betas.num)
    # Solve on the grid plus the table's betas; plot the grid alone, evenly spaced.
    betas = np.unique(np.round(np.concatenate([grid, list(cfg.summary_betas)]), 12))
    grid = betas[np.isin(betas, np.round(grid, 12))]
    full_rows, full_u = sweep(bandit, families, betas, cfg, "full", watched)
    no_data_rows, no_data_u = sweep(bandit.without_action(watched), families, betas, cfg, "no_data", watched)
    rows = full_rows + no_data_rows

    t = cfg.trajectory
    paths = {name: trajectory(bandit, loss, t.beta, t.steps, t.lr, t.deterministic)
             for name, loss in families.items()}
    bound = -F.log_softmax(bandit.ref_logits, -1)[bandit.reward.argmax()].item()
    support_best = bandit.reward[bandit.without_action(watched).support].max().item()

    write_csv(out / "bandit_sweep.csv", rows)
    saved = np.unique(np.geomspace(1, t.steps, 200).astype(int))
    write_csv(out / "bandit_trajectory.csv",
              [{"policy": name, "step": int(s), "kl": descent["kl"][s].item(), "reward": descent["reward"][s].item(),
                "min_margin": descent["margin"][s].item()} for name, descent in paths.items() for s in [0, *saved]])
    plots.plot_sweep(out / "bandit_kl_reward_vs_beta.png", rows, families, styles, grid)
    plots.plot_trajectories(out / "bandit_kl_vs_steps.png", paths, styles, bound, cfg)
    plots.plot_no_data(out / "bandit_no_data_action.png", rows, families, styles, grid, cfg, support_best)

    text = summary(rows, {"full": full_u, "no_data": no_data_u}, families, paths, cfg, bandit, bound)
    (out / "bandit_summary.txt").write_text(text + "\n")
    print(text)
    print(f"\nwrote {out} in {time.perf_counter() - start:.1f} s")
    return text
