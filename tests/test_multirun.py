"""The README's sweep: 6 loss families x 3 betas through Hydra multirun."""

import itertools
import json
import os
import subprocess
import sys

from conftest import FAST, ROOT
from gpo.wandb_offline import find_runs, read_run

LOSS_NAMES = ["dpo", "exponential", "ipo", "savage", "slic", "truncated_quadratic"]
BETAS = ["0.01", "0.1", "1"]  # as written on the command line, and so in run names


def test_loss_glob_times_beta_grid_leaves_one_wandb_run_per_job(tmp_path):
    command = [sys.executable, "src/train.py", "-m", "loss=glob(*)", "beta=0.01,0.1,1", *FAST,
               f"hydra.sweep.dir={tmp_path}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "WANDB_SILENT": "true"})
    assert result.returncode == 0, result.stderr[-3000:]

    summaries = [json.loads(path.read_text()) for path in tmp_path.glob("*/summary.json")]
    assert sorted((s["loss"], str(s["beta"])) for s in summaries) == list(itertools.product(LOSS_NAMES, BETAS))
    assert all(s["status"] == "finished" for s in summaries)

    runs = [read_run(path) for path in find_runs(str(tmp_path)) if os.path.isdir(path)]
    assert len(runs) == 18
    assert sorted(run["name"] for run in runs) == sorted(f"{loss}-beta{beta}" for loss, beta in
                                                        itertools.product(LOSS_NAMES, BETAS))
    assert len({run["group"] for run in runs}) == 1  # one group per multirun
    for run in runs:
        assert run["exit_code"] == 0
        logged = {key for step in run["history"] for key in step}
        for key in ["train/loss", "train/rewards/margins", "train/grad_norm", "val/loss", "val/rewards/accuracies",
                    "lr-AdamW", "train/device/items_per_sec", "eval/kl"]:
            assert key in logged, (run["name"], key)
        assert run["config"]["beta"] == float(run["name"].split("beta")[1])
        assert "val/loss" in run["summary"]
        finite_losses = [step["train/loss"] for step in run["history"] if "train/loss" in step]
        assert finite_losses and all(abs(v) < 1e6 for v in finite_losses)
