"""Sweep report CLI: tables and plots for a Hydra multirun of GPO jobs.

    python src/report.py multirun/2024-06-01/12-00-00
    python src/report.py out_dir --wandb-group my-sweep --wandb-project gpo

Writes report.csv, report.md and PNG plots into the directory, prints the
markdown tables and the paths written. See gpo/report.py for what they show.
"""

import argparse
import sys

from gpo import report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="multirun directory (summary.json files are "
                        "searched recursively); the report is written into it")
    parser.add_argument("--wandb-group", help="read the runs of this W&B group instead "
                        "of the local summary.json files")
    parser.add_argument("--wandb-project")
    parser.add_argument("--wandb-entity")
    parser.add_argument("--metric", help="metric for the best-β table "
                        "(default: eval/win_rate if present, else val/rewards/accuracies)")
    parser.add_argument("--reference", default="ipo",
                        help="family whose best β predicts the others' (default: ipo)")
    args = parser.parse_args(argv)

    try:
        runs = (report.load_wandb_runs(args.wandb_group, args.wandb_project, args.wandb_entity)
                if args.wandb_group else None)
        result = report.write_report(args.directory, runs, args.metric, args.reference)
    except (FileNotFoundError, LookupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    print(report.results_markdown(result.table))
    if result.best is not None:
        print()
        print(report.best_beta_markdown(result.best))
    if result.gap is not None:
        print()
        print(report.gap_markdown(result.gap))
    print()
    print("Written:")
    for path in result.paths:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
