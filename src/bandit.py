"""Toy bandit experiment of the GPO paper: exact population GPO on a tabular bandit.

    python src/bandit.py [hydra overrides]        (config: conf/bandit.yaml)

Writes into the Hydra run directory:
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

import hydra
import matplotlib

matplotlib.use("Agg")  # figures go to files; there may be no display
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from gpo.bandit import expected_reward, implied_reward, kl, kl_optimum_logits, make_bandit, policy_logits, trajectory
from gpo.config import group_options
from gpo.losses import GPOLoss

OPTIMUM = "pi* (KL-regularised)"


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


def series(rows, data, policy, key):
    chosen = [r for r in rows if r["data"] == data and r["policy"] == policy]
    return np.array([r["beta"] for r in chosen]), np.array([r[key] for r in chosen])


def line_styles(families):
    """Distinct colour and hollow marker per family: several families share a
    solution exactly (e.g. logistic and Savage), and both must stay visible.
    Markers are spaced by distance on screen, so log axes get them evenly too."""
    markers = "osD^vxP*"
    styles = {OPTIMUM: dict(color="black", ls="--", lw=3, alpha=0.5, zorder=0)}
    for i, name in enumerate(families):
        styles[name] = dict(color=plt.cm.tab10(i % 10), marker=markers[i % len(markers)],
                            fillstyle="none", markevery=(0.015 * i, 0.1), ms=6)
    return styles


def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_sweep(path, rows, families, styles, grid):
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    (ax_kl, ax_r), (ax_front, ax_scaled) = axes
    for policy in [OPTIMUM, *families]:
        style = styles[policy]
        betas, kls = series(rows, "full", policy, "kl")
        _, rewards = series(rows, "full", policy, "reward")
        keep = np.isin(betas, grid)
        ax_kl.plot(betas[keep], kls[keep], label=policy, **style)
        ax_r.plot(betas[keep], rewards[keep], label=policy, **style)
        ax_front.plot(kls[keep], rewards[keep], label=policy, **style)
        if policy in families and families[policy].regularisation_scale > 0:
            scaled = betas[keep] * families[policy].regularisation_scale
            ax_scaled.plot(scaled, kls[keep], label=policy, **style)
    ax_kl.set(xscale="log", yscale="log", xlabel="beta", ylabel="KL(pi || pi_ref) [nats]",
              title="(a) KL of the exact solution")
    ax_r.set(xscale="log", xlabel="beta", ylabel="expected true reward E_pi[r]",
             title="(b) true reward of the exact solution")
    ax_front.set(xscale="log", xlabel="KL(pi || pi_ref) [nats]", ylabel="expected true reward E_pi[r]",
                 title="(c) reward-KL trade-off (beta eliminated)")
    ax_scaled.set(xscale="log", yscale="log", xlabel="beta * f''(0) / |f'(0)|",
                  ylabel="KL(pi || pi_ref) [nats]", title="(d) KL against rescaled beta (hinge: f''(0)=0)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    ax_kl.legend(fontsize=8)
    fig.suptitle("GPO families on a 4-action bandit: Bradley-Terry labels, every pair in the data")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_trajectories(path, paths, styles, bound, cfg):
    steps = np.arange(1, cfg.trajectory.steps + 1)
    fig, (ax_kl, ax_margin) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, run in paths.items():
        ax_kl.plot(steps, run["kl"][1:], label=name, **styles[name])
        ax_margin.plot(steps, run["margin"][1:], label=name, **styles[name])
    ax_kl.axhline(bound, color="black", ls="--", label="log 1/pi_ref(best): full collapse")
    ax_margin.axhline(1.0, color="grey", ls=":", label="t = 1")
    ax_kl.set(xscale="log", xlabel="gradient-descent step", ylabel="KL(pi || pi_ref) [nats]",
              title="(a) KL keeps growing only where f has no minimum")
    ax_margin.set(xscale="log", xlabel="gradient-descent step", ylabel="min over data of beta * rho(y_w, y_l)",
                  title="(b) smallest margin on the data")
    for ax in (ax_kl, ax_margin):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Deterministic labels, beta = {cfg.trajectory.beta}, "
                 f"gradient descent with step size {cfg.trajectory.lr}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_no_data(path, rows, families, styles, grid, cfg, support_best):
    name = cfg.no_data_action
    fig, (ax_ratio, ax_r) = plt.subplots(1, 2, figsize=(11, 4.5))
    for policy in [OPTIMUM, *families]:
        style = styles[policy]
        betas, ratio = series(rows, "no_data", policy, f"ratio_{name}")
        _, rewards = series(rows, "no_data", policy, "reward")
        keep = np.isin(betas, grid)
        ax_ratio.plot(betas[keep], ratio[keep], label=policy, **style)
        ax_r.plot(betas[keep], rewards[keep], label=policy, **style)
    ax_ratio.axhline(1.0, color="grey", ls=":", label="unchanged from pi_ref")
    ax_r.axhline(support_best, color="grey", ls=":", label="best reward among actions with data")
    ax_ratio.set(xscale="log", yscale="log", xlabel="beta", ylabel=f"pi({name}) / pi_ref({name})",
                 title=f"(a) action {name}: moved only by the normaliser")
    ax_r.set(xscale="log", xlabel="beta", ylabel="expected true reward E_pi[r]",
             title="(b) true reward")
    for ax in (ax_ratio, ax_r):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Offline data without action {name} (Bradley-Terry labels on the other pairs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    for policy, run in paths.items():
        cells = "  ".join(f"step {s}: {run['kl'][s]:.4f}" for s in cfg.trajectory.summary_steps
                          if s <= cfg.trajectory.steps)
        lines.append(f"  {policy:22s} {cells}   final margin {run['margin'][-1]:.2f}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="bandit")
def main(cfg: DictConfig) -> None:
    start = time.perf_counter()
    out = Path(HydraConfig.get().runtime.output_dir)
    bandit = make_bandit(cfg.reward, cfg.ref_logits, cfg.mu)
    watched = list(cfg.actions).index(cfg.no_data_action)
    families = gpo_families(cfg.families)
    styles = line_styles(families)

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
              [{"policy": name, "step": int(s), "kl": run["kl"][s].item(), "reward": run["reward"][s].item(),
                "min_margin": run["margin"][s].item()} for name, run in paths.items() for s in [0, *saved]])
    plot_sweep(out / "bandit_kl_reward_vs_beta.png", rows, families, styles, grid)
    plot_trajectories(out / "bandit_kl_vs_steps.png", paths, styles, bound, cfg)
    plot_no_data(out / "bandit_no_data_action.png", rows, families, styles, grid, cfg, support_best)

    text = summary(rows, {"full": full_u, "no_data": no_data_u}, families, paths, cfg, bandit, bound)
    (out / "bandit_summary.txt").write_text(text + "\n")
    print(text)
    print(f"\nwrote {out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
