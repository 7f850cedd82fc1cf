"""Tests of the sweep report (the gpo.report package and the src/report.py CLI).

Synthetic sweeps stand in for real ones, written as summary.json files with
`RunSummary`, with answers known in advance:
- gold win rate is a hump in log beta peaking at beta = PEAK * SHIFT[family]:
  dpo's peak is exactly 3x ipo's; slic's win rate rises to the grid's end;
- KL = KL_SCALE * SHIFT[family] / beta, so at matched KL dpo needs 3x ipo's beta;
- three seeds, each a small offset plus noise;
- the preference probabilities are those of the synthetic task: reward
  difference d + 8 ~ Binomial(16, 1/2), p = sigmoid(d / temperature).
The coverage of the intervals is tested on simulated sweeps in
tests/test_report_coverage.py; here, what the report does with them.
"""

import importlib.util
import itertools
import math
import re
import zlib
from math import comb
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from gpo import report
from gpo.infra.summary import RunSummary
from gpo.losses import Hinge, Logistic, Squared
from gpo.report.analysis import aggregate, default_kls, matched_kl, matched_kl_ratios, max_matched_kl_gap
from gpo.report.best_beta import best_beta
from gpo.report.load import normalise
from gpo.report.plots import unscalable_families
from gpo.report.theory import predictions
from gpo.report.theory_plots import plot_ratio_vs_key

ROOT = Path(__file__).resolve().parents[1]
SIZE = (800, 1200)  # rows, columns of a 12 x 8 inch figure at 100 dpi
TEMPERATURE_KEY = "data.source.reward_temperature"

LOSSES = {"dpo": Logistic, "ipo": Squared, "slic": Hinge}
SHIFT = {"dpo": 3.0, "ipo": 1.0, "slic": 1.0}  # dpo needs 3x ipo's beta for the same effect
PEAK = 0.13  # ipo's best beta: between grid points, so the fit has to interpolate
KL_SCALE = 0.05
WIDTH = 1.5  # the hump's sd in log beta
BETAS = 0.02 * np.sqrt(2) ** np.arange(17)  # 0.02 to 5.12, sqrt(2) apart
SEEDS = [0, 1, 2]
SEED_OFFSET = {0: 0.01, 1: -0.005, 2: 0.0}
STEPS = [0, 50, 100]


def binomial_histogram(temperature: float, n: int = 8) -> list[list[float]]:
    """[p, count] over 10_000 chosen-first pairs: d = r_a - r_b, d + n ~ Binomial(2n, 1/2)."""
    counts = {}
    for k in range(2 * n + 1):
        d = k - n
        p = 1 / (1 + math.exp(-d / temperature))
        # Chosen-minus-rejected difference d: the pair (a, b) with r_a - r_b = d labelled a first (probability
        # p), or the pair with r_a - r_b = -d labelled b first (probability p): weight 2 P(d) p in all.
        counts[p] = counts.get(p, 0.0) + 10_000 * 2 * comb(2 * n, k) / 4**n * p
    return [[p, c] for p, c in sorted(counts.items())]


def win_rate(loss: str, beta: float, seed: int, noise: float, peak_shift: float = 1.0, shape: str = "gauss") -> float:
    x = math.log(beta / (PEAK * SHIFT[loss] * peak_shift))
    if loss == "slic":  # rises over the whole grid: no interior peak
        return 0.5 + 0.1 * math.tanh(math.log(beta)) + SEED_OFFSET.get(seed, 0.0)
    hump = 0.2 * math.exp(-x * x / (2 * WIDTH**2)) if shape == "gauss" else 0.2 - 0.02 * x * x
    rng = np.random.default_rng(zlib.crc32(f"{loss} {beta:.6g} {seed}".encode()))
    return 0.5 + hump + SEED_OFFSET.get(seed, 0.0) + noise * rng.standard_normal()


