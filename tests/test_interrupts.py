"""A signal in any stage stops the run with a record saying where, a
checkpoint where training had started, a non-zero exit, and for a
scheduler's signal the requeue; a second Ctrl-C aborts at once; a dead W&B
service changes none of that."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import wandb
from test_resume import env, fake_scontrol, start, wait_for

from catalogue import in_readme
from conftest import FAST, SMALL_TASK, compose_train
from gpo import run as run_module
from gpo.data import PreferenceDataModule
from gpo.evaluation import callbacks as evaluation_callbacks
from gpo.infra.summary import RunSummary
from gpo.reference import InitialPolicy
from gpo.reference.references import CachedReference
from gpo.run import run_job

RUN = ["logger=csv", *FAST, *SMALL_TASK, "trainer.max_steps=6", "callbacks.sample_evaluation.num_prompts=4"]


def signalling(function, signum=signal.SIGTERM):
    """`function`, sending `signum` to this process as it starts (once)."""
    sent = []

    def wrapper(*args, **kwargs):
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signum)
        return function(*args, **kwargs)

    return wrapper


class SignalInValidation(pl.Callback):
    def __init__(self, step: int, signum: int = signal.SIGTERM):
        self.step, self.signum = step, signum

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.global_step == self.step and batch_idx == 0 and not trainer.sanity_checking:
            os.kill(os.getpid(), self.signum)


def checkpoint_step(run_dir: Path) -> int | None:
    path = run_dir / "checkpoints" / "last.ckpt"
    return torch.load(path, weights_only=True)["global_step"] if path.exists() else None


# (stage, what sends the signal, where the record says the run stopped, the checkpoint's step: None = none)
STAGES = {
    "data": ("during data preparation", None),
    "sft": ("during the SFT stage", None),
    "reference": ("during the reference log-probs", None),
    "training step": ("in training step 3", 3),
    "validation": ("during the validation at step 2", 2),
    "sample evaluation": ("after training", 6),  # the final one: finished first, then the run stops, checkpointed
    "export": ("during the export", 6),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_signal_in_any_stage_stops_with_a_record_where_and_a_checkpoint_once_training_started(
        tmp_path, monkeypatch, stage):
    overrides = list(RUN)
    if stage == "data":
        monkeypatch.setattr(PreferenceDataModule, "setup", signalling(PreferenceDataModule.setup))
    elif stage == "sft":
        monkeypatch.setattr(InitialPolicy, "prepare", signalling(InitialPolicy.prepare))
    elif stage == "reference":
        monkeypatch.setattr(CachedReference, "setup", signalling(CachedReference.setup))
    elif stage == "training step":
        overrides += ["+callbacks.signal._target_=test_resume.SignalAt", "+callbacks.signal.step=2",
                      f"+callbacks.signal.signum={int(signal.SIGTERM)}"]
    elif stage == "validation":
        overrides += ["+callbacks.signal._target_=test_interrupts.SignalInValidation", "+callbacks.signal.step=2"]
    elif stage == "sample evaluation":
        monkeypatch.setattr(evaluation_callbacks, "evaluate_samples", signalling(evaluation_callbacks.evaluate_samples))
    elif stage == "export":
        monkeypatch.setattr(run_module, "export_policy", signalling(run_module.export_policy))
    where, step = STAGES[stage]
    with pytest.raises(SystemExit) as exit_:
        run_job(compose_train(overrides, output_dir=tmp_path))
    assert str(exit_.value.code).startswith(f"interrupted: SIGTERM {where}; ")  # non-zero: a message is exit status 1
    record = RunSummary.read(tmp_path)
    assert record.status == "failed" and record.error == f"Interrupted: {str(exit_.value.code).split(': ', 1)[1]}"
    assert checkpoint_step(tmp_path) == step
    if stage == "training step":
        in_readme(str(exit_.value.code), file=tmp_path / "checkpoints" / "last.ckpt")


def test_a_dead_wandb_service_does_not_stop_the_requeue(tmp_path, monkeypatch):
    """SLURM's requeue signals every process of the job, W&B's service too: marking the run preempted then
    raises BrokenPipeError. The record, the requeue and the exit happen all the same."""
    path, requeues = fake_scontrol(tmp_path)
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")

    def broken_pipe(self):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(wandb.Run, "mark_preempting", broken_pipe)
    cfg = compose_train([*RUN[1:], "+callbacks.signal._target_=test_resume.SignalAt", "+callbacks.signal.step=2",
                         f"+callbacks.signal.signum={int(signal.SIGTERM)}"], output_dir=tmp_path / "run")
    with pytest.raises(SystemExit, match="interrupted: SIGTERM in training step 3"):
        run_job(cfg)
    assert requeues.read_text().split() == ["requeue", "4242"]
    assert RunSummary.read(tmp_path / "run").error.startswith("Interrupted: SIGTERM in training step 3")
    assert wandb.run is None  # closed all the same


SECOND_CTRL_C = """
import time
from gpo.infra import interrupts
with interrupts.handling() as signals, signals.deferred():
    print("ready", flush=True)
    time.sleep(60)
"""


def test_a_second_ctrl_c_aborts_at_once():
    process = subprocess.Popen([sys.executable, "-c", SECOND_CTRL_C], env=env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGINT)  # the first: recorded, the run would stop at the end of the step
    time.sleep(0.5)
    assert process.poll() is None
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGINT and time.monotonic() - started < 5
    assert "Second SIGINT: aborting now, without a checkpoint or a record" in process.stderr.read()


class PauseInValidation(pl.Callback):
    """Test instrumentation (+callbacks.pause=...): in the validation at `step`, write `marker`, wait for `release`."""

    def __init__(self, step: int, marker: str, release: str):
        self.step, self.marker, self.release = step, marker, release

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.global_step == self.step and batch_idx == 0 and not trainer.sanity_checking:
            Path(self.marker).write_text(str(os.getpid()))
            while not os.path.exists(self.release):
                time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_in_validation_with_a_dead_wandb_service_exits_non_zero_checkpointed_and_requeued(tmp_path):
    """`scontrol requeue` as SLURM does it, on a real process: SIGTERM to the run (during a validation: Lightning's
    own SIGTERM handling used to exit 0 from there) and to W&B's service process (killed). The run stops
    promptly, non-zero, with its record and a checkpoint at that step, and the requeue runs."""
    run_dir, marker, release = tmp_path / "run", tmp_path / "paused", tmp_path / "release"
    path, requeues = fake_scontrol(tmp_path)
    process = start(*RUN[1:], "num_threads=1", f"hydra.run.dir={run_dir}",
                    "+callbacks.pause._target_=test_interrupts.PauseInValidation", "+callbacks.pause.step=4",
                    f"+callbacks.pause.marker={marker}", f"+callbacks.pause.release={release}",
                    SLURM_JOB_ID="4242", PATH=path)
    wait_for(marker, process)
    services = subprocess.run(["pgrep", "-P", str(process.pid), "-f", "wandb-core"], capture_output=True,
                              text=True).stdout.split()
    assert services, "no W&B service process to kill"
    for pid in services:
        os.kill(int(pid), signal.SIGKILL)
    process.send_signal(signal.SIGTERM)
    release.touch()
    started = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert time.monotonic() - started < 30, "it hung"
    assert process.returncode == 1, stderr[-3000:]
    assert "interrupted: SIGTERM during the validation at step 4; checkpoint saved" in stderr
    assert checkpoint_step(run_dir) == 4
    assert requeues.read_text().split() == ["requeue", "4242"]
    assert RunSummary.read(run_dir).error.startswith("Interrupted: SIGTERM during the validation at step 4")
