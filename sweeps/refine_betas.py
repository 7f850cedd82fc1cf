"""The betas that refine a finished sqrt(2)-spaced grid around its peak: the
midpoints (in log beta) of the two grid intervals on each side of the beta
whose seed-mean gold win rate is highest, peak x 2^(+-1/4) and 2^(+-3/4), so
the grid near the peak is 2^(1/4) apart, as the report's best-beta estimator
needs (at least 5 grid points within 30% of the peak's height;
docs/statistics.md).

    python sweeps/refine_betas.py outputs/multirun/capped_variants/<date>/base/dpo    # prints 0.595,0.841,1.19,1.68

Used by sweeps/capped_variants.sh between its coarse pass and its fine one.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gpo.report.load import finished, load_summaries  # noqa: E402


def refined(sweep_dir: Path, metric: str = "eval/win_rate") -> list[float]:
    """Read as the report reads a sweep: a damaged summary.json is one line naming it."""
    try:
        runs = finished(load_summaries(sweep_dir))
    except FileNotFoundError:
        runs = None
    except LookupError as error:
        raise SystemExit(f"error: {error}") from None
    if runs is None or metric not in runs or runs[metric].isna().all():
        raise SystemExit(f"error: no finished run with {metric} under {sweep_dir}")
    peak = runs.groupby("beta")[metric].mean().idxmax()
    return [float(f"{peak * 2 ** (k / 4):.3g}") for k in (-3, -1, 1, 3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", default="eval/win_rate")
    args = parser.parse_args()
    print(",".join(f"{beta:g}" for beta in refined(args.sweep_dir, args.metric)))


if __name__ == "__main__":
    main()