def summary(loss, beta, seed, temperature=1.0, noise=0.004, kl_shift=None, status="finished", **kw) -> RunSummary:
    fn = LOSSES[loss]()
    kl = KL_SCALE * (SHIFT[loss] if kl_shift is None else kl_shift) / beta
    win = win_rate(loss, beta, seed, noise, **kw)
    metrics = {"eval/kl": kl, "eval/kl_stderr": 0.01, "eval/win_rate": win, "eval/win_rate_stderr": 0.01,
               "eval/gold_reward": 3 + win, "eval/gold_reward_stderr": 0.02, "eval/gold_reward_reference": 3.5,
               "eval/offline_regulariser": 2 * kl * (1 + kl), "val/loss": 0.6 - 0.01 * math.log(beta),
               "val/rewards/accuracies": 0.6 + 0.01 * math.log(beta), "train/loss": 0.5}
    trajectory = [{"step": s, "eval/kl": kl * s / 100, "eval/win_rate": 0.5 + (win - 0.5) * s / 100,
                   "eval/gold_reward": 3.5 + (win - 0.5) * s / 100,
                   "eval/offline_regulariser": 2 * kl * s / 100 * (1 + kl * s / 100)} for s in STEPS]
    return RunSummary(loss=loss, beta=float(beta), seed=seed, status=status,
                      overrides=[f"loss={loss}", f"beta={beta:g}", f"seed={seed}",
                                 f"{TEMPERATURE_KEY}={temperature:g}"],
                      loss_config={"_target_": f"gpo.losses.{type(fn).__name__}"}, theory=fn.theory(),
                      metrics=metrics if status == "finished" else {"train/loss": 123.0},
                      trajectory=trajectory if status == "finished" else [],
                      data={"preference_probabilities": binomial_histogram(temperature)}, wall_time_s=10.0 + seed,
                      error=None if status == "finished" else "RuntimeError: loss is NaN at step 17")


def make_sweep(directory: Path, losses=("dpo", "ipo", "slic"), betas=BETAS, seeds=SEEDS, failed=True, **kw) -> Path:
    for i, (loss, beta, seed) in enumerate(itertools.product(losses, betas, seeds)):
        # Some jobs one level deeper: summaries are found recursively.
        summary(loss, beta, seed, **kw).write(directory / (f"{i}" if i % 2 else f"group/{i}"))
    if failed:
        summary("dpo", betas[0], 3, status="failed").write(directory / "failed")
    return directory


def quantiles(best, loss):
    row = best.set_index("loss").loc[loss]
    return row["best_beta"], row["best_beta_low"], row["best_beta_high"], row


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A synthetic sweep with the report already written (plotting is the slow part)."""
    directory = make_sweep(tmp_path_factory.mktemp("written") / "multirun")
    return directory, report.write_report(directory)


# ------------------------------------------------------------ best beta


def test_best_beta_recovers_known_peaks_with_intervals(written):
    directory, result = written
    best = result.best
    assert best.attrs["metric"] == "eval/win_rate"
    for loss in ["ipo", "dpo"]:
        value, lo, hi, row = quantiles(best, loss)
        truth = PEAK * SHIFT[loss]
        assert value == pytest.approx(truth, rel=0.05), loss
        assert lo < truth < hi and hi / lo < 1.5, loss
        assert row["edge"] == "" and row["n_seeds"] == 3 and row["note"] == ""
    dpo = best.set_index("loss").loc["dpo"]
    assert dpo["ratio"] == pytest.approx(3.0, rel=0.05) and dpo["ratio_low"] < 3.0 < dpo["ratio_high"]
    assert dpo["taylor_ratio"] == pytest.approx(2.0)  # the paper's prediction, scale 1 / scale 1/2
    assert dpo["link_ratio"] == pytest.approx(3.17, abs=0.01)  # temperature 1: see test_link_ratio
    csv = pd.read_csv(directory / "best_beta.csv", keep_default_na=False)
    assert list(csv.columns) == ["loss", "best_beta", "best_beta_low", "best_beta_high", "ratio", "ratio_low",
                                 "ratio_high", "edge", "n_seeds", "note"]
    row = csv.set_index("loss").loc["dpo"]
    assert float(row["best_beta_low"]) == pytest.approx(dpo["best_beta_low"]) and row["note"] == ""
    assert float(csv.set_index("loss").loc["ipo", "ratio"]) == 1.0  # the reference itself


def test_verdicts_follow_the_interval(written):
    """"agrees" exactly when the prediction lies inside the ratio's interval, else "disagrees" with the numbers."""
    _, result = written
    md = result.markdown.split("## Best β per family")[1].split("##")[0]
    dpo = result.best.set_index("loss").loc["dpo"]
    for column, label in [("taylor_ratio", "Taylor (paper)"), ("link_ratio", "link (derived)")]:
        inside = dpo["ratio_low"] <= dpo[column] <= dpo["ratio_high"]
        assert f"{dpo[column]:.3g}: {'agrees' if inside else 'disagrees'}" in md
        if not inside:
            assert (f"{label}: disagrees for dpo: {dpo[column]:.3g} outside "
                    f"[{dpo['ratio_low']:.3g}, {dpo['ratio_high']:.3g}]") in md


