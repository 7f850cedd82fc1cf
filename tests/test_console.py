"""What a user sees and reads back: one meaning of beta (summary.json, the W&B
config and summary, the report, run and folder names), and a console that says
each thing once, shows progress, and ends every run with one line."""

import io
import json
import logging
import os
import subprocess
import sys
import warnings

import datasets
import huggingface_hub
import pytest
import transformers
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict, read_write
from rich.console import Console

from conftest import FAST, ROOT, SMALL_TASK, compose_train
from gpo import report
from gpo.infra import console
from gpo.infra.config import job_number
from gpo.infra.summary import RunSummary
from gpo.run import run_job, train
from gpo.training.names import folder_beta
from wandb_records import find_runs, read_run

# ------------------------------------------------------------------ beta: one meaning everywhere


def test_the_folder_name_says_the_beta_used_and_the_one_requested():
    dpo = OmegaConf.create({"_target_": "gpo.losses.Logistic"})
    ipo = OmegaConf.create({"_target_": "gpo.losses.Squared"})
    assert folder_beta(0.1, "none", dpo) == "beta0.1"
    assert folder_beta(0.1, "taylor", dpo) == "beta0.2-requested0.1"  # f''(0)/|f'(0)| = 1/2: DPO gets 2 beta
    assert folder_beta(0.1, "taylor", ipo) == "beta0.1"  # the squared loss is the yardstick: unchanged
    assert folder_beta(0.1, "link", dpo) == "requested0.1-link"  # the data decide: the run names it
    assert folder_beta("abc", "taylor", dpo) == "betaabc"  # bad input named as given; the run reports it
    assert folder_beta(0.1, "taylor", OmegaConf.create({"_target_": "gpo.losses.Hinge"})) == "beta0.1"  # f''(0)=0
    cfg = compose_train(["beta_scale=taylor", "loss=savage"])
    assert OmegaConf.select(cfg, "beta") == 0.1  # the composed config keeps the beta given


