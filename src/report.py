"""Sweep report CLI: tables, intervals and plots for a Hydra multirun of GPO jobs.

    python src/report.py outputs/multirun/2026-06-01_12-00-00
    python src/report.py outputs/multirun/... --by data.source.reward_temperature --reference ipo
    python src/report.py outputs/multirun/... --wandb-group my-sweep --wandb-project gpo

    python src/report.py multirun/... --out /tmp/report   # the sweep directory only read

Writes report.csv (one row per (loss, β)), best_beta.csv (one row per family:
best β, ratio to the reference, 95% intervals where the data support one),
report.md and PNG plots into the directory (or --out), prints the main tables and the
paths written. How the intervals are built and tested: docs/statistics.md.
"""

import argparse
import os
import sys

from gpo import report
from gpo.report.markdown import best_beta_markdown, beta_ratio_markdown, gaps_markdown
from gpo.report.peak import DROP


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="multirun directory (summary.json files are "
                        "searched recursively); the report is written into it unless --out is given")
    parser.add_argument("--out", help="write the report into this directory instead (created if missing); "
                        "the sweep directory is then only read")
    parser.add_argument("--wandb-group", help="read the runs of this W&B group instead "
                        "of the local summary.json files (no trajectories)")
    parser.add_argument("--wandb-project")
    parser.add_argument("--wandb-entity")
    parser.add_argument("--metric", help="selection metric for the best β "
                        "(default: eval/win_rate if present, else val/rewards/accuracies)")
    parser.add_argument("--reference", default="ipo",
                        help="family the β ratios and gaps are taken to (default: ipo)")
    parser.add_argument("--by", help="Hydra override key splitting the sweep into groups, e.g. "
                        "data.source.reward_temperature: every table per group, and the matched-KL β ratio vs the key")
    parser.add_argument("--level", type=float, default=0.95, help="confidence level of every interval (default 0.95)")
    parser.add_argument("--window", type=float, default=DROP,
                        help="fit window of the best β: the grid points within this fraction of the peak's height "
                        f"above the reference policy's score (default {DROP}; the coverage tests use it)")
    parser.add_argument("--precision", type=float, default=0.1,
                        help="seed advisor: the relative half-width wanted on a best-β ratio (default 0.1: ±10%%)")
    parser.add_argument("--gap", type=float, help="seed advisor: the gap at matched KL to detect, in the metric's "
                        "units (default: the largest gap measured)")
    parser.add_argument("--no-plots", action="store_true", help="tables only: no PNGs")
    args = parser.parse_args(argv)
    if not 0 < args.level < 1 or not 0 < args.window < 1 or not args.precision > 0:
        parser.error("--level and --window must lie in (0, 1), --precision must be positive")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out}: exists and is not a directory")

    try:
        runs = (report.load_wandb_runs(args.wandb_group, args.wandb_project, args.wandb_entity)
                if args.wandb_group else None)
        result = report.write_report(args.directory, runs, args.metric, args.reference, by=args.by,
                                     level=args.level, drop=args.window, precision=args.precision, gap=args.gap,
                                     plots=not args.no_plots, out=args.out)
    except (FileNotFoundError, LookupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    print(report.results_markdown(result.table, args.by))
    if result.best is not None:
        print("\n" + best_beta_markdown(result.best))
    if result.beta_ratios is not None:
        print("\n" + beta_ratio_markdown(result.beta_ratios))
    if result.gaps is not None:
        print("\n" + gaps_markdown(result.gaps, result.largest_gap))
    print("\nWritten:")
    for path in result.paths:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
