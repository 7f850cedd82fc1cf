"""Sweep report: what a Hydra multirun of GPO jobs answers, with intervals
that mean what they say (docs/statistics.md).

    from gpo import report
    result = report.write_report("outputs/multirun/<date>")   # report.{md,csv}, best_beta.csv, plots

Modules, one job each: `load` (summary.json or W&B runs -> run table),
`analysis` (seed aggregation, curves at matched KL), `intervals` (t
intervals over seeds, Fieller sets, agrees/disagrees), `peak` (the maximum
of a curve over seeds), `best_beta`, `gaps` (families at matched KL),
`gao` (Gao et al.'s curves), `advisor` (seeds needed), `theory`
(predictions), `projected_link` (the projected-link predictor's solver),
`simulation` (sweeps with a known answer, for the tests), `plots`,
`theory_plots`, `markdown`, and `write` (the report itself; `src/report.py`
is its CLI).
"""

from gpo.report.load import load_summaries, load_sweep, load_wandb_runs
from gpo.report.markdown import results_markdown
from gpo.report.plots import DPI, FIGSIZE
from gpo.report.write import Report, write_report

__all__ = ["DPI", "FIGSIZE", "Report", "load_summaries", "load_sweep", "load_wandb_runs", "results_markdown",
           "write_report"]