def test_hydra_names_the_run_and_the_sweep_jobs_by_the_beta_used():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["beta_scale=taylor", "loss=dpo"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    assert cfg.hydra.run.dir.endswith("_dpo-beta0.2-requested0.1")
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.job.num = 7
    assert cfg.hydra.sweep.subdir == "007_dpo-beta0.2-requested0.1"
    assert [job_number(n) for n in (0, 9, 10, 999, 1000)] == ["000", "009", "010", "999", "1000"]
    assert sorted(job_number(n) for n in range(12)) == [job_number(n) for n in range(12)]  # ls order = job order


def test_summary_wandb_config_and_wandb_summary_agree_on_beta(tmp_path):
    cfg = compose_train(["beta_scale=taylor", *FAST, *SMALL_TASK, "callbacks.sample_evaluation.num_prompts=4"],
                        output_dir=tmp_path)
    summary = train(cfg)
    assert (summary.beta, summary.beta_requested, summary.beta_scale) == (0.2, 0.1, "taylor")
    run = read_run(find_runs(str(tmp_path / "wandb"))[0])
    assert (run["config"]["beta"], run["config"]["beta_requested"], run["config"]["beta_scale"]) == (0.2, 0.1, "taylor")
    assert "beta_effective" not in run["config"]
    assert {k: run["summary"][k] for k in ("loss", "beta", "beta_requested", "beta_scale")} == {
        "loss": "dpo", "beta": 0.2, "beta_requested": 0.1, "beta_scale": "taylor"}
    assert run["name"] == "dpo-beta0.2-requested0.1"


def test_a_failed_run_records_the_beta_it_would_have_used(tmp_path):
    cfg = compose_train(["beta_scale=taylor", "data=jsonl", f"data.source.train_files={tmp_path / 'none.jsonl'}"],
                        output_dir=tmp_path)
    with pytest.raises(SystemExit, match="data file not found"):
        run_job(cfg)
    record = json.loads((tmp_path / "summary.json").read_text())
    assert (record["status"], record["beta"], record["beta_requested"], record["beta_scale"]) == (
        "failed", 0.2, 0.1, "taylor")


def test_the_report_shows_the_beta_used_and_the_one_requested(tmp_path):
    for i, (loss, used) in enumerate([("dpo", 0.2), ("ipo", 0.1)]):
        RunSummary(loss, used, 0, beta_requested=0.1, beta_scale="taylor",
                   metrics={"val/rewards/accuracies": 0.6 + i / 10}).write(tmp_path / str(i))
    result = report.write_report(tmp_path, plots=False)
    assert "| β | β requested |" in result.markdown
    assert "| dpo | 0.2 | 0.1 | 1 |" in result.markdown and "| ipo | 0.1 | 0.1 | 1 |" in result.markdown
    table = result.table.set_index("loss")
    assert (table.loc["dpo", "beta"], table.loc["dpo", "beta_requested"]) == (0.2, 0.1)
    # Without beta_scale the column would only repeat β: it is left out.
    RunSummary("dpo", 0.1, 0, beta_requested=0.1, metrics={"val/rewards/accuracies": 0.6}).write(tmp_path / "u" / "0")
    assert "β requested" not in report.write_report(tmp_path / "u", plots=False).markdown


# ------------------------------------------------------------------ the console


@pytest.fixture
def root_console():
    """A console handler on the root logger, as Hydra's job logging installs, and the library loggers as they were."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
             for name in ("datasets", "huggingface_hub", "transformers")}
    with warnings.catch_warnings():
        yield stream
    root.removeHandler(handler)
    root.setLevel(level)
    for name, (handlers, propagate) in saved.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate


def test_hugging_face_warnings_print_once_and_reach_the_log_file(root_console, capsys):
    libraries = {"datasets": datasets.utils.logging.get_logger("datasets.x"),
                 "huggingface_hub": huggingface_hub.utils.logging.get_logger("huggingface_hub.x"),
                 "transformers": transformers.utils.logging.get_logger("transformers.x")}
    # As the libraries set themselves up on import: datasets and huggingface_hub print through a stderr handler
    # of their own AND propagate to the root's (twice); transformers through its own only (never in train.log).
    for name in ("datasets", "huggingface_hub"):
        logging.getLogger(name).addHandler(logging.StreamHandler())
        logging.getLogger(name).propagate = True
    transformers.logging.enable_default_handler()
    transformers.logging.disable_propagation()
    console.configure(verbose=True)
    for name, logger in libraries.items():
        logger.warning(f"warning from {name}")
    printed = root_console.getvalue() + capsys.readouterr().err
    for name in libraries:
        assert printed.count(f"warning from {name}") == 1, (name, printed)


def test_an_error_printed_by_the_entry_point_goes_to_the_log_file_only(root_console, tmp_path):
    file_handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(file_handler)
    try:
        console.configure()
        logging.getLogger("gpo.run").error("beta must be a positive number", extra=console.FILE_ONLY)
        logging.getLogger("gpo.run").info("an ordinary line")
    finally:
        logging.getLogger().removeHandler(file_handler)
        file_handler.close()
    assert "beta must be" not in root_console.getvalue() and "an ordinary line" in root_console.getvalue()
    assert "beta must be" in (tmp_path / "train.log").read_text()


def test_the_slurm_hint_only_where_it_is_actionable():
    hint = console.SRUN_HINT + ". HINT: If your intention is to run Lightning on SLURM, prepend srun"
    for processes, shown in ((1, False), (4, True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            console.configure(processes=processes)
            warnings.warn(hint, UserWarning, stacklevel=1)
        assert bool([w for w in caught if console.SRUN_HINT in str(w.message)]) == shown, processes


def test_progress_off_a_terminal_is_a_rate_line_with_the_time_left(caplog, monkeypatch):
    monkeypatch.setattr(console.rich, "get_console", lambda: Console(file=io.StringIO()))  # a log file, not a tty
    with (caplog.at_level(logging.INFO, logger="gpo.infra.console"),
          console.progress("SFT stage", 300, "steps", first_s=0, every_s=0) as advance):
        for _ in range(3):
            advance()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and lines[0].startswith("SFT stage: 1/300 steps in ") and " left" in lines[0]
    assert lines[-1].startswith("SFT stage: 3/300 steps")


def test_the_final_line_says_not_evaluated_never_nan():
    line = console.headline(RunSummary("simpo", 0.1, 0, beta_requested=0.1, metrics={"eval/kl": 0.5,
                                                                                   "eval/kl_stderr": 0.1}), "run")
    assert "nan" not in line.lower()
    assert "gold reward not evaluated" in line and "val metrics not evaluated" in line and "KL 0.5" in line
    full = RunSummary("dpo", 0.2, 0, beta_requested=0.1, wall_time_s=75, metrics={
        "eval/kl": 1.0, "eval/kl_stderr": 0.1, "eval/gold_reward": 5.0, "eval/gold_reward_reference": 4.0,
        "eval/win_rate": 0.7, "val/rewards/accuracies": 0.8, "val/loss": 0.5})
    line = console.headline(full, "outputs/runs/x")
    assert line.startswith("Done: dpo (beta 0.2, requested 0.1) trained in 1 min 15 s: ")
    assert "gold reward 5.000 vs reference 4.000 (went up), win rate 0.700" in line and "val accuracy 0.800" in line


def test_an_experiment_that_swaps_the_logger_and_the_bar_says_so_once(caplog):
    with caplog.at_level(logging.INFO, logger="gpo.infra.console"):
        console.announce_changes(compose_train(["experiment=overoptimisation"]))
        console.announce_changes(compose_train(["experiment=overoptimisation", "logger=csv",
                                                "~callbacks.progress_bar"]))
        console.announce_changes(compose_train([]))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["experiment=overoptimisation: logger=csv instead of wandb (logger=wandb to change it); "
                     "no live progress bar (its output is meant to be read as a log file)"]


def test_the_progress_bar_shows_no_logger_version():
    bar = console.StepProgressBar()

    class Trainer:
        loggers = []
        progress_bar_metrics = {"train/loss": 0.5}

    assert "v_num" not in bar.get_metrics(Trainer(), None)


@pytest.mark.slow
def test_a_cli_run_prints_each_line_once_and_ends_with_its_outcome(tmp_path, run_in_process):
    """The default run's console, shortened, on a machine with SLURM's srun on PATH (a fake one):
    no SLURM hint (one process), no W&B warning, no v_num, no line twice; a bad input: one line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT / "src")}
    env.pop("SLURM_NTASKS", None)
    with_bar = [arg for arg in FAST if arg != "~callbacks.progress_bar"]  # the project's bar, as a user sees it
    done = subprocess.run([sys.executable, "src/train.py", f"hydra.run.dir={tmp_path / 'run'}", *with_bar, *SMALL_TASK],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "srun" not in output and "anonymous" not in output and "v_num" not in output
    lines = [line.split("] - ", 1)[-1] for line in output.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), output
    assert lines[-1].startswith("Done: dpo (beta 0.1) trained in ")

    # A bad input fails before anything a fresh console would show: in this process (conftest.run_script).
    bad = run_in_process("src/train.py", f"hydra.run.dir={tmp_path / 'bad'}", "data=jsonl",
                         f"data.source.train_files={tmp_path / 'missing.jsonl'}")
    assert bad.returncode == 1
    assert (bad.stdout + bad.stderr).count("data file not found") == 1, bad.stdout + bad.stderr
    assert bad.stderr.strip() == f"error: {tmp_path / 'missing.jsonl'}: data file not found"
    assert "data file not found" in (tmp_path / "bad" / "train.log").read_text()
