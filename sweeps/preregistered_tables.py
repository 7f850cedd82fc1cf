"""Descriptive tables of the pre-registered sweep (docs/reproduction.md): per
family, the best grid point against both ends of its grid, and, at matched KL,
the win rate and the offline regulariser E_data[rho^2]/2 against 2 KL (the
comparison made at equal KL, not equal beta). Seed means +- standard error
over seeds; no best-beta estimate and no interval: those are the report's
(`python src/report.py <dir>/main`).

    python sweeps/preregistered_tables.py outputs/multirun/preregistered/<date_time>/main
    python sweeps/preregistered_tables.py outputs/multirun/preregistered/<date_time>/temperature/2
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # gpo, as src/train.py finds it

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gpo.report import aggregate, load_summaries, matched_kl  # noqa: E402
from gpo.report.load import finished  # noqa: E402

WIN, KL, REG = "eval/win_rate", "eval/kl", "eval/offline_regulariser"


def peaks(table: pd.DataFrame) -> str:
    lines = ["| family | runs | betas | best grid β | win rate there | KL there | smallest β: win rate (SEs below "
             "the peak) | largest β: win rate (SEs below) |", "|---|---|---|---|---|---|---|---|"]
    for loss, group in table.groupby("loss"):
        group = group.sort_values("beta")
        best = group.loc[group[WIN].idxmax()]
        ends = []
        for end in (group.iloc[0], group.iloc[-1]):
            gap = (best[WIN] - end[WIN]) / np.hypot(best[WIN + "_stderr"], end[WIN + "_stderr"])
            ends.append(f"{end[WIN]:.3f} (β {end['beta']:g}: {gap:+.1f})")
        lines.append(f"| {loss} | {int(group['n_finished'].sum())} | {len(group)} | {best['beta']:g} | "
                     f"{best[WIN]:.3f} ± {best[WIN + '_stderr']:.3f} | {best[KL]:.2f} | {ends[0]} | {ends[1]} |")
    return "\n".join(lines)


def at_kl(table: pd.DataFrame, kls: list[float]) -> str:
    wins = matched_kl(table, kls, WIN)
    ratio = table.assign(reg_ratio=table[REG] / (2 * table[KL]), reg_ratio_stderr=np.nan)
    regs = matched_kl(ratio, kls, "reg_ratio")
    header = " / ".join(f"{k:g}" for k in kls)
    lines = [f"| family | win rate at KL {header} nats | β there | E_data[ρ²]/2 ÷ 2 KL at KL {header} |",
             "|---|---|---|---|"]
    for loss in sorted(table["loss"].unique()):
        w = wins[wins["loss"] == loss].set_index("kl")
        r = regs[regs["loss"] == loss].set_index("kl")
        cell = lambda frame, col, fmt: " / ".join(  # noqa: E731
            "–" if np.isnan(frame.loc[k, col]) else format(frame.loc[k, col], fmt) for k in kls)
        lines.append(f"| {loss} | {cell(w, WIN, '.3f')} | {cell(w, 'beta', '.3g')} | {cell(r, 'reg_ratio', '.2f')} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--kls", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    args = parser.parse_args()
    runs = load_summaries(args.directory)
    done = finished(runs)
    print(f"{len(done)} finished runs of {len(runs)}; median run time {done['wall_time_s'].median():.1f} s\n")
    table = aggregate(done)
    print(peaks(table))
    print()
    print(at_kl(table, args.kls))


if __name__ == "__main__":
    main()