def test_family_peaking_at_the_grid_end_is_flagged(written):
    directory, result = written
    value, lo, hi, row = quantiles(result.best, "slic")
    assert row["edge"] == "high" and row["best_grid_beta"] == pytest.approx(BETAS[-1])
    assert math.isnan(value) and math.isnan(lo) and math.isnan(hi) and math.isnan(row["ratio"])
    assert math.isnan(row["taylor_ratio"])  # f''(0) = 0
    assert "≥ 5.12 (grid end)" in result.markdown
    assert "slic: no interval for the best β: the best grid point is the grid's high end" in result.markdown
    csv = pd.read_csv(directory / "best_beta.csv", keep_default_na=False).set_index("loss")
    assert csv.loc["slic", "best_beta"] == "" and csv.loc["slic", "ratio"] == "" and csv.loc["slic", "edge"] == "high"


def test_a_seed_moving_both_peaks_alike_cancels_in_the_ratio(tmp_path):
    """Seeds shared by families: a seed that moves every family's peak by the same factor spreads
    each best beta, not their ratio (MOVER with the seeds' correlation)."""
    for seed, shift in zip(SEEDS, [0.8, 1.0, 1.25]):
        for loss in ("dpo", "ipo"):
            for i, beta in enumerate(BETAS):
                summary(loss, beta, seed, noise=0.0, shape="quad", peak_shift=shift).write(
                    tmp_path / f"{loss}{i}{seed}")
    best = best_beta(report.load_summaries(tmp_path), level=0.9).set_index("loss")
    assert best.loc["ipo", "best_beta_high"] / best.loc["ipo", "best_beta_low"] > 1.1
    assert best.loc["dpo", "ratio"] == pytest.approx(3.0, rel=1e-6)
    assert best.loc["dpo", "ratio_high"] / best.loc["dpo", "ratio_low"] == pytest.approx(1, abs=1e-6)


def test_lower_is_better_metric():
    x = np.log(0.3 * np.sqrt(2) ** (np.arange(-4, 5) + 0.3))  # the optimum between grid points
    rng = np.random.default_rng(0)
    runs = pd.DataFrame({"loss": "a", "beta": np.exp(np.repeat(x, 3)), "seed": [0, 1, 2] * len(x),
                         "status": "finished", "regularisation_scale": 1.0,
                         "val/loss": np.repeat((x - np.log(0.3)) ** 2, 3) + 0.001 * rng.standard_normal(3 * len(x))})
    best = best_beta(normalise(runs), metric="val/loss", reference="a")
    assert best["best_beta"].iloc[0] == pytest.approx(0.3, rel=0.02)
    assert best["best_beta_low"].iloc[0] < best["best_beta"].iloc[0] < best["best_beta_high"].iloc[0]


