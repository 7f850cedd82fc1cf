"""Tests of the sweep report (src/gpo/report.py and the src/report.py CLI).

A fake multirun directory of summary.json files stands in for a real sweep:
3 families x 3 betas x 2 seeds + 1 failed run. The fake win rate peaks at the
same rescaled beta * f''(0)/|f'(0)| for dpo and ipo, so theory's predicted
best beta is known exactly.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest

from gpo import report

ROOT = Path(__file__).resolve().parents[1]
SIZE = (800, 1200)  # rows, columns of a 12 x 8 inch figure at 100 dpi

# name: (f0, f'(0), f''(0))
FAMILIES = {"dpo": (math.log(2), -0.5, 0.25), "ipo": (1.0, -2.0, 2.0), "slic": (1.0, -1.0, 0.0)}
BETAS = [0.1, 0.2, 0.4]
SEEDS = [0, 1]
SEED_OFFSET = {0: 0.03, 1: -0.01}  # mean offset 0.01, standard error 0.02


def effective_beta(loss, beta):
    scale = FAMILIES[loss][2] / abs(FAMILIES[loss][1])
    return beta * (scale or 0.7)  # slic gets an arbitrary stand-in


def fake_metrics(loss, beta, seed, gold=True):
    s = effective_beta(loss, beta)
    win = 0.7 - 0.1 * abs(math.log2(s / 0.1)) + SEED_OFFSET[seed]  # peak at s = 0.1
    metrics = {
        "val/loss": 0.6 - s + SEED_OFFSET[seed],
        "val/rewards/accuracies": 0.8 - 0.1 * abs(math.log2(s / 0.05)) + SEED_OFFSET[seed],
        "val/rewards/margins": 1.0 / s,
        "val/rewards/chosen": 0.5 / s,
        "val/rewards/rejected": -0.5 / s,
        "val/logps/chosen": -20.0,
        "val/logps/rejected": -25.0,
        "train/loss": 0.5 - s,
    }
    if gold:
        metrics.update({
            "eval/kl": 0.05 / s + seed * 0.1,
            "eval/kl_stderr": 0.05,
            "eval/gold_reward": 1.0 + win,
            "eval/gold_reward_stderr": 0.02,
            "eval/gold_reward_reference": 1.2,
            "eval/win_rate": win,
            "eval/win_rate_stderr": 0.03,
        })
    return metrics


def summary(loss, beta, seed, status="finished", error=None, metrics=None):
    f0, df0, d2f0 = FAMILIES[loss]
    return {
        "loss": loss, "beta": beta, "seed": seed, "status": status, "error": error,
        "wall_time_s": 10.0 + seed, "f0": f0, "df0": df0, "d2f0": d2f0,
        "regularisation_scale": d2f0 / abs(df0),
        "overrides": [f"loss={loss}", f"beta={beta}", f"seed={seed}"],
        "metrics": metrics if metrics is not None else {},
        "job": {"name": "train", "num": 0},  # extra non-numeric fields must be ignored
    }


def make_multirun(directory: Path, gold=True) -> Path:
    job = 0
    for loss in FAMILIES:
        for beta in BETAS:
            for seed in SEEDS:
                # Some jobs one level deeper: summaries are found recursively.
                sub = directory / (f"{job}" if job % 2 else f"group/{job}")
                sub.mkdir(parents=True)
                (sub / "summary.json").write_text(json.dumps(
                    summary(loss, beta, seed, metrics=fake_metrics(loss, beta, seed, gold))))
                job += 1
    failed = directory / f"{job}"
    failed.mkdir()
    (failed / "summary.json").write_text(json.dumps(summary(
        "dpo", 0.4, 2, status="failed", error="RuntimeError: loss is NaN at step 17",
        metrics={"train/loss": 123.0})))
    return directory


@pytest.fixture
def multirun(tmp_path):
    return make_multirun(tmp_path / "multirun")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A fake multirun with the report already written (plotting is the slow part)."""
    directory = make_multirun(tmp_path_factory.mktemp("written") / "multirun")
    return directory, report.write_report(directory)


