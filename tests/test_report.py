"""Tests of the sweep report (the gpo.report package and the src/report.py CLI).

Synthetic sweeps stand in for real ones, written as summary.json files with
`RunSummary`, with answers known in advance:
- gold win rate is a hump in log beta peaking at beta = PEAK * SHIFT[family]:
  dpo's peak is exactly 3x ipo's; slic's win rate rises to the grid's end;
- KL = KL_SCALE * SHIFT[family] / beta, so at matched KL dpo needs 3x ipo's beta;
- three seeds, each a small offset plus noise;
- the preference probabilities are those of the synthetic task: reward
  difference d + 8 ~ Binomial(16, 1/2), p = sigmoid(d / temperature).
"""

import importlib.util
import itertools
import math
import os
import subprocess
import sys
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

ROOT = Path(__file__).resolve().parents[1]
SIZE = (800, 1200)  # rows, columns of a 12 x 8 inch figure at 100 dpi
TEMPERATURE_KEY = "data.source.reward_temperature"

LOSSES = {"dpo": Logistic, "ipo": Squared, "slic": Hinge}
SHIFT = {"dpo": 3.0, "ipo": 1.0, "slic": 1.0}  # dpo needs 3x ipo's beta for the same effect
PEAK = 0.13  # ipo's best beta: between grid points, so the fit has to interpolate
KL_SCALE = 0.05
BETAS = np.geomspace(0.01, 10.0, 13)  # a factor 10^(1/4) ~ 1.78 between neighbours
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
    hump = 0.2 * math.exp(-x * x / 2) if shape == "gauss" else 0.2 - 0.02 * x * x
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
    return row["best_beta"], row["best_beta_lo"], row["best_beta_hi"], row


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A synthetic sweep with the report already written (plotting is the slow part)."""
    directory = make_sweep(tmp_path_factory.mktemp("written") / "multirun")
    return directory, report.write_report(directory, n_boot=300)


# ------------------------------------------------------------ best beta


def test_best_beta_recovers_known_peaks_with_intervals(written):
    _, result = written
    best = result.best
    assert best.attrs["metric"] == "eval/win_rate"
    for loss in ["ipo", "dpo"]:
        value, lo, hi, row = quantiles(best, loss)
        truth = PEAK * SHIFT[loss]
        assert value == pytest.approx(truth, rel=0.08), loss
        assert lo < truth < hi and hi - lo > 0, loss
        assert row["edge"] == "" and row["n_seeds"] == 3
    dpo = best.set_index("loss").loc["dpo"]
    assert dpo["ratio"] == pytest.approx(3.0, rel=0.1)
    assert dpo["ratio_lo"] < 3.0 < dpo["ratio_hi"]
    assert dpo["taylor_ratio"] == pytest.approx(2.0)  # the paper's prediction, scale 1 / scale 1/2
    assert dpo["link_ratio"] == pytest.approx(3.17, abs=0.01)  # temperature 1: see test_link_ratio


def test_family_peaking_at_the_grid_end_is_flagged(written):
    _, result = written
    value, lo, hi, row = quantiles(result.best, "slic")
    assert row["edge"] == "high" and value == pytest.approx(BETAS[-1])
    assert math.isnan(lo) and math.isnan(hi) and math.isnan(row["ratio_lo"])
    assert row["ratio_bound"] == "≥"
    assert math.isnan(row["taylor_ratio"])  # f''(0) = 0
    assert "(peak at the grid's high end)" in result.markdown


def test_bootstrap_resamples_seeds_jointly(tmp_path):
    # Exactly quadratic humps: the fit is exact, its vertex the mean of the seeds' peaks.
    # Seed-level offsets common to every beta do not move a peak: a joint resample has zero spread.
    runs = report.load_summaries(make_sweep(tmp_path / "a", losses=("dpo", "ipo"), noise=0.0, shape="quad"))
    best = report.best_beta(runs, n_boot=200).set_index("loss")
    assert best.loc["ipo", "best_beta"] == pytest.approx(PEAK, rel=1e-6)
    assert best.loc["ipo", "best_beta_hi"] - best.loc["ipo", "best_beta_lo"] == pytest.approx(0, abs=1e-9)
    # A seed that moves every family's peak by the same factor (one data sample shared by all):
    # the best betas spread, their ratio, resampled jointly across families, does not.
    for seed, shift in zip(SEEDS, [0.8, 1.0, 1.25]):
        for loss in ("dpo", "ipo"):
            for i, beta in enumerate(BETAS):
                summary(loss, beta, seed, noise=0.0, shape="quad", peak_shift=shift).write(
                    tmp_path / "b" / f"{loss}{i}{seed}")
    best = report.best_beta(report.load_summaries(tmp_path / "b"), n_boot=200, level=0.9).set_index("loss")
    assert best.loc["ipo", "best_beta_hi"] / best.loc["ipo", "best_beta_lo"] > 1.1
    assert best.loc["dpo", "ratio"] == pytest.approx(3.0, rel=1e-6)
    assert best.loc["dpo", "ratio_hi"] - best.loc["dpo", "ratio_lo"] == pytest.approx(0, abs=1e-6)


def test_fit_peak_and_direction():
    x = np.log([0.1, 0.2, 0.4, 0.8])
    vertex, value, edge = report.fit_peak(x, -(x - np.log(0.3)) ** 2 + 1)
    assert (math.exp(vertex), value, edge) == (pytest.approx(0.3), pytest.approx(1.0), "")
    assert report.fit_peak(x, np.array([1.0, 2, 3, 4]))[2] == "high"
    assert report.fit_peak(x, np.array([4.0, 3, np.nan, 1]))[2] == "low"
    # Lower is better for a loss: the best beta minimises it.
    runs = pd.DataFrame({"loss": "a", "beta": np.exp(np.repeat(x, 2)), "seed": [0, 1] * 4, "status": "finished",
                         "regularisation_scale": 1.0, "val/loss": np.repeat((x - np.log(0.3)) ** 2, 2)})
    best = report.best_beta(report.normalise(runs), metric="val/loss", reference="a", n_boot=20)
    assert best["best_beta"].iloc[0] == pytest.approx(0.3)


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
        preds = report.predictions(report.load_summaries(directory)).set_index("loss")
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
    result = report.matched_kl(table, kls=[1.0, 4.0, 100.0]).set_index(["loss", "kl"])
    assert result.loc[("dpo", 1.0), "beta_ratio"] == pytest.approx(2.0)
    assert result.loc[("dpo", 4.0), "taylor_ratio"] == pytest.approx(2.0)
    assert result.loc[("savage", 4.0), "beta_ratio"] == pytest.approx(3.0)
    assert result.loc[("ipo", 1.0), "beta"] == pytest.approx(1.0)
    gap = result.loc[("ipo", 4.0), "eval/win_rate"] - result.loc[("savage", 4.0), "eval/win_rate"]
    assert gap == pytest.approx(0.1)
    assert result.loc[("dpo", 4.0), "eval/win_rate"] == pytest.approx(result.loc[("ipo", 4.0), "eval/win_rate"])
    assert np.isnan(result.loc[("ipo", 100.0), "eval/win_rate"])  # outside every curve: no extrapolation
    summary = report.matched_kl_ratios(table).set_index("loss")
    assert summary.loc["dpo", "ratio"] == pytest.approx(2.0) and summary.loc["savage", "ratio"] == pytest.approx(3.0)
    assert (summary.loc["dpo", "kl_lo"], summary.loc["dpo", "kl_hi"]) == (pytest.approx(0.5), pytest.approx(20.0))


def test_matched_kl_on_a_narrow_common_range():
    table = pd.DataFrame({"loss": ["dpo", "dpo", "ipo", "ipo"], "beta": [0.1, 1.0, 0.1, 1.0],
                          "regularisation_scale": [0.5, 0.5, 1.0, 1.0], "eval/kl": [1.001, 1.009, 1.0, 1.01],
                          "eval/win_rate": [0.6, 0.7, 0.6, 0.7]})
    assert report.default_kls(table) == [1.0]  # three log-spaced points rounded to the same value: kept once
    assert len(report.matched_kl(table)) == 2


def test_max_gap_constructed_case():
    # a: KL 1..3, win 0.5..0.7; b: KL 1.5..4. Common range [1.5, 3];
    # |a - b| at the knots 1.5, 2, 2.5, 3 is 0, 0.025, 0.05, 0.0333: max 0.05 at KL 2.5.
    table = pd.DataFrame({"loss": ["a"] * 3 + ["b"] * 3, "beta": [0.4, 0.2, 0.1] * 2,
                          "eval/kl": [1.0, 2.0, 3.0, 1.5, 2.5, 4.0],
                          "eval/win_rate": [0.5, 0.6, 0.7, 0.55, 0.7, 0.8]})
    gap = report.max_matched_kl_gap(table)
    assert (gap.gap, gap.kl, gap.pair) == (pytest.approx(0.05), pytest.approx(2.5), ("a", "b"))
    assert gap.kl_range == pytest.approx((1.5, 3.0))
    disjoint = table.assign(**{"eval/kl": table["eval/kl"] + [0, 0, 0, 10, 10, 10]})
    assert report.max_matched_kl_gap(disjoint).pair is None  # no common KL range


def test_label_check_by_temperature(tmp_path):
    # At each temperature dpo needs the link-predicted multiple of ipo's beta for the same KL.
    directory = tmp_path / "by"
    expected = {}
    for temperature in [1.0, 4.0]:
        expected[temperature] = closed_form_ratios(temperature)[0]
        for loss in ("dpo", "ipo"):
            shift = expected[temperature] if loss == "dpo" else 1.0
            for i, beta in enumerate(BETAS[::2]):
                for seed in SEEDS[:2]:
                    summary(loss, beta * shift, seed, temperature=temperature, kl_shift=shift).write(
                        directory / f"{temperature}-{loss}-{i}-{seed}")
    result = report.write_report(directory, by=TEMPERATURE_KEY, n_boot=50, plots=False)
    check = result.check.set_index([TEMPERATURE_KEY, "loss"])
    for temperature, ratio in expected.items():
        row = check.loc[(temperature, "dpo")]
        assert row["ratio"] == pytest.approx(ratio, rel=1e-6)
        assert row["link_ratio"] == pytest.approx(ratio, rel=1e-5)
        assert row["taylor_ratio"] == pytest.approx(2.0)
    assert set(result.table[TEMPERATURE_KEY]) == {1.0, 4.0}  # results split by the key
    figure = report.plot_ratio_vs_key(result.check, TEMPERATURE_KEY, directory / "ratio.png")
    assert mpimg.imread(figure).shape[:2] == SIZE
    assert f"## Label check: β ratio at matched KL by {TEMPERATURE_KEY}" in result.markdown
    with pytest.raises(LookupError, match="override keys in this sweep"):
        report.write_report(directory, by="data.source.nonexistent", n_boot=10)


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
    sections = ["## Results per (loss, β)", "## Best β per family, relative to ipo", "## β ratios at matched KL",
                "## Curves vs KL at matched KL", "## Plots", "## Failed runs"]
    assert [md.index(s) for s in sections] == sorted(md.index(s) for s in sections)
    assert "f''(0)/\\|f'(0)\\|" in md  # a bare | in a header would split the column
    assert '"as predicted by theory"' in md and "derived here, not in the paper" in md
    assert "Taylor ratio (paper)" in md and "link ratio (derived)" in md
    assert "RuntimeError: loss is NaN at step 17" in md.split("## Failed runs")[1]


def test_plots_have_fixed_size(written):
    directory, result = written
    names = ["metrics_vs_beta.png", "metrics_vs_scaled_beta.png", "gold_vs_kl.png", "trajectories_win_rate.png",
             "trajectories_gold_reward.png", "regulariser_vs_kl.png", "best_beta.png"]
    for name in names:
        assert directory / name in result.paths, name
        assert mpimg.imread(directory / name).shape[:2] == SIZE, name
    assert report.unscalable_families(result.table) == ["slic"]


def test_cli(tmp_path, capsys):
    """In process (the script's main), to spare a second interpreter start; the next test runs it as a script."""
    spec = importlib.util.spec_from_file_location("report_cli", ROOT / "src" / "report.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    directory = make_sweep(tmp_path / "cli", losses=("dpo", "ipo"), betas=BETAS[2:9], seeds=SEEDS[:2])
    assert cli.main([str(directory), "--bootstrap", "50", "--by", TEMPERATURE_KEY, "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert f"| {TEMPERATURE_KEY} | loss | β |" in out  # the results table, split by the key
    assert "measured β/β_ref" in out  # the label check
    assert str(directory / "report.md") in out and not list(directory.glob("*.png"))
    assert cli.main([str(directory), "--by", "no.such.key"]) == 1
    assert "no run has 'no.such.key'" in capsys.readouterr().err


def test_cli_empty_directory_fails_cleanly(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, str(ROOT / "src" / "report.py"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
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
    table = report.aggregate(runs)
    assert len(table) == 2 * len(BETAS) and "_step" not in table
    assert table["wall_time_s"].eq(7.0).all()
    best = report.best_beta(runs, n_boot=50).set_index("loss")
    assert best.loc["dpo", "ratio"] == pytest.approx(3.0, rel=0.1)