def test_generic_predictors_get_a_verdict_without_a_report_edit(tmp_path, monkeypatch):
    """A new `*_ratio` column of `theory.predictions` (e.g. another helper's projected link) is
    judged against the interval like the others."""
    from gpo.report import theory, write

    def with_projected(runs, reference="ipo", by=None):
        preds = theory.predictions(runs, reference, by)
        return preds.assign(projected_link_ratio=np.where(preds["loss"] == "dpo", 3.0, np.nan))

    monkeypatch.setattr(write, "predictions", with_projected)
    directory = make_sweep(tmp_path / "p", losses=("dpo", "ipo"), failed=False)
    result = report.write_report(directory, plots=False)
    assert "| projected link (derived) |" in result.markdown.replace(" |\n", " |")
    assert "3: agrees" in result.markdown  # dpo's ratio is 3 (SHIFT) and its interval holds it


# ------------------------------------------------------------ theory


def closed_form_ratios(temperature):
    p, w = np.array(binomial_histogram(temperature)).T
    logit, linear = np.log(p / (1 - p)), 2 * p - 1  # the logistic and squared links
    return math.sqrt(np.sum(w * logit**2) / np.sum(w * linear**2)), np.sum(w * logit * linear) / np.sum(w * linear**2)


def test_link_ratio_logistic_vs_squared(tmp_path):
    rms, lsq = closed_form_ratios(1.0)
    assert rms == pytest.approx(3.17, abs=0.005)
    for temperature in [1.0, 50.0]:
        directory = make_sweep(tmp_path / f"t{temperature}", betas=BETAS[:2], seeds=[0], failed=False,
                               temperature=temperature)
        preds = predictions(report.load_summaries(directory)).set_index("loss")
        rms, lsq = closed_form_ratios(temperature)
        assert preds.loc["dpo", "link_ratio"] == pytest.approx(rms, rel=1e-5)
        assert preds.loc["dpo", "link_ratio_lsq"] == pytest.approx(lsq, rel=1e-5)
        assert preds.loc["ipo", "link_ratio"] == pytest.approx(1.0)
        assert preds.loc["dpo", "taylor_ratio"] == pytest.approx(2.0)
        assert math.isnan(preds.loc["slic", "taylor_ratio"]) and preds.loc["slic", "link_ratio"] > 0
    assert preds.loc["dpo", "link_ratio"] == pytest.approx(2.0, abs=0.01)  # weak preferences: the Taylor limit


# ------------------------------------------------------------ matched KL


def test_matched_kl_recovers_a_known_beta_shift():
    betas = np.array([0.05, 0.1, 0.2, 0.5, 1.0, 2.0])
    rows = []
    # KL = 1/beta for ipo; dpo needs twice the beta for the same KL; savage three times, 0.1 lower win rate.
    for loss, scale, shift, drop in [("ipo", 1.0, 1.0, 0.0), ("dpo", 0.5, 2.0, 0.0), ("savage", 0.5, 3.0, 0.1)]:
        for beta in betas * shift:
            kl = shift / beta
            rows.append({"loss": loss, "beta": beta, "regularisation_scale": scale, "eval/kl": kl,
                         "eval/win_rate": 1 - 0.5 * np.exp(-kl) - drop, "eval/win_rate_stderr": 0.01})
    table = pd.DataFrame(rows)
    result = matched_kl(table, kls=[1.0, 4.0, 100.0]).set_index(["loss", "kl"])
    assert result.loc[("dpo", 1.0), "beta_ratio"] == pytest.approx(2.0)
    assert result.loc[("dpo", 4.0), "taylor_ratio"] == pytest.approx(2.0)
    assert result.loc[("savage", 4.0), "beta_ratio"] == pytest.approx(3.0)
    assert result.loc[("ipo", 1.0), "beta"] == pytest.approx(1.0)
    gap = result.loc[("ipo", 4.0), "eval/win_rate"] - result.loc[("savage", 4.0), "eval/win_rate"]
    assert gap == pytest.approx(0.1)
    assert result.loc[("dpo", 4.0), "eval/win_rate"] == pytest.approx(result.loc[("ipo", 4.0), "eval/win_rate"])
    assert np.isnan(result.loc[("ipo", 100.0), "eval/win_rate"])  # outside every curve: no extrapolation
    summary = matched_kl_ratios(table).set_index("loss")
    assert summary.loc["dpo", "ratio"] == pytest.approx(2.0) and summary.loc["savage", "ratio"] == pytest.approx(3.0)
    assert (summary.loc["dpo", "kl_lo"], summary.loc["dpo", "kl_hi"]) == (pytest.approx(0.5), pytest.approx(20.0))


