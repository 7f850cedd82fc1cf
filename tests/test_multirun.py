"""The README's sweep through Hydra multirun: every loss in conf/loss trains a
few steps, one W&B run each, one report."""

import math
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import FAST, ROOT, SMALL_TASK
from gpo.infra.config import group_options
from gpo.infra.summary import RunSummary
from wandb_records import find_runs, read_run

LOSSES = sorted(group_options("loss"))  # a new conf/loss/*.yaml joins the sweep and this test by itself


@pytest.mark.slow
def test_loss_glob_sweep_leaves_one_wandb_run_per_loss_and_a_report_of_all(tmp_path):
    command = [sys.executable, "src/train.py", "-m", "loss=glob(*)", "beta=0.1", "trainer.max_steps=5", "num_threads=1",
               *FAST, *SMALL_TASK, f"hydra.sweep.dir={tmp_path}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "WANDB_SILENT": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    # A quiet console: no library progress bars (datasets' maps, transformers' loading and export), 22 jobs long.
    assert "it/s]" not in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]

    summaries = [RunSummary.read(path) for path in tmp_path.glob("*/summary.json")]
    assert sorted(s.loss for s in summaries) == LOSSES
    assert all(s.status == "finished" and s.beta == 0.1 for s in summaries)
    for summary in summaries:  # every loss: its metrics, all finite, its checkpoint, its theory if a GPO family
        for key in ["train/loss", "val/loss", "val/rewards/accuracies", "val/rewards/margins", "val/logps/chosen",
                    "train/grad_norm", "eval/kl", "eval/gold_reward", "eval/win_rate"]:
            assert key in summary.metrics, (summary.loss, key)
        assert all(math.isfinite(v) for v in summary.metrics.values()), summary.loss
        job_dir = next(tmp_path.glob(f"*_{summary.loss}-beta0.1"))
        assert (job_dir / "checkpoints" / "last.ckpt").exists() and (job_dir / "policy" / "config.json").exists()
        assert (summary.theory != {}) == ("regularisation_scale" in summary.theory)

    runs = [read_run(path) for path in find_runs(str(tmp_path)) if os.path.isdir(path)]
    assert sorted(run["name"] for run in runs) == sorted(f"{loss}-beta0.1" for loss in LOSSES)
    assert len({run["group"] for run in runs}) == 1  # one group per multirun
    for run in runs:
        assert run["exit_code"] == 0
        logged = {key for step in run["history"] for key in step}
        for key in ["train/loss", "train/rewards/margins", "train/grad_norm", "val/loss", "val/rewards/accuracies",
                    "lr-AdamW", "train/device/items_per_sec", "eval/kl"]:
            assert key in logged, (run["name"], key)
        assert run["config"]["beta"] == 0.1 and "val/loss" in run["summary"]
        finite_losses = [step["train/loss"] for step in run["history"] if "train/loss" in step]
        assert finite_losses and all(abs(v) < 1e6 for v in finite_losses)

    report = pd.read_csv(tmp_path / "report.csv")  # written by the end-of-sweep Hydra callback
    assert sorted(report["loss"]) == LOSSES and (report["n_finished"] == 1).all()
    assert all(f"| {loss} |" in (tmp_path / "report.md").read_text() for loss in LOSSES)
