"""Sweep report CLI: tables and plots for a Hydra multirun of GPO jobs.

    python src/report.py multirun/2024-06-01/12-00-00
    python src/report.py multirun/... --by data.source.reward_temperature --reference ipo
    python src/report.py out_dir --wandb-group my-sweep --wandb-project gpo

Writes report.csv, report.md and PNG plots into the directory, prints the
markdown tables and the paths written. See the gpo.report package for what they show.
"""

import argparse
import sys

from gpo import report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="multirun directory (summary.json files are "
                        "searched recursively); the report is written into it")
    parser.add_argument("--wandb-group", help="read the runs of this W&B group instead "
                        "of the local summary.json files (no trajectories)")
    parser.add_argument("--wandb-project")
    parser.add_argument("--wandb-entity")
    parser.add_argument("--metric", help="selection metric for the best β "
                        "(default: eval/win_rate if present, else val/rewards/accuracies)")
    parser.add_argument("--reference", default="ipo",
                        help="family the β ratios are taken to (default: ipo)")
    parser.add_argument("--by", help="Hydra override key splitting the sweep into groups, e.g. "
                        "data.source.reward_temperature: tables per group and the matched-KL β ratio vs the key")
    parser.add_argument("--level", type=float, default=0.95, help="bootstrap interval level (default 0.95)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (default 1000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument("--fit-half-width", type=int, default=1,
                        help="neighbours each side of the grid maximum in the quadratic fit (default 1)")
    parser.add_argument("--no-plots", action="store_true", help="tables only: no PNGs")
    args = parser.parse_args(argv)

    try:
        runs = (report.load_wandb_runs(args.wandb_group, args.wandb_project, args.wandb_entity)
                if args.wandb_group else None)
        result = report.write_report(args.directory, runs, args.metric, args.reference, by=args.by,
                                     level=args.level, n_boot=args.bootstrap, bootstrap_seed=args.bootstrap_seed,
                                     half_width=args.fit_half_width, plots=not args.no_plots)
    except (FileNotFoundError, LookupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    print(report.results_markdown(result.table, args.by))
    if result.best is not None:
        print()
        print(report.best_beta_markdown(result.best))
    if result.check is not None:
        print()
        print(report.label_check_markdown(result.check, args.by))
    for label, gap in result.gaps.items():
        print()
        print(report.gap_markdown(gap, f"{label}: " if label else ""))
    print()
    print("Written:")
    for path in result.paths:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