def test_matched_kl_on_a_narrow_common_range():
    table = pd.DataFrame({"loss": ["dpo", "dpo", "ipo", "ipo"], "beta": [0.1, 1.0, 0.1, 1.0],
                          "regularisation_scale": [0.5, 0.5, 1.0, 1.0], "eval/kl": [1.001, 1.009, 1.0, 1.01],
                          "eval/win_rate": [0.6, 0.7, 0.6, 0.7]})
    assert default_kls(table) == [1.0]  # three log-spaced points rounded to the same value: kept once
    assert len(matched_kl(table)) == 2


def test_max_gap_constructed_case():
    # a: KL 1..3, win 0.5..0.7; b: KL 1.5..4. Common range [1.5, 3];
    # |a - b| at the knots 1.5, 2, 2.5, 3 is 0, 0.025, 0.05, 0.0333: max 0.05 at KL 2.5.
    table = pd.DataFrame({"loss": ["a"] * 3 + ["b"] * 3, "beta": [0.4, 0.2, 0.1] * 2,
                          "eval/kl": [1.0, 2.0, 3.0, 1.5, 2.5, 4.0],
                          "eval/win_rate": [0.5, 0.6, 0.7, 0.55, 0.7, 0.8]})
    gap = max_matched_kl_gap(table)
    assert (gap.gap, gap.kl, gap.pair) == (pytest.approx(0.05), pytest.approx(2.5), ("a", "b"))
    assert gap.kl_range == pytest.approx((1.5, 3.0))
    disjoint = table.assign(**{"eval/kl": table["eval/kl"] + [0, 0, 0, 10, 10, 10]})
    assert max_matched_kl_gap(disjoint).pair is None  # no common KL range


def test_label_check_by_temperature(tmp_path):
    # At each temperature dpo needs the link-predicted multiple of ipo's beta for the same KL.
    directory = tmp_path / "by"
    expected = {}
    for temperature in [1.0, 4.0]:
        expected[temperature] = closed_form_ratios(temperature)[0]
        for loss in ("dpo", "ipo"):
            shift = expected[temperature] if loss == "dpo" else 1.0
            for i, beta in enumerate(BETAS[::2]):
                for seed in SEEDS:
                    summary(loss, beta * shift, seed, temperature=temperature, kl_shift=shift).write(
                        directory / f"{temperature}-{loss}-{i}-{seed}")
    result = report.write_report(directory, by=TEMPERATURE_KEY, plots=False)
    check = result.beta_ratios.set_index([TEMPERATURE_KEY, "loss"])
    for temperature, ratio in expected.items():
        row = check.loc[(temperature, "dpo")]
        assert row["ratio"] == pytest.approx(ratio, rel=1e-6)
        assert row["ratio_low"] == pytest.approx(ratio) == row["ratio_high"]  # noise-free KL: zero width
        assert row["link_ratio"] == pytest.approx(ratio, rel=1e-5)
        assert row["taylor_ratio"] == pytest.approx(2.0)
    assert set(result.table[TEMPERATURE_KEY]) == {1.0, 4.0}  # results split by the key
    assert set(result.best[TEMPERATURE_KEY]) == {1.0, 4.0}  # best beta per group
    csv = pd.read_csv(directory / "best_beta.csv")
    assert list(csv.columns[:2]) == [TEMPERATURE_KEY, "loss"] and len(csv) == 4
    figure = plot_ratio_vs_key(result.beta_ratios, TEMPERATURE_KEY, directory / "ratio.png")
    assert mpimg.imread(figure).shape[:2] == SIZE
    assert f"## β ratio at matched KL, by {TEMPERATURE_KEY}" in result.markdown
    with pytest.raises(LookupError, match="override keys in this sweep"):
        report.write_report(directory, by="data.source.nonexistent")


