"""Multiruns through the Hydra launcher and sweeper plugins, as users run them:
`python src/train.py -m ...` in a subprocess, tiny and short (FAST), sharing the
session's cache (SFT model, reference log-probs) through GPO_CACHE_DIR."""

import json
import os
import re
import runpy
import subprocess
import sys

import matplotlib.image as mpimg
import optuna
import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

import report as report_cli
from conftest import CONF, FAST, ROOT, compose_train
from gpo.infra.summary import RunSummary
from gpo.report import DPI, FIGSIZE
from gpo.sweeps.outcomes import job_outcomes

refined_betas = runpy.run_path(str(ROOT / "sweeps" / "refine_betas.py"))["refined"]  # sweeps/ is not a package

PNG_SHAPE = (FIGSIZE[1] * DPI, FIGSIZE[0] * DPI)  # rows, columns



@pytest.fixture
def multirun(run_in_process):
    """multirun(sweep_dir, *overrides): the sweep command, in this process (its launcher's workers and jobs
    are processes of their own as always); its console output."""
    def run(sweep_dir, *overrides):
        # One torch thread per job: parallel jobs on a shared CPU are many times faster so.
        done = run_in_process("src/train.py", "-m", *overrides, "logger=csv", "num_threads=1", *FAST,
                              f"hydra.sweep.dir={sweep_dir}")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout + done.stderr

    return run


def summaries(sweep_dir):
    return {path.parent.name: json.loads(path.read_text()) for path in sweep_dir.glob("*/summary.json")}


@pytest.mark.slow
def test_parallel_jobs_on_pinned_devices_with_one_failing_then_report(tmp_path, multirun):
    """joblib, 2 worker processes, each pinned to its own (fake) GPU; the
    beta=-1 points fail, the others finish; failures are listed at the end;
    report.py makes the table and plots."""
    sweep = tmp_path / "sweep"
    output = multirun(sweep, "loss=dpo,ipo", "beta=0.5,-1", "hydra/launcher=gpu_node", "hydra.launcher.n_jobs=2",
                      "hydra.callbacks.one_gpu_per_process.gpus=[0,1]",
                      f"hydra.callbacks.one_gpu_per_process.lock_dir={tmp_path / 'locks'}",
                      "~hydra.callbacks.sweep_report")

    jobs = summaries(sweep)
    assert sorted(jobs) == ["000_dpo-beta0.5", "001_dpo-beta-1", "002_ipo-beta0.5", "003_ipo-beta-1"]
    for name in ["000_dpo-beta0.5", "002_ipo-beta0.5"]:
        assert jobs[name]["status"] == "finished" and "val/rewards/accuracies" in jobs[name]["metrics"]
    for name in ["001_dpo-beta-1", "003_ipo-beta-1"]:
        assert jobs[name]["status"] == "failed" and "beta must be a positive number" in jobs[name]["error"]
    assert "2 of 4 jobs did not finish" in output
    assert str(sweep / "003_ipo-beta-1") in output.split("did not finish")[1]

    # Two worker processes, each on its own device for all its jobs.
    devices = {}
    for job in jobs:
        log_lines = (sweep / job / "train.log").read_text().splitlines()
        line = next(row for row in log_lines if "runs its jobs on GPU" in row)
        pid, gpu = line.split("Process ")[1].split(" runs its jobs on GPU ")
        devices.setdefault(pid, set()).add(gpu)
    assert len(devices) == 2 and sorted(min(g) for g in devices.values()) == ["0", "1"]
    assert all(len(g) == 1 for g in devices.values())

    assert report_cli.main([str(sweep)]) == 0  # src/report.py, in-process (its subprocess use is in test_report)
    table = pd.read_csv(sweep / "report.csv")
    finished = table[table["n_finished"] > 0].set_index("loss")
    assert sorted(finished.index) == ["dpo", "ipo"]
    for loss in ["dpo", "ipo"]:
        assert finished.loc[loss, "val/rewards/accuracies"] == pytest.approx(
            jobs[f"{'000' if loss == 'dpo' else '002'}_{loss}-beta0.5"]["metrics"]["val/rewards/accuracies"])
    markdown = (sweep / "report.md").read_text()
    assert "## Failed runs" in markdown and "beta must be a positive number" in markdown
    for name in ["metrics_vs_beta.png", "metrics_vs_scaled_beta.png", "gold_vs_kl.png"]:
        assert mpimg.imread(sweep / name).shape[:2] == PNG_SHAPE, name


