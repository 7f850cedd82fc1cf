"""Figures and the peak table of the emergent testbed's DPO sweep over proxy
sizes N (docs/reproduction.md, "The emergent testbed"): gold win rate and gold
reward against KL, one curve per N (seed means, +- standard error over seeds),
with the training-free exact tilt (sweeps/proxy_calibration.py) dashed.

    python sweeps/proxy_figures.py outputs/multirun/proxy_overoptimisation/pilot_dpo docs/figures/proxy
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # gpo, as src/train.py finds it


import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gpo.data.sources import LetterCountProxy, ProxyPreferences  # noqa: E402
from gpo.report import aggregate, load_summaries  # noqa: E402
from gpo.report.load import finished  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_calibration import tilt_curve  # noqa: E402

KEY = "data.source.proxy.num_pairs"


def peak_table(table) -> str:
    """Per N: the best grid beta by win rate, its KL and win rate, and how far it stands above both ends
    (difference / combined standard error of the two seed means)."""
    lines = ["| N | seeds | best grid β | win rate there | KL there | smallest β: win rate (SEs below the peak) "
             "| largest β: win rate (SEs below) |", "|---|---|---|---|---|---|---|"]
    for n, group in table.groupby(KEY):
        group = group.sort_values("beta")
        best = group.loc[group["eval/win_rate"].idxmax()]
        ends = []
        for end in (group.iloc[0], group.iloc[-1]):
            gap = best["eval/win_rate"] - end["eval/win_rate"]
            se = np.hypot(best["eval/win_rate_stderr"], end["eval/win_rate_stderr"])
            ends.append(f"{end['eval/win_rate']:.3f} (β {end['beta']:g}: {gap / se:+.1f})")
        lines.append(f"| {int(n)} | {int(best['n_finished'])} | {best['beta']:g} | {best['eval/win_rate']:.3f} ± "
                     f"{best['eval/win_rate_stderr']:.3f} | {best['eval/kl']:.2f} | {ends[0]} | {ends[1]} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("prefix", help="figure path prefix: <prefix>_gold_vs_kl_by_n.png")
    args = parser.parse_args()
    runs = finished(load_summaries(args.directory))
    table = aggregate(runs, by=KEY)
    print(peak_table(table))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (n, group) in zip(colours, table.groupby(KEY)):
        group = group.sort_values("eval/kl")
        exact, reference_gold = tilt_curve(ProxyPreferences(LetterCountProxy(num_pairs=int(n))),
                                           sorted(group["beta"].unique()))
        exact = np.array(exact)
        order = np.argsort(exact[:, 1])
        for ax, metric, column in ((axes[0], "eval/win_rate", 4), (axes[1], "eval/gold_reward", 2)):
            ax.errorbar(group["eval/kl"], group[metric], yerr=group[metric + "_stderr"], color=colour,
                        marker="o", ms=3, capsize=2, label=f"N = {int(n)} (trained DPO)")
            ax.plot(exact[order, 1], exact[order, column], color=colour, ls="--", lw=1,
                    label=f"N = {int(n)} (exact tilt, no training)")
    axes[0].axhline(0.5, color="grey", lw=0.6)
    axes[1].axhline(reference_gold, color="grey", lw=0.6)
    for ax, label in ((axes[0], "gold win rate against the reference"), (axes[1], "gold reward")):
        ax.set_xscale("log")
        ax.set_xlabel("KL(π ‖ π_ref), nats")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle("Emergent over-optimisation: DPO against a proxy learned from N gold-labelled pairs", fontsize=10)
    fig.tight_layout()
    path = Path(f"{args.prefix}_gold_vs_kl_by_n.png")
    fig.savefig(path, dpi=120)
    print(f"Written: {path}")


if __name__ == "__main__":
    main()