# ------------------------------------------------------------ loading, tables, plots


def test_run_table_and_trajectories(written):
    directory, result = written
    runs, trajectories = report.load_sweep(directory)
    assert len(runs) == 3 * len(BETAS) * len(SEEDS) + 1
    assert runs[TEMPERATURE_KEY].eq(1.0).all()  # the override key, parsed to a number
    assert {"f0", "d2f0", "regularisation_scale", "eval/offline_regulariser"} <= set(runs.columns)
    assert len(trajectories) == (len(runs) - 1) * len(STEPS)  # the failed run has none
    assert list(trajectories.columns[:5]) == ["path", "loss", "beta", "seed", "status"]
    start = trajectories[trajectories["step"] == 0]
    assert (start["eval/kl"] == 0).all() and np.allclose(start["eval/win_rate"], 0.5)


def test_csv_rows_and_seed_aggregation(written):
    directory, _ = written
    csv = pd.read_csv(directory / "report.csv")
    row = csv[(csv["loss"] == "ipo") & np.isclose(csv["beta"], BETAS[4])].iloc[0]
    values = [win_rate("ipo", BETAS[4], s, 0.004) for s in SEEDS]
    assert row["eval/win_rate"] == pytest.approx(np.mean(values))
    assert row["eval/win_rate_stderr"] == pytest.approx(np.std(values, ddof=1) / math.sqrt(3))
    failed_cell = csv[(csv["loss"] == "dpo") & np.isclose(csv["beta"], BETAS[0])].iloc[0]
    assert (failed_cell["n_runs"], failed_cell["n_finished"], failed_cell["n_failed"]) == (4, 3, 1)
    assert failed_cell["train/loss"] == pytest.approx(0.5)  # the failed run's 123 does not leak in


def test_markdown_sections(written):
    directory, _ = written
    md = (directory / "report.md").read_text()
    sections = ["## Results per (loss, β)", "## Best β per family, relative to ipo",
                "## Gao et al.'s over-optimisation curves", "## β ratio at matched KL", "## Families at matched KL",
                "## Seeds needed", "## Plots", "## Failed runs"]
    assert [md.index(s) for s in sections] == sorted(md.index(s) for s in sections)
    assert "f''(0)/\\|f'(0)\\|" in md  # a bare | in a header would split the column
    assert '"as predicted by theory"' in md and "derived here, not in the paper" in md
    assert "| Taylor (paper) |" in md and "| link (derived) |" in md
    assert "RuntimeError: loss is NaN at step 17" in md.split("## Failed runs")[1]
    assert "Seed means ± standard error over seeds." in md and "**" not in md and "?" not in md.replace("?)", "")


def test_plots_have_fixed_size(written):
    directory, result = written
    names = ["metrics_vs_beta.png", "metrics_vs_scaled_beta.png", "gold_vs_kl.png", "trajectories_win_rate.png",
             "trajectories_gold_reward.png", "regulariser_vs_kl.png", "best_beta.png"]
    for name in names:
        assert directory / name in result.paths, name
        assert mpimg.imread(directory / name).shape[:2] == SIZE, name
    assert unscalable_families(result.table) == ["slic"]