@pytest.mark.slow
def test_submitit_local_runs_a_two_point_sweep_and_writes_the_report(tmp_path, multirun):
    sweep = tmp_path / "sweep"
    multirun(sweep, "loss=dpo,ipo", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")

    jobs = summaries(sweep)
    assert sorted(jobs) == ["000_dpo-beta0.1", "001_ipo-beta0.1"]
    assert all(job["status"] == "finished" for job in jobs.values())
    assert all(job["stages"]["reference"]["status"] in ("built", "loaded") for job in jobs.values())
    assert list((sweep / ".submitit").iterdir())  # the jobs really went through submitit
    table = pd.read_csv(sweep / "report.csv")  # written by the end-of-sweep callback
    assert sorted(table["loss"]) == ["dpo", "ipo"] and (table["n_finished"] == 1).all()


@pytest.mark.slow
def test_the_optuna_sweeper_prunes_trials_through_the_launcher(tmp_path, multirun):
    """Jobs report their evaluations to their trials; a pruner that stops any
    trial below a win rate of 1.01 stops both at their first report (step 2 of
    4); the sweeper tells them PRUNED with that value. (Killed and resumed:
    tests/test_resume.py; the parts: tests/test_optuna.py.)"""
    sweep = tmp_path / "sweep"
    output = multirun(sweep, "hparams_search=optuna", "hydra.sweeper.n_trials=2", "~hydra.callbacks.sweep_report",
                      "callbacks.sample_evaluation.every_n_steps=2", "hydra/sweeper/pruner=NopPruner",
                      "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
                      "+hydra.sweeper.pruner.lower=1.01")
    trials = optuna.load_study(study_name="gpo", storage=f"sqlite:///{sweep}/optuna.db").trials
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert all(list(t.intermediate_values) == [2] and t.value == t.intermediate_values[2] for t in trials)
    jobs = summaries(sweep)
    assert sorted(name.split("_")[0] for name in jobs) == ["000", "001"]
    assert all(job["status"] == "pruned" and job["stages"]["optuna"]["pruned_at_step"] == 2 for job in jobs.values())
    assert all(max(point["step"] for point in job["trajectory"]) == 2 for job in jobs.values())
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["trials"]["pruned"] == 2 and "best_value" not in results  # no trial completed
    assert "finished (2 pruned early)" in output


def test_list_failed_jobs_counts_jobs_without_a_summary(tmp_path):
    jobs = [("0_a", RunSummary("dpo", 0.1, 0)), ("1_b", RunSummary("ipo", 0.1, 0, status="failed", error="boom")),
            ("2_c", None), ("3_d", RunSummary("dpo", 0.2, 0, status="pruned"))]
    for name, summary in jobs:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        if summary is not None:
            summary.write(tmp_path / name)
    outcomes = job_outcomes(tmp_path)
    assert [job.name for job, _ in outcomes["finished"]] == ["0_a"]
    assert outcomes["failed"] == [(tmp_path / "1_b", "boom")]
    assert outcomes["pruned"] == [(tmp_path / "3_d", "")]  # stopped early by an Optuna pruner, not a failure
    assert outcomes["missing"] == [(tmp_path / "2_c", "no summary.json")]


PINNER = """
import os, sys, time
from gpo.infra.hydra_callbacks import OneGPUPerProcess
pin = OneGPUPerProcess(gpus=[0, 1], lock_dir=sys.argv[1], wait_s=float(sys.argv[2]))
pin.on_job_start(config=None)
first = os.environ["CUDA_VISIBLE_DEVICES"]
pin.on_job_start(config=None)  # a later job of the same process keeps its device
print(first, os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
"""


def test_gpu_pinning_gives_each_process_its_own_device(tmp_path):
    release = tmp_path / "release"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def start(wait_s):
        return subprocess.Popen([sys.executable, "-c", PINNER, str(tmp_path / "locks"), str(wait_s), str(release)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    holders = [start(0) for _ in range(2)]
    pinned = [job.stdout.readline().split() for job in holders]  # both hold their device from here on
    extra = start(0.5)  # a third process finds both devices held
    extra_out = extra.stdout.readline().split()
    release.touch()
    for job in [*holders, extra]:
        job.wait(timeout=60)

    assert sorted(p[0] for p in pinned) == ["0", "1"] and all(p[0] == p[1] for p in pinned)
    assert extra_out == []  # CUDA_VISIBLE_DEVICES="": no GPU rather than a shared one
    assert "No free GPU among ['0', '1']" in extra.stderr.read()

    # Devices are released with their process: a new one gets a device again.
    release.unlink()
    again = start(0)
    assert again.stdout.readline().split()[0] in ("0", "1")
    release.touch()
    again.wait(timeout=60)


def test_sweep_presets_compose():
    families = compose_train(["sweep=families_beta"], output_dir="unused")
    assert families.experiment_name == "default"
    assert dict(HydraConfig.get().sweeper.params) == {"loss": "glob(*)", "beta": "0.01,0.1,1"}
    paper = compose_train(["sweep=paper_controlled"], output_dir="unused")
    assert paper.experiment_name == "paper_controlled"
    assert HydraConfig.get().sweeper.params.seed == "1,2,3"
    slurm = compose_train(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], output_dir="unused")
    launcher = HydraConfig.get().launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert slurm.reference._target_.endswith("CachedReference")


def slurm_request(*overrides) -> dict:
    """What `hydra/launcher=slurm` asks SLURM for, resolved as Hydra resolves it
    when it builds the launcher (against the whole config: the trainer's keys)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return {key: cfg.hydra.launcher[key] for key in ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task",
                                                     "mem_gb")}


def test_the_slurm_preset_asks_for_what_the_trainer_trains_on():
    """docs/sweeps.md's SLURM commands: a CPU partition (run on a real scheduler
    in tests/test_slurm.py), one GPU per sweep point, DDP on 2 CPU tasks, DDP on
    2 nodes x 8 GPUs (docs/real_models.md)."""
    cpu = {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": None, "cpus_per_task": 1, "mem_gb": 8}
    assert slurm_request() == cpu
    assert slurm_request("trainer=gpu") == {**cpu, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 64}
    assert slurm_request("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2") == {**cpu, "tasks_per_node": 2}
    assert slurm_request("trainer=ddp", "trainer.num_nodes=2", "trainer.devices=8") == {
        "nodes": 2, "tasks_per_node": 8, "gpus_per_node": 8, "cpus_per_task": 8, "mem_gb": 64}
    assert slurm_request("trainer=gpu", "trainer.devices=[0,1]")["gpus_per_node"] == 2
    assert slurm_request("trainer=gpu", "hydra.launcher.cpus_per_task=16")["cpus_per_task"] == 16  # still overridable


@pytest.mark.parametrize("overrides, message", [
    (["trainer=ddp"], "trainer.devices must be a number on gpu, got 'auto': set trainer.devices=<devices per node>"),
    (["trainer.accelerator=auto"], "sizes each job from trainer.accelerator, which must be cpu or gpu there"),
])
def test_a_slurm_request_the_trainer_cannot_size_is_one_line_before_submitting(tmp_path, overrides, message,
                                                                              run_in_process):
    done = run_in_process("src/train.py", "-m", *overrides, "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("error: hydra/launcher=slurm ") and message in lines[0]
    assert not list(tmp_path.iterdir())  # nothing submitted


@pytest.mark.parametrize("name", ["wandb_families_beta.yaml", "wandb_paper_controlled.yaml"])
def test_wandb_sweep_files_give_valid_hydra_overrides(name):
    """Render each parameter value the way `wandb agent` does and compose it."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    spec = yaml.safe_load((ROOT / "sweeps" / name).read_text())
    assert spec["command"] == ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
    assert (ROOT / spec["program"]).exists()
    first = {k: p["values"][0] if "values" in p else p["value"] for k, p in spec["parameters"].items()}
    points = [first] + [{**first, k: v} for k, p in spec["parameters"].items() for v in p.get("values", [])[1:]]
    for point in points:
        overrides = create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})["args_no_hyphens"]
        cfg = compose_train(overrides, output_dir="unused")
        assert HydraConfig.get().runtime.choices["loss"] == point["loss"]
        assert cfg.beta == point["beta"] and cfg.logger.offline is False
        assert cfg.logger._target_.endswith("WandbLogger")
        if "experiment" in point:
            assert cfg.experiment_name == point["experiment"] and cfg.seed == point["seed"]