def test_csv_rows_and_seed_aggregation(written):
    multirun, result = written
    csv = pd.read_csv(multirun / "report.csv")

    assert "job" not in csv  # not a measurement
    assert list(zip(csv["loss"], csv["beta"])) == [(l, b) for l in FAMILIES for b in BETAS]
    row = csv[(csv["loss"] == "ipo") & (csv["beta"] == 0.2)].iloc[0]
    a, b = (fake_metrics("ipo", 0.2, s)["eval/win_rate"] for s in SEEDS)
    assert row["eval/win_rate"] == pytest.approx((a + b) / 2)
    assert row["eval/win_rate_stderr"] == pytest.approx(abs(a - b) / 2)  # std/sqrt(2)
    assert row["eval/kl"] == pytest.approx(0.05 / 0.2 + 0.05)
    assert row["wall_time_s"] == pytest.approx(10.5)
    assert row["n_finished"] == 2 and row["n_failed"] == 0

    failed_cell = csv[(csv["loss"] == "dpo") & (csv["beta"] == 0.4)].iloc[0]
    assert (failed_cell["n_runs"], failed_cell["n_finished"], failed_cell["n_failed"]) == (3, 2, 1)
    # The failed run's partial train/loss of 123 must not leak into the mean.
    expected = sum(fake_metrics("dpo", 0.4, s)["train/loss"] for s in SEEDS) / 2
    assert failed_cell["train/loss"] == pytest.approx(expected)
    assert "1 failed" in failed_cell["status"]
    assert set(result.paths) >= {multirun / "report.csv", multirun / "report.md"}


def test_markdown_lists_tables_and_failed_runs(written):
    multirun, _ = written
    md = (multirun / "report.md").read_text()

    assert "| loss | β |" in md
    assert "f''(0)/\\|f'(0)\\|" in md  # a bare | in a header would split the column
    assert "## Best β per family" in md
    failed_section = md.split("## Failed runs")[1]
    assert "RuntimeError: loss is NaN at step 17" in failed_section
    assert "dpo" in failed_section
    # 9 result rows + 3 best-beta rows + 3 pairwise-gap rows + 3 matched-KL rows (one per family)
    # + 1 failed run, each with a header.
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table_rows) == (1 + 9) + (1 + 3) + (1 + 3) + (1 + 3) + (1 + 1)
    assert "## Curves vs KL at matched KL" in md and "β/β_ipo" in md


def test_plots_have_fixed_size(written):
    multirun, _ = written
    for name in ["metrics_vs_beta.png", "metrics_vs_scaled_beta.png", "gold_vs_kl.png"]:
        image = mpimg.imread(multirun / name)
        assert image.shape[:2] == SIZE, name
    assert report.unscalable_families(report.aggregate(report.load_summaries(multirun))) == ["slic"]


def test_without_gold_metrics_skips_gold_plot(tmp_path):
    directory = make_multirun(tmp_path / "nogold", gold=False)
    result = report.write_report(directory)

    assert not (directory / "gold_vs_kl.png").exists()
    assert mpimg.imread(directory / "metrics_vs_beta.png").shape[:2] == SIZE
    assert "eval/kl" not in result.table or result.table["eval/kl"].isna().all()
    assert result.best.attrs["metric"] == "val/rewards/accuracies"
    assert result.gap is None


def test_best_beta_and_prediction(multirun):
    table = report.aggregate(report.load_summaries(multirun))
    best = report.best_beta(table).set_index("loss")

    assert best.attrs["metric"] == "eval/win_rate"
    # Win rate peaks at beta * scale = 0.1: beta 0.1 for ipo (scale 1), 0.2 for dpo (scale 1/2).
    assert best.loc["ipo", "best_beta"] == pytest.approx(0.1)
    assert best.loc["dpo", "best_beta"] == pytest.approx(0.2)
    assert best.loc["dpo", "predicted_beta"] == pytest.approx(0.1 * 1.0 / 0.5)
    assert best.loc["ipo", "predicted_beta"] == pytest.approx(0.1)
    assert best.loc["slic", "best_beta"] == pytest.approx(0.2)
    assert math.isnan(best.loc["slic", "predicted_beta"])  # scale 0: no prediction

    # From dpo's best beta 0.2 at scale 1/2, ipo (scale 1) needs 0.2 * 0.5 / 1.
    by_dpo = report.best_beta(table, reference="dpo").set_index("loss")
    assert by_dpo.loc["ipo", "predicted_beta"] == pytest.approx(0.1)
    assert by_dpo.loc["dpo", "predicted_beta"] == pytest.approx(0.2)