def test_cli(tmp_path, capsys):
    """In process (the script's main), to spare a second interpreter start; the next test runs it as a script."""
    spec = importlib.util.spec_from_file_location("report_cli", ROOT / "src" / "report.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    directory = make_sweep(tmp_path / "cli", losses=("dpo", "ipo"), betas=BETAS[2:9], seeds=SEEDS[:2])
    assert cli.main([str(directory), "--by", TEMPERATURE_KEY, "--no-plots", "--window", "0.25"]) == 0
    out = capsys.readouterr().out
    assert f"| {TEMPERATURE_KEY} | loss | β |" in out  # the results table, split by the key
    assert "at matched KL [95%]" in out  # the matched-KL ratio
    assert str(directory / "best_beta.csv") in out and not list(directory.glob("*.png"))
    elsewhere = tmp_path / "elsewhere" / "report"  # --out: the sweep directory is only read
    before = sorted(p.name for p in directory.iterdir())
    assert cli.main([str(directory), "--out", str(elsewhere), "--no-plots"]) == 0
    assert str(elsewhere / "best_beta.csv") in capsys.readouterr().out
    assert (elsewhere / "report.md").is_file() and sorted(p.name for p in directory.iterdir()) == before
    assert f"Sweep directory: `{directory}`" in (elsewhere / "report.md").read_text()
    with pytest.raises(SystemExit):
        cli.main([str(directory), "--out", str(elsewhere / "report.md")])
    assert "report.md: exists and is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([str(directory), "--level", "95"])
    assert "--level and --window must lie in (0, 1)" in capsys.readouterr().err
    assert cli.main([str(directory), "--metric", "eval/win_rat", "--no-plots"]) == 1
    assert "no run has the metric 'eval/win_rat' (metrics in this sweep: " in capsys.readouterr().err
    assert cli.main([str(directory), "--by", "no.such.key"]) == 1
    assert "no run has 'no.such.key'" in capsys.readouterr().err
    (directory / "1" / "summary.json").write_text('{"loss": "dpo", "beta": 0.1')  # truncated
    assert cli.main([str(directory), "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert "1/summary.json: not a readable summary.json (JSONDecodeError" in err and "Traceback" not in err


def test_a_run_copied_under_the_sweep_is_an_error_not_a_seed(tmp_path, caplog):
    """A sweep resumed into a second directory under the reported one holds each finished run twice:
    counted, they would be extra seeds with identical values (an interval too narrow). Other seeds,
    other overrides (a --by group) and a failed run beside its finished re-run are not twins."""
    directory = make_sweep(tmp_path / "twins", losses=("dpo", "ipo"), betas=BETAS[2:9], seeds=SEEDS[:2])
    summary("dpo", BETAS[2], 0, temperature=2.0).write(directory / "other_group")
    summary("dpo", BETAS[2], 0, status="failed").write(directory / "failed_then_rerun")
    report.write_report(directory, plots=False, by=TEMPERATURE_KEY)
    summary("ipo", BETAS[4], 1).write(directory / "resumed" / "7")
    with pytest.raises(LookupError, match=r"2 finished runs repeat another's configuration, e\.g\. .* and resumed/7 "
                                          r"\(loss ipo, beta 0\.08, seed 1"):
        report.write_report(directory, plots=False)
    # At the end of a multirun the jobs stand: the callback says why there is no report instead of failing.
    from omegaconf import OmegaConf

    from gpo.sweeps.outcomes import WriteSweepReport

    (directory / "report.md").unlink()
    (directory / "resumed" / "7" / ".hydra").mkdir()  # a Hydra job directory, as the callback looks for
    with caplog.at_level("WARNING", logger="gpo.sweeps.outcomes"):
        WriteSweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(directory)}}}))
    assert "No sweep report: 2 finished runs repeat" in caplog.text and not (directory / "report.md").exists()


def test_cli_empty_directory_fails_cleanly(tmp_path, run_in_process):
    done = run_in_process("src/report.py", str(tmp_path))  # an exception would raise here
    assert done.returncode == 1
    assert "no summary.json" in done.stderr and "Traceback" not in done.stderr