def test_refine_betas_puts_quarter_octave_points_around_the_seed_mean_peak(tmp_path):
    """sweeps/refine_betas.py: the peak is the seed mean's (not one lucky seed's), failed runs do not count,
    and the four new betas sit at the midpoints of the coarse grid's intervals next to it."""
    runs = {(0.5, 1): 0.60, (0.5, 2): 0.62, (1.0, 1): 0.70, (1.0, 2): 0.66, (2.0, 1): 0.75, (2.0, 2): 0.50}
    for i, ((beta, seed), win_rate) in enumerate(runs.items()):
        RunSummary(loss="dpo", beta=beta, seed=seed, metrics={"eval/win_rate": win_rate}).write(tmp_path / f"{i}")
    RunSummary(loss="dpo", beta=4.0, seed=1, status="failed", metrics={"eval/win_rate": 0.99}).write(tmp_path / "9")
    command = [sys.executable, "sweeps/refine_betas.py", str(tmp_path)]  # as sweeps/capped_variants.sh calls it
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "0.595,0.841,1.19,1.68"  # peak at beta 1 (mean 0.68 > 0.625 at beta 2)
    # The failures in this process (a SystemExit with a message: Python prints it, one line, and exits 1).
    with pytest.raises(SystemExit, match="^error: no finished run with eval/win_rate"):
        refined_betas(tmp_path / "none")
    (tmp_path / "0" / "summary.json").write_text('{"loss": "dpo", "beta"')  # truncated: named, no traceback
    with pytest.raises(SystemExit, match=f"^error: {re.escape(str(tmp_path / '0' / 'summary.json'))}"):
        refined_betas(tmp_path)
