"""The report's markdown: tables of already computed frames, and the page.

Every interval printed here comes from a method whose coverage the tests
check (docs/statistics.md); where a frame has no interval, the words say
why. A prediction "agrees" only when it lies inside the interval.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from gpo.infra.summary import FINISHED
from gpo.report.advisor import MAX_SEEDS
from gpo.report.analysis import error_bar_words
from gpo.report.best_beta import REFERENCE
from gpo.report.intervals import AGREES, DISAGREES, MIN_SEEDS, verdict
from gpo.report.metrics import STDERR_SUFFIX, TABLE_METRICS, spec

# Labels of the predictors the report knows; any other `<name>_ratio` column of the predictions is shown too.
PREDICTORS = {"taylor_ratio": "Taylor (paper)", "link_ratio": "link (derived)",
              "projected_link_ratio": "projected link (derived)"}
NOTES = {
    "taylor_ratio": "Taylor = scale(ref)/scale(family), scale = f''(0)/|f'(0)|: the paper's prediction (Tang et al. "
                    "2024, Section 4: the best β differs between families \"as predicted by theory\"; the factor "
                    "itself is derived here from their expansion).",
    "link_ratio": "link = sqrt(E_w[t*_family(p)²] / E_w[t*_ref(p)²]), t*(p) = argmin_t p f(t) + (1-p) f(-t), w the "
                  "training pairs' distribution of p = P(chosen preferred): derived here, not in the paper. "
                  "No link prediction (–) where the runs recorded no preference probabilities (human labels).",
    "projected_link_ratio": "projected link = the β ratio at which pi_ref·exp(u*_f(φ)/β) has the reference "
                            "family's KL at its predicted best KL, u*_f the loss's population optimum over the "
                            "features φ the labels see: derived here, not in the paper (gpo/report/projected_link.py). "
                            "No projected-link prediction (–) where a group's runs recorded no label features, or a "
                            "family's projected KL cannot reach the reference's.",
}
STATISTICS_DOC = "docs/statistics.md"


def fmt(value, stderr=np.nan) -> str:
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        text = f"{value:.4g}"
        return text if stderr is None or math.isnan(stderr) else f"{text} ± {stderr:.2g}"
    return str(value)


def fmt_interval(value, low, high, digits: int = 3) -> str:
    """'v [low, high]', or 'v' without an interval."""
    if value is None or not np.isfinite(value):
        return "–"
    text = f"{value:.{digits}g}"
    return text if low is None or not (np.isfinite(low) and np.isfinite(high)) else \
        f"{text} [{low:.{digits}g}, {high:.{digits}g}]"


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


def level_label(frame: pd.DataFrame) -> str:
    return f"{100 * frame.attrs.get('level', 0.95):g}%"


def predictor_columns(frame: pd.DataFrame) -> list[str]:
    """The prediction columns (`*_ratio`) present, known ones first."""
    found = [c for c in frame.columns if c.endswith("_ratio") and c not in ("ratio", "beta_ratio")]
    return sorted(found, key=lambda c: (c not in PREDICTORS, list(PREDICTORS).index(c) if c in PREDICTORS else 0, c))


def predictor_label(column: str) -> str:
    return PREDICTORS.get(column, column.removesuffix("_ratio").replace("_", " "))


def verdict_cell(prediction, low, high) -> str:
    """'2 – agrees', '2 – disagrees', '2' (no interval to judge it by), '–' (no prediction)."""
    if prediction is None or not np.isfinite(prediction):
        return "–"
    word = verdict(prediction, low, high)
    return f"{prediction:.3g}: {word}" if word else f"{prediction:.3g}"


def verdict_summary(frame: pd.DataFrame, label: str = "") -> list[str]:
    """One line per predictor: where it agrees, where it disagrees (with the numbers), where no interval."""
    lines = []
    for column in predictor_columns(frame):
        agree, disagree, none = [], [], []
        for r in frame.to_dict("records"):
            if not np.isfinite(r[column]) or r.get("ratio_note") == REFERENCE:
                continue
            name = r["loss"] + (f" ({label}={fmt(r[label])})" if label and label in r else "")
            word = verdict(r[column], r["ratio_low"], r["ratio_high"])
            if word == AGREES:
                agree.append(name)
            elif word == DISAGREES:
                disagree.append(f"{name}: {r[column]:.3g} outside [{r['ratio_low']:.3g}, {r['ratio_high']:.3g}]")
            else:
                none.append(name)
        parts = [f"agrees for {', '.join(agree)}" if agree else "",
                 f"disagrees for {'; '.join(disagree)}" if disagree else "",
                 f"cannot be judged (no interval) for {', '.join(none)}" if none else ""]
        if any(parts):
            lines.append(f"- {predictor_label(column)}: " + "; ".join(p for p in parts if p) + ".")
    return lines


def results_markdown(table: pd.DataFrame, by: str | None = None) -> str:
    """The per-(loss, beta) table: mean ± standard error over finished seeds."""
    out = pd.DataFrame({**_group_columns(table, by), "loss": table["loss"], "β": table["beta"].map(lambda b: f"{b:g}"),
                        "n seeds": table["n_finished"], "n failed": table["n_failed"], "status": table["status"]})
    requested = table.get("beta_requested", pd.Series(np.nan, index=table.index))
    if (requested.notna() & (requested != table["beta"])).any():  # beta_scale: β is the one the loss used
        out.insert(out.columns.get_loc("β") + 1, "β requested", requested.map(fmt))
    for metric in [m for m in TABLE_METRICS if m in table and table[m].notna().any()]:
        err = table[metric + STDERR_SUFFIX] if metric + STDERR_SUFFIX in table else [np.nan] * len(table)
        out[spec(metric).axis_label] = [fmt(v, s) for v, s in zip(table[metric], err)]
    return to_markdown(out)


def best_beta_markdown(best: pd.DataFrame) -> str:
    """The best-β table, then a line per row without an interval saying why."""
    reference, by, level = best.attrs["reference"], best.attrs.get("by"), level_label(best)
    beta_cells, ratio_cells = [], []
    for r in best.to_dict("records"):
        ratio_cells.append("1 (reference)" if r["ratio_note"] == REFERENCE else
                           fmt_interval(r["ratio"], r["ratio_low"], r["ratio_high"]))
        if r["edge"]:
            bound = "≥" if r["edge"] == "high" else "≤"
            beta_cells.append(f"{bound} {r['best_grid_beta']:.3g} (grid end)")
        else:
            beta_cells.append(fmt_interval(r["best_beta"], r["best_beta_low"], r["best_beta_high"]))
    out = pd.DataFrame({**_group_columns(best, by), "loss": best["loss"],
                        "f''(0)/|f'(0)|": best["regularisation_scale"].map(fmt), "seeds": best["n_seeds"],
                        f"best β [{level}]": beta_cells,
                        f"best β / best β({reference}) [{level}]": ratio_cells})
    for column in predictor_columns(best):
        out[predictor_label(column)] = [verdict_cell(r[column], r["ratio_low"], r["ratio_high"])
                                        for r in best.to_dict("records")]
    lines = [to_markdown(out)]
    if reference not in set(best["loss"]):
        lines.append(f"The reference family {reference} is not in the sweep: no ratios (`--reference` names another).")
    why = [f"- {r['loss']}{f' ({by}={fmt(r[by])})' if by else ''}: no interval for the best β: {r['note']}."
           for r in best.to_dict("records") if r["note"]]
    why += [f"- {r['loss']}{f' ({by}={fmt(r[by])})' if by else ''}: no interval for the ratio: {r['ratio_note']}."
            for r in best.to_dict("records")
            if r["ratio_note"] and r["ratio_note"] != REFERENCE and not r["note"]]
    if why:
        lines.append("\n".join(why))
    summary = verdict_summary(best, by or "")
    if summary:
        lines.append(f"Predictions of the ratio against the measured {level} interval:\n" + "\n".join(summary))
    return "\n\n".join(lines)


def beta_ratio_markdown(ratios: pd.DataFrame) -> str:
    by, level = ratios.attrs.get("by"), level_label(ratios)
    if ratios.empty:
        return (f"Not computable: needs the reference family ({ratios.attrs['reference']}) and another family "
                "whose seeds cover a common KL range.")
    out = pd.DataFrame({
        **_group_columns(ratios, by), "loss": ratios["loss"], "seeds": ratios["n_seeds"],
        f"β / β({ratios.attrs['reference']}) at matched KL [{level}]": [
            fmt_interval(r, lo, hi) for r, lo, hi in zip(ratios["ratio"], ratios["ratio_low"], ratios["ratio_high"])],
        "range along KL (seed means)": [f"{lo:.3g} to {hi:.3g}" for lo, hi in zip(ratios["ratio_min"],
                                                                                   ratios["ratio_max"])],
        "KL range (nats)": [f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(ratios["kl_lo"], ratios["kl_hi"])]})
    for column in predictor_columns(ratios):
        out[predictor_label(column)] = [verdict_cell(r[column], r["ratio_low"], r["ratio_high"])
                                        for r in ratios.to_dict("records")]
    summary = verdict_summary(ratios, by or "")
    return to_markdown(out) + ("\n\nPredictions against the measured interval:\n" + "\n".join(summary)
                               if summary else "")


def gaps_markdown(gaps: pd.DataFrame, largest: dict | None) -> str:
    metric, reference, by = gaps.attrs["metric"], gaps.attrs["reference"], gaps.attrs.get("by")
    if gaps.empty:
        return (f"Not computable for {metric}: needs the reference family ({reference}) and another family "
                "whose runs cover a common KL range.")
    keys = ([by] if by else []) + ["loss"]
    rows = []
    for values, group in gaps.groupby(keys, sort=True):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        row = {k: fmt(v) for k, v in row.items()}
        for r in group.to_dict("records"):
            cell = fmt_interval(r["gap"], r["gap_low"], r["gap_high"], 2)
            row[f"KL = {r['kl']:.2g}"] = cell + ("" if np.isfinite(r["gap_low"]) else
                                                 f" ({r['n_seeds']} seed{'s' if r['n_seeds'] != 1 else ''}: "
                                                 f"no interval below {MIN_SEEDS})")
        rows.append(row)
    text = to_markdown(pd.DataFrame(rows))
    if largest is not None:
        text += (f"\n\nThe largest of these {largest['m']} gaps: {largest['loss']} at KL = {largest['kl']:.2g}, "
                 f"{fmt_interval(largest['gap'], largest['gap_low'], largest['gap_high'], 2)}")
        if np.isfinite(largest["adjusted_low"]):
            text += (f"; picked as the largest of {largest['m']}, its interval adjusted for that (Bonferroni, "
                     f"{100 * largest['adjusted_level']:.3g}%) is [{largest['adjusted_low']:.2g}, "
                     f"{largest['adjusted_high']:.2g}]")
        text += "."
    return text


def gao_markdown(fits: pd.DataFrame) -> str:
    by, level = fits.attrs.get("by"), level_label(fits)
    out = pd.DataFrame({
        **_group_columns(fits, by), "loss": fits["loss"], "form": fits["form"],
        f"peak KL (nats) [{level}]": [fmt_interval(v, lo, hi) for v, lo, hi in
                                      zip(fits["peak_kl"], fits["peak_kl_low"], fits["peak_kl_high"])],
        "residual sd of the fit": fits["residual_sd"].map(lambda v: fmt(v) if np.isfinite(v) else "–"),
        "runs' own sampling error": fits["run_stderr"].map(lambda v: fmt(v) if np.isfinite(v) else "–"),
        "seeds": fits["n_seeds"], "no interval because": fits["note"].replace("", "–")})
    return to_markdown(out)


def advice_markdown(ratio: pd.DataFrame | None, gap: pd.DataFrame | None) -> str:
    parts = []
    if ratio is not None and not ratio.empty:
        a, by = ratio.attrs, ratio.attrs.get("by")
        out = pd.DataFrame({**_group_columns(ratio, by), "loss": ratio["loss"], "seeds now": ratio["seeds_now"],
                            "sd over seeds of log ratio": ratio["ratio_sd"].map(lambda v: f"{v:.3g}"),
                            "share from per-run noise": ratio["noise_share"].map(
                                lambda v: "–" if not np.isfinite(v) else f"{v:.0%}"),
                            "seeds needed": ratio["seeds_needed"].map(_seeds),
                            "if the sd is at its 80% upper bound": ratio["seeds_needed_sd_bound"].map(_seeds),
                            "with twice the βs near the peaks": ratio["seeds_needed_finer_grid"].map(_seeds)})
        parts += [f"Seeds for a {100 * a['level']:g}% interval of ±{100 * a['precision']:g}% on the best-β "
                  f"ratio to {a['reference']}: the interval's half-width on log(ratio) is t(S−1)·sd/√S, sd the "
                  "spread over seeds of the paired per-seed influences measured in this sweep; the finer-grid figure "
                  "halves only the part of that spread explained by per-run noise (the fits' residual variance "
                  "carried through the fit). The sd itself comes from few seeds: the column at its 80% upper "
                  "bound (chi-square) is the cautious figure.", to_markdown(out)]
    if gap is not None and not gap.empty:
        a = gap.attrs
        target = f"{a['gap']:.2g}" + ("" if a["target_given"] else " (the largest gap measured here)")
        out = pd.DataFrame({"loss": gap["loss"], "KL": gap["kl"].map(lambda v: f"{v:.2g}"),
                            "seeds now": gap["seeds_now"], "sd over seeds of the gap": gap["gap_sd"].map(fmt),
                            "seeds needed": gap["seeds_needed"].map(_seeds),
                            "if the sd is at its 80% upper bound": gap["seeds_needed_sd_bound"].map(_seeds)})
        parts += [f"Seeds to tell a gap of {target} in {a['metric']} from none at matched KL (paired t-test over "
                  f"seeds, two-sided {100 * (1 - a['level']):g}% level, {100 * a['power']:g}% power, noncentral t), "
                  "from the spread over seeds of the per-seed gaps measured here:", to_markdown(out)]
    return "\n\n".join(parts) if parts else "Not computable: needs at least two seeds."


def _seeds(value) -> str:
    return "–" if np.isnan(value) else f"> {MAX_SEEDS}" if math.isinf(value) else f"{int(value)}"


def failed_markdown(failed: pd.DataFrame) -> str:
    if failed.empty:
        return "None."
    out = failed.assign(beta=failed["beta"].map(fmt), seed=failed["seed"].map(fmt),
                        error=failed["error"].fillna("(no message)"),
                        overrides=failed["overrides"].map(lambda o: " ".join(o) if isinstance(o, list) else fmt(o)))
    return to_markdown(out)


def report_markdown(report, directory: Path) -> str:
    """The whole page of a `gpo.report.write.Report`."""
    r, by = report, report.by
    scales = r.table.groupby("loss")["regularisation_scale"].first() if not r.table.empty else pd.Series(dtype=float)
    n_finished = int((r.runs["status"] == FINISHED).sum())
    parts = ["# GPO sweep report",
             f"Sweep directory: `{directory}`. {len(r.runs)} runs: {n_finished} finished, "
             f"{len(r.runs) - n_finished} not finished. Families and f''(0)/|f'(0)|: "
             + ", ".join(f"{loss} {fmt(scale)}" for loss, scale in scales.items()) + ".",
             "## Results per (loss, β)" if not by else f"## Results per ({by}, loss, β)",
             f"Seed means {error_bar_words(r.table)}.", results_markdown(r.table, by)]
    if r.best is not None and not r.best.empty:
        a = r.best.attrs
        window = (f"within {100 * a['drop']:g}% of the peak's height above the reference policy's "
                  f"{fmt(a['reference_level'])}" if a.get("reference_level") is not None else
                  "within 1.5 octaves of the best grid point (no reference level for this metric)")
        parts += [f"## Best β per family, relative to {a['reference']}",
                  f"Best β by {a['metric']}: a cubic in log β fitted to each seed's runs at the grid points "
                  f"{window}; the best β is the maximum of the seeds' mean cubic, its {level_label(r.best)} interval "
                  "the set where a t-test over seeds does not reject a zero slope (Fieller); the ratio's interval "
                  "combines the two families' sets with the correlation of their seeds (MOVER). Coverage checked by "
                  f"simulation at 3, 5 and 10 seeds: {STATISTICS_DOC} in the GPO repository.",
                  *[NOTES[c] for c in predictor_columns(r.best) if c in NOTES], best_beta_markdown(r.best)]
    if r.gao is not None and not r.gao.empty:
        parts += ["## Gao et al.'s over-optimisation curves",
                  f"{r.gao.attrs['metric']} against d = √KL per family and seed, in the two forms of Gao et al. "
                  "(2023), d(α − β′d) (best-of-n) and d(α − β′ log d) (RL), each with an intercept; the peak KL is "
                  "where the seeds' mean fit peaks, its interval the t-inversion set over seeds. The interval is about "
                  "the form's peak: a residual sd well above the runs' own error says the form does not fit.",
                  gao_markdown(r.gao)]
    if r.beta_ratios is not None:
        parts += ["## β ratio at matched KL" + (f", by {by}" if by else ""),
                  "β(family)/β(reference) at the same KL: per seed, log β against log KL (piecewise linear) of the "
                  "two families, their difference averaged over 9 log-spaced KLs spanning the range every seed of "
                  "both covers; geometric mean over seeds with a t interval.", beta_ratio_markdown(r.beta_ratios)]
    if r.gaps is not None:
        parts += ["## Families at matched KL",
                  f"Gap in {r.gaps.attrs['metric']}, family − {r.gaps.attrs['reference']}, at a few KLs inside the "
                  "range every family covers: each seed's curve read at that KL (piecewise linear in log KL), the "
                  f"paired difference averaged over seeds with a {level_label(r.gaps)} t interval.",
                  gaps_markdown(r.gaps, r.largest_gap)]
    if r.advice_ratio is not None or r.advice_gap is not None:
        parts += ["## Seeds needed", advice_markdown(r.advice_ratio, r.advice_gap)]
    if r.figures:
        parts += ["## Plots", "\n".join(f"![{p.stem}]({p.name})" for p in r.figures)]
    parts += ["## Failed runs", failed_markdown(r.failed)]
    return "\n\n".join(parts) + "\n"
