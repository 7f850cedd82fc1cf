"""A run directory holds one experiment: a command run again into it resumes
(or skips) that experiment, and refuses another in one line naming the keys
that differ; `resume=false` starts over and keeps the old run's files aside;
more steps extend a finished run."""

import json
import os
import signal

import pytest
import torch

from catalogue import in_readme
from conftest import FAST, SMALL_TASK, compose_train
from gpo.infra.errors import RunRefused
from gpo.infra.summary import RunSummary
from gpo.run import run_job, train
from gpo.training import Interrupted
from gpo.training.identity import NOT_THE_EXPERIMENT, run_identity

RUN = ["logger=csv", *FAST, *SMALL_TASK, "~callbacks.sample_evaluation", "trainer.max_steps=6"]


STOP_AT_3 = [*RUN, "+callbacks.signal._target_=test_resume.SignalAt", "+callbacks.signal.step=2",
             f"+callbacks.signal.signum={int(signal.SIGTERM)}"]  # the same command resumes: its signal is behind it


def stopped_at_step_3(run_dir):
    """A run stopped by SIGTERM in its third step: last.ckpt at step 3, no finished summary."""
    with pytest.raises(Interrupted, match="SIGTERM in training step 3"):
        train(compose_train(STOP_AT_3, output_dir=run_dir))


def snapshot(run_dir):
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def test_a_run_resumed_as_another_experiment_is_refused_naming_the_keys(tmp_path):
    stopped_at_step_3(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(RunRefused) as error:
        train(compose_train([*STOP_AT_3, "loss=ipo", "beta=0.5"], output_dir=tmp_path))
    assert str(error.value) == (
        f"{tmp_path} holds another experiment (its checkpoint: beta: 0.1 -> 0.5, loss._target_: gpo.losses.Logistic "
        "-> gpo.losses.Squared); resume=false starts this one there (the old run's files are moved to previous/ "
        "inside it), or give it another directory")
    in_readme(str(error.value), dir=tmp_path)
    assert snapshot(tmp_path) == before  # nothing written, nothing moved

    # Keys that only say where or how fast are not the experiment: it resumes.
    resumed = train(compose_train([*STOP_AT_3, "num_threads=2", "verbose=true",
                                   f"cache_dir={os.environ['GPO_CACHE_DIR']}", "logprobs.chunk_mb=64",
                                   "export.policy=false"], output_dir=tmp_path))
    assert resumed.finished and resumed.resumed_from_step == 3


def test_a_finished_run_rerun_as_another_experiment_is_refused_and_its_record_kept(tmp_path):
    """What run_job (the CLI) does: no 'finished already; skipped', no failure record over the finished one."""
    cfg = compose_train(RUN, output_dir=tmp_path)
    assert run_job(cfg) is not None  # val/loss
    record = (tmp_path / "summary.json").read_text()
    with pytest.raises(SystemExit) as exit_:
        run_job(compose_train([*RUN, "seed=1"], output_dir=tmp_path))
    assert str(exit_.value.code) == (f"error: {tmp_path} holds another experiment (its summary.json: seed: 0 -> 1); "
                                     "resume=false starts this one there (the old run's files are moved to previous/ "
                                     "inside it), or give it another directory")
    assert (tmp_path / "summary.json").read_text() == record
    assert run_job(compose_train(RUN, output_dir=tmp_path)) == json.loads(record)["metrics"]["val/loss"]  # skipped


def test_resume_false_starts_over_and_keeps_the_old_runs_files_aside(tmp_path):
    first = train(compose_train(RUN, output_dir=tmp_path))
    old = {p.name for p in tmp_path.iterdir()}
    again = train(compose_train([*RUN, "beta=0.5", "resume=false"], output_dir=tmp_path))
    assert again.finished and again.beta == 0.5 and again.resumed_from_step is None
    kept = tmp_path / "previous" / "1"
    assert {p.name for p in kept.iterdir()} == old - {".hydra", "previous", ".lock"}
    assert RunSummary.read(kept) == first and RunSummary.read(tmp_path).beta == 0.5
    train(compose_train([*RUN, "resume=false"], output_dir=tmp_path))
    assert RunSummary.read(tmp_path / "previous" / "2").beta == 0.5  # each start-over: a new one, none overwritten


def test_more_steps_extend_a_finished_run_and_fewer_are_refused(tmp_path):
    train(compose_train(RUN, output_dir=tmp_path))  # 6 steps
    extended = train(compose_train([*RUN, "trainer.max_steps=9"], output_dir=tmp_path))
    assert extended.finished and extended.resumed_from_step == 6
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 9
    with pytest.raises(SystemExit, match=r"trainer.max_steps: 9 -> 5 \(fewer steps\)"):
        run_job(compose_train([*RUN, "trainer.max_steps=5"], output_dir=tmp_path))


def test_the_identity_leaves_out_only_the_listed_keys_and_masks_secrets():
    cfg = compose_train([*RUN, "+db.password=hunter2"])
    identity = run_identity(cfg)
    assert identity["config"]["db.password"] == "***" and "hunter2" not in json.dumps(identity)
    assert not [key for key in identity["config"] for name in NOT_THE_EXPERIMENT
                if key == name or key.startswith(f"{name}.")]
    for key in ("beta", "seed", "loss._target_", "optimizer.lr", "data.source.num_pairs", "model.sft.steps",
                "trainer.val_check_interval", "reference._target_"):
        assert key in identity["config"], key
    assert all(reason for reason in NOT_THE_EXPERIMENT.values())  # each says why
    base = run_identity(compose_train(RUN))["fingerprint"]
    assert run_identity(compose_train([*RUN, "cache_dir=/elsewhere", "num_threads=3"]))["fingerprint"] == base
    assert run_identity(compose_train([*RUN, "data.batch_size=16"]))["fingerprint"] != base


@pytest.mark.slow
def test_a_sweep_rerun_with_another_key_refuses_each_job_and_lists_them(tmp_path, run_in_process):
    """Job directories are named by loss and beta: a sweep re-run whose other keys changed lands in the same ones."""
    def sweep(*overrides) -> tuple[int, str]:  # the sweep command, in this process: exit status, console output
        done = run_in_process("src/train.py", "-m", "loss=dpo,ipo", "num_threads=1", *RUN, *overrides,
                              f"hydra.sweep.dir={tmp_path}", "~hydra.callbacks.sweep_report")
        return done.returncode, done.stdout + done.stderr

    status, output = sweep()
    assert status == 0, output[-3000:]
    records = {p.parent.name: p.read_text() for p in tmp_path.glob("*/summary.json")}
    status, output = sweep("optimizer.lr=3e-4")
    assert status == 0, output[-3000:]
    for job in ("000_dpo-beta0.1", "001_ipo-beta0.1"):
        assert (f"Job refused: {tmp_path / job} holds another experiment (its summary.json: optimizer.lr: 0.0001 -> "
                "0.0003)") in output
    assert "2 of 2 jobs did not finish" in output
    assert {p.parent.name: p.read_text() for p in tmp_path.glob("*/summary.json")} == records  # untouched

    status, output = sweep("optimizer.lr=3e-4", "resume=false")
    assert status == 0, output[-3000:]
    assert "All 2 jobs" in output
    for job in ("000_dpo-beta0.1", "001_ipo-beta0.1"):
        assert (tmp_path / job / "previous" / "1" / "summary.json").read_text() == records[job]
        assert RunSummary.read(tmp_path / job).identity["config"]["optimizer.lr"] == 3e-4