def test_wandb_runs_offline(monkeypatch):
    """The W&B reader, with the public API replaced by runs built from the synthetic summaries."""
    wandb = pytest.importorskip("wandb")

    class FakeRun:
        def __init__(self, loss, beta, seed):
            record = summary(loss, beta, seed)
            self.config = {"loss": {"_target_": record.loss_config["_target_"]}, "beta": beta, "seed": seed}
            self.summary = {**record.metrics, "loss": loss, **record.theory, "_runtime": 7.0, "_step": 100}
            self.state = "finished"
            self.url = f"https://wandb.example/{loss}/{beta}/{seed}"

    class FakeApi:
        default_entity = "someone"

        def runs(self, path, filters):
            assert path == "someone/gpo" and filters == {"group": "sweep-1"}
            return [FakeRun(loss, b, s) for loss in ("dpo", "ipo") for b in BETAS for s in SEEDS]

    monkeypatch.setattr(wandb, "Api", FakeApi)
    runs = report.load_wandb_runs("sweep-1", project="gpo")
    table = aggregate(runs)
    assert len(table) == 2 * len(BETAS) and "_step" not in table
    assert table["wall_time_s"].eq(7.0).all()
    best = best_beta(runs).set_index("loss")
    assert best.loc["dpo", "ratio"] == pytest.approx(3.0, rel=0.1)


# ------------------------------------------------------------ small sweeps: words, not numbers it cannot back


def test_tiny_sweep_one_seed_two_betas_one_family_and_a_failed_run(tmp_path):
    directory = make_sweep(tmp_path / "tiny", losses=("dpo",), betas=BETAS[8:10], seeds=[0])  # + a failed dpo run
    result = report.write_report(directory)
    md = result.markdown
    assert "one seed per point; no between-seed error" in md and "standard error over seeds" not in md
    assert "?" not in md and "**" not in md and not re.search(r"\[-?[\d.]+, ", md)  # no interval anywhere
    assert "The reference family ipo is not in the sweep" in md
    assert "dpo: no interval for the best β: the best grid point is the grid's" in md
    csv = pd.read_csv(directory / "best_beta.csv", keep_default_na=False)
    assert csv.to_dict("records") == [{"loss": "dpo", "best_beta": "", "best_beta_low": "", "best_beta_high": "",
                                       "ratio": "", "ratio_low": "", "ratio_high": "", "edge": csv["edge"][0],
                                       "n_seeds": 1, "note": csv["note"][0]}]
    assert csv["edge"][0] in ("low", "high") and csv["note"][0]
    assert not (directory / "best_beta.png").exists()  # nothing with an interval to draw
    for path in result.figures:
        assert mpimg.imread(path).shape[:2] == SIZE


def test_one_seed_sweep_has_points_and_no_intervals(tmp_path):
    directory = make_sweep(tmp_path / "one", losses=("dpo", "ipo"), seeds=[0], failed=False)
    result = report.write_report(directory, plots=False)
    best = result.best.set_index("loss")
    assert best.loc["dpo", "best_beta"] == pytest.approx(PEAK * 3, rel=0.1)
    assert best["best_beta_low"].isna().all() and best["ratio_low"].isna().all()
    md = result.markdown
    assert "no interval for the best β: one seed" in md and ": agrees" not in md and ": disagrees" not in md
    assert "Not computable: needs at least two seeds." in md  # the advisor
    assert "(1 seed: no interval below 3)" in md  # the matched-KL gaps


def test_report_without_reference_family_or_kl(tmp_path):
    """A sweep of one family without the reference, and a metric set without KL: no crash, words."""
    directory = make_sweep(tmp_path / "noref", losses=("dpo",), failed=False)
    result = report.write_report(directory, reference="ipo", plots=False)
    assert "ipo is not in the sweep" in result.markdown
    runs = report.load_summaries(directory).drop(columns=["eval/kl", "eval/kl_stderr"])
    result = report.write_report(tmp_path / "nokl", runs, plots=False)
    assert result.gaps is None and "## Families at matched KL" not in result.markdown
