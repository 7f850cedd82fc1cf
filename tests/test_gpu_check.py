"""benchmarks/gpu_check.py, the one-call GPU check, on its CPU path: the same
stages with a tiny model and a few steps, so the script cannot rot between
the rare runs on a GPU."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STAGES = ["assets", "project_sdpa", "project_flash", "trl", "sweep"]


def check(tmp_path, *args, timeout=900):
    env = {**os.environ, "WANDB_SILENT": "true"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "gpu_check.md").read_text()
    results = json.loads((tmp_path / "gpu_check.json").read_text())["results"]
    return done.stdout, table, results


def test_a_spent_budget_still_writes_the_whole_table(tmp_path):
    """No time left: every stage is reported as skipped, and why, in the printed and the written table."""
    stdout, table, results = check(tmp_path, "--budget-s", "0", timeout=120)
    assert list(results) == STAGES
    assert results["assets"]["status"].startswith("skipped: time budget")
    assert results["project_sdpa"]["status"] == "skipped: no assets"
    assert results["project_flash"]["status"] == "skipped: needs CUDA"
    for stage in STAGES:
        assert f"| {stage} | skipped" in table
    assert table.strip() in stdout


@pytest.mark.slow
def test_the_cpu_path_measures_the_project_and_a_two_job_sweep(tmp_path):
    stdout, table, results = check(tmp_path, "--budget-s", "1500", timeout=1800)  # ~2 min on 2 quiet cores
    assert results["assets"]["status"] == "done" and results["assets"]["parameters"] > 0
    project = results["project_sdpa"]
    assert project["status"] == "done" and project["tokens_s"] > 0 and project["peak_gib"] > 0
    assert project["reference_s"] >= 0
    sweep = results["sweep"]
    assert sweep["status"] == "done" and sweep["jobs_finished"] == 2 and len(sweep["tokens_s_each"]) == 2
    trl = results["trl"]  # measured where TRL is installed (benchmarks/requirements.txt), else said so
    assert trl["status"] == "done" and trl["tokens_s"] > 0 or trl["status"].startswith("skipped: TRL not installed")
    assert "| project_sdpa | done |" in table and "| sweep | done (2/2 jobs" in table
