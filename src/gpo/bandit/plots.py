"""The bandit experiment's figures (docs/figures/bandit_*.png): each family's
exact solution against beta, KL along gradient descent, and an action the
data never shows."""

import matplotlib

matplotlib.use("Agg")  # figures go to files; there may be no display
import matplotlib.pyplot as plt
import numpy as np

from gpo.bandit.solver import OPTIMUM


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