def test_best_beta_respects_direction():
    table = pd.DataFrame({"loss": ["a"] * 3, "beta": [0.1, 0.2, 0.4],
                          "regularisation_scale": [1.0] * 3, "val/loss": [0.5, 0.3, 0.4]})
    best = report.best_beta(table, metric="val/loss", reference="a")
    assert best["best_beta"].tolist() == [0.2]  # lower loss is better


def test_max_gap_constructed_case():
    # a: KL 1..3, win 0.5..0.7; b: KL 1.5..4. Common range [1.5, 3];
    # |a - b| at the knots 1.5, 2, 2.5, 3 is 0, 0.025, 0.05, 0.0333: max 0.05 at KL 2.5.
    table = pd.DataFrame({
        "loss": ["a"] * 3 + ["b"] * 3,
        "beta": [0.4, 0.2, 0.1] * 2,
        "eval/kl": [1.0, 2.0, 3.0, 1.5, 2.5, 4.0],
        "eval/win_rate": [0.5, 0.6, 0.7, 0.55, 0.7, 0.8],
    })
    gap = report.max_matched_kl_gap(table)
    assert gap.gap == pytest.approx(0.05)
    assert gap.kl == pytest.approx(2.5)
    assert gap.pair == ("a", "b")
    assert gap.kl_range == pytest.approx((1.5, 3.0))

    # A third family identical to a adds a zero gap to a and the same gap to b.
    third = table[table["loss"] == "a"].assign(loss="c")
    gap3 = report.max_matched_kl_gap(pd.concat([table, third]))
    assert gap3.gap == pytest.approx(0.05)
    assert len(gap3.pairwise) == 3
    assert gap3.pairwise["max_gap"].min() == pytest.approx(0.0)

    disjoint = table.assign(**{"eval/kl": table["eval/kl"] + [0, 0, 0, 10, 10, 10]})
    assert report.max_matched_kl_gap(disjoint).pair is None  # no common KL range


def test_single_seed_uses_run_sampling_error():
    runs = pd.DataFrame({"loss": ["a"], "beta": [0.1], "seed": [0], "status": ["finished"],
                         "regularisation_scale": [1.0], "eval/kl": [2.0],
                         "eval/kl_stderr": [0.3]})
    table = report.aggregate(report._normalise(runs))
    assert table.loc[0, "eval/kl_stderr"] == pytest.approx(0.3)


def test_cli(multirun):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, str(ROOT / "src" / "report.py"), str(multirun)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| loss | β |" in done.stdout
    assert str(multirun / "report.md") in done.stdout
    assert str(multirun / "gold_vs_kl.png") in done.stdout
    assert (multirun / "metrics_vs_scaled_beta.png").exists()


def test_cli_empty_directory_fails_cleanly(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, str(ROOT / "src" / "report.py"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert "no summary.json" in done.stderr


def test_wandb_runs_offline(monkeypatch):
    """The W&B reader, with the public API replaced by runs built from the fake summaries."""
    wandb = pytest.importorskip("wandb")

    class FakeRun:
        def __init__(self, loss, beta, seed):
            record = summary(loss, beta, seed, metrics=fake_metrics(loss, beta, seed))
            # Sweep axes in the config, metrics flat in the summary, as a trainer would log them.
            self.config = {"loss": loss, "beta": beta, "seed": seed}
            self.summary = {**record["metrics"], "regularisation_scale": record["regularisation_scale"],
                            "_runtime": 7.0, "_step": 100}
            self.state = "finished"
            self.url = f"https://wandb.example/{loss}/{beta}/{seed}"

    class FakeApi:
        default_entity = "someone"

        def runs(self, path, filters):
            assert path == "someone/gpo" and filters == {"group": "sweep-1"}
            return [FakeRun(l, b, s) for l in FAMILIES for b in BETAS for s in SEEDS]

    monkeypatch.setattr(wandb, "Api", FakeApi)
    table = report.aggregate(report.load_wandb_runs("sweep-1", project="gpo"))

    assert len(table) == 9
    row = table.set_index(["loss", "beta"]).loc[("dpo", 0.2)]
    assert row["wall_time_s"] == pytest.approx(7.0)
    assert row["eval/win_rate"] == pytest.approx(
        sum(fake_metrics("dpo", 0.2, s)["eval/win_rate"] for s in SEEDS) / 2)
    assert "_step" not in table
    assert report.best_beta(table).set_index("loss").loc["dpo", "predicted_beta"] == pytest.approx(0.2)
