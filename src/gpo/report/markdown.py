"""The report's markdown: tables of already computed frames, and the page."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from gpo.infra.summary import FINISHED
from gpo.report.analysis import KLGap, present
from gpo.report.metrics import STDERR_SUFFIX, TABLE_METRICS, spec

TAYLOR_NOTE = ("Taylor ratio = scale(ref)/scale(family), scale = f''(0)/|f'(0)|: the paper's prediction "
               "(Tang et al. 2024, Section 4: the best β differs between families \"as predicted by theory\"; "
               "the factor itself is derived here from their expansion).")
LINK_NOTE = ("Link ratio = sqrt(E_w[t*_family(p)²] / E_w[t*_ref(p)²]), t*(p) = argmin_t p f(t) + (1-p) f(-t), "
             "w the training pairs' distribution of p = P(chosen preferred): derived here, not in the paper "
             "(it equalises E_data[ρ²], hence the KL to second order, between the two families at the two βs). "
             "The least-squares slope Σw t_f t_ref / Σw t_ref² is given as \"link LSQ\". "
             "No link ratio (–) where the runs recorded no preference probabilities (human labels).")


def fmt(value, stderr=np.nan) -> str:
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        text = f"{value:.4g}"
        return text if stderr is None or math.isnan(stderr) else f"{text} ± {stderr:.2g}"
    return str(value)


def fmt_interval(value, lo, hi, prefix: str = "") -> str:
    text = prefix + fmt(value)
    return text if lo is None or not np.isfinite(lo) else f"{text} [{lo:.4g}, {hi:.4g}]"


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of already formatted cells."""
    def escape(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    cells = frame.map(escape)
    lines = ["| " + " | ".join(escape(c) for c in frame.columns) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def _group_columns(frame: pd.DataFrame, by: str | None) -> dict:
    return {by: frame[by].map(fmt)} if by and by in frame else {}


def results_markdown(table: pd.DataFrame, by: str | None = None) -> str:
    """The per-(loss, beta) table: mean ± standard error over finished seeds."""
    out = pd.DataFrame({**_group_columns(table, by), "loss": table["loss"], "β": table["beta"].map(lambda b: f"{b:g}"),
                        "n seeds": table["n_finished"], "n failed": table["n_failed"], "status": table["status"]})
    for metric in present(table, TABLE_METRICS):
        err = table[metric + STDERR_SUFFIX] if metric + STDERR_SUFFIX in table else [np.nan] * len(table)
        out[spec(metric).axis_label] = [fmt(v, s) for v, s in zip(table[metric], err)]
    return to_markdown(out)


def best_beta_markdown(best: pd.DataFrame) -> str:
    metric, reference, by = best.attrs["metric"], best.attrs["reference"], best.attrs.get("by")
    level = f"{100 * best.attrs.get('level', 0.95):g}%"
    beta_cells, ratio_cells = [], []
    for r in best.to_dict("records"):
        if r["edge"]:
            bound = "≥" if r["edge"] == "high" else "≤"
            beta_cells.append(f"{bound} {fmt(r['best_beta'])} (peak at the grid's {r['edge']} end)")
        else:
            beta_cells.append(fmt_interval(r["best_beta"], r["best_beta_lo"], r["best_beta_hi"]))
        prefix = f"{r['ratio_bound']} " if r["ratio_bound"] else ""
        ratio_cells.append(fmt_interval(r["ratio"], r["ratio_lo"], r["ratio_hi"], prefix))
    out = pd.DataFrame({
        **_group_columns(best, by), "loss": best["loss"], "f''(0)/|f'(0)|": best["regularisation_scale"].map(fmt),
        f"best β [{level} CI]": beta_cells,
        f"{metric} there [{level} CI]": [fmt_interval(v, lo, hi) for v, lo, hi in
                                        zip(best[metric], best[f"{metric}_lo"], best[f"{metric}_hi"])],
        f"best β / best β_{reference} [{level} CI]": ratio_cells,
        "Taylor ratio (paper)": best.get("taylor_ratio", pd.Series(np.nan, index=best.index)).map(fmt),
        "link ratio (derived)": best.get("link_ratio", pd.Series(np.nan, index=best.index)).map(fmt),
        "link LSQ": best.get("link_ratio_lsq", pd.Series(np.nan, index=best.index)).map(fmt),
        "edge replicates": best["edge_fraction"].map(lambda v: "–" if pd.isna(v) else f"{v:.0%}"),
    })
    return to_markdown(out)


def matched_kl_markdown(result: pd.DataFrame) -> str:
    """One row per family: the metric and β (β/β_ref) at each KL, then the two predictions."""
    metric, reference = result.attrs["metric"], result.attrs["reference"]
    rows = []
    for loss, group in result.groupby("loss", sort=True):
        row = {"loss": loss}
        for r in group.to_dict("records"):
            row[f"{metric} at KL={r['kl']:g}"] = fmt(r[metric], r[metric + STDERR_SUFFIX])
        for r in group.to_dict("records"):
            row[f"β at KL={r['kl']:g} (β/β_{reference})"] = f"{fmt(r['beta'])} ({fmt(r['beta_ratio'])})"
        first = group.iloc[0]
        row["Taylor ratio (paper)"] = fmt(first["taylor_ratio"])
        row["link ratio (derived)"] = fmt(first.get("link_ratio", np.nan))
        rows.append(row)
    return to_markdown(pd.DataFrame(rows))


def label_check_markdown(check: pd.DataFrame, by: str) -> str:
    if check.empty:
        return f"Not computable: no group of {by} has two families with overlapping KL ranges."
    out = pd.DataFrame({
        by: check[by].map(fmt), "loss": check["loss"],
        "measured β/β_ref (geo. mean) [min, max]": [fmt_interval(r, lo, hi) for r, lo, hi in
                                                    zip(check["ratio"], check["ratio_min"], check["ratio_max"])],
        "KL range (nats)": [f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(check["kl_lo"], check["kl_hi"])],
        "link ratio (derived)": check["link_ratio"].map(fmt), "link LSQ": check["link_ratio_lsq"].map(fmt),
        "Taylor ratio (paper)": check["taylor_ratio"].map(fmt),
        "measured / link": (check["ratio"] / check["link_ratio"]).map(fmt),
    })
    return to_markdown(out)


def gap_markdown(gap: KLGap, label: str = "") -> str:
    if gap.pair is None:
        return (f"{label}Not computable for {gap.metric}: needs at least two families with "
                "two or more KL values and overlapping KL ranges.")
    lo, hi = gap.kl_range
    text = (f"{label}Max vertical gap in {gap.metric} between families at matched KL: "
            f"**{gap.gap:.4g}** ({gap.pair[0]} vs {gap.pair[1]} at KL = {gap.kl:.4g} nats), "
            f"over the KL range all families cover, [{lo:.4g}, {hi:.4g}] nats "
            "(piecewise-linear interpolation of the seed means).\n\n")
    pairs = gap.pairwise.assign(max_gap=gap.pairwise["max_gap"].map(fmt), at_kl=gap.pairwise["at_kl"].map(fmt))
    return text + to_markdown(pairs)


def failed_markdown(failed: pd.DataFrame) -> str:
    if failed.empty:
        return "None."
    out = failed.assign(beta=failed["beta"].map(fmt), seed=failed["seed"].map(fmt),
                        error=failed["error"].fillna("(no message)"),
                        overrides=failed["overrides"].map(lambda o: " ".join(o) if isinstance(o, list) else fmt(o)))
    return to_markdown(out)


def report_markdown(directory: Path, runs: pd.DataFrame, table: pd.DataFrame, best, at_kl, check,
                    gaps: dict, plots: list[Path], failed: pd.DataFrame, by: str | None = None) -> str:
    """The whole page. `gaps`: {label: KLGap} (one per `by` group, label "" without groups)."""
    scales = table.groupby("loss")["regularisation_scale"].first()
    n_finished = int((runs["status"] == FINISHED).sum())
    parts = ["# GPO sweep report",
             f"Sweep directory: `{directory}`. {len(runs)} runs: {n_finished} finished, "
             f"{len(runs) - n_finished} not finished. Families and f''(0)/|f'(0)|: "
             + ", ".join(f"{loss} {fmt(scale)}" for loss, scale in scales.items()) + ".",
             "## Results per (loss, β)" if not by else f"## Results per ({by}, loss, β)",
             "Mean ± standard error (std/√n) over the finished seeds; "
             "with one seed, the run's own sampling error where it reported one.",
             results_markdown(table, by)]
    if best is not None:
        a = best.attrs
        parts += [f"## Best β per family, relative to {a['reference']}",
                  f"Best β by {a['metric']}: the vertex of a quadratic in log β fitted to the seed-mean metric at the "
                  f"grid maximum and its {a['half_width']} neighbour(s) each side; a maximum at a grid end is "
                  "reported as a bound, without an interval. Intervals: percentile bootstrap over seeds "
                  f"({a['n_boot']} replicates, seed {a['seed']}; seeds resampled jointly across βs and families, "
                  "as a seed is one preference-data sample shared by all of them); \"edge replicates\": the share "
                  "of replicates whose maximum fell at a grid end (they count as that end).",
                  TAYLOR_NOTE, LINK_NOTE, best_beta_markdown(best)]
    if at_kl is not None and not at_kl.empty and at_kl[at_kl.attrs["metric"]].notna().any():
        parts += ["## β ratios at matched KL",
                  "Each family interpolated at a few KL values inside the common range (metric linear in KL, log β "
                  f"linear in log KL): the metric reached, and the β needed relative to {at_kl.attrs['reference']}, "
                  "against the Taylor (paper) and link (derived) predictions."]
        for value, part in (at_kl.groupby(by, sort=True) if by else [(None, at_kl)]):
            part.attrs = dict(at_kl.attrs)
            parts += ([f"{by} = {fmt(value)}:"] if by else []) + [matched_kl_markdown(part)]
    if by and check is not None:
        parts += [f"## Label check: β ratio at matched KL by {by}",
                  f"Per value of {by}: β(family)/β({check.attrs.get('reference', 'ref')}) at matched KL, the geometric "
                  "mean (min, max) over the KL range the two share, against the link prediction for that group's "
                  "preference probabilities and the Taylor ratio.", label_check_markdown(check, by)]
    if gaps:
        parts += ["## Curves vs KL at matched KL"] + [gap_markdown(g, f"{k}: " if k else "") for k, g in gaps.items()]
    if plots:
        parts += ["## Plots", "\n".join(f"![{p.stem}]({p.name})" for p in plots)]
    parts += ["## Failed runs", failed_markdown(failed)]
    return "\n\n".join(parts) + "\n"
