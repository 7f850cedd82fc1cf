"""Nothing lost: a run killed (SIGKILL) or preempted (SIGUSR1/SIGTERM) midway
resumes from its checkpoint to the same final metrics as an uninterrupted run;
a sweep and an Optuna study run again into their directory continue; a
checkpoint write killed midway leaves the previous checkpoint."""

import io
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest
import pytorch_lightning as pl
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from lightning_fabric.plugins.io import TorchCheckpointIO, torch_io

from conftest import FAST, ROOT, SMALL_TASK, compose_train
from gpo.infra import interrupts
from gpo.infra.errors import InputError, RunError
from gpo.infra.summary import RunSummary
from gpo.run import run_job, train
from gpo.training import AtomicCheckpointIO, CheckpointOnSignal, Interrupted
from gpo.training.resume import earlier_segments
from wandb_records import find_runs


class PauseAt(pl.Callback):
    """Test instrumentation, added from the command line (+callbacks.pause=...):
    before training step `step` (of job `job_num` in a multirun), write
    `marker` and wait until `release` exists (or for ever: until killed)."""

    def __init__(self, step: int, marker: str, release: str | None = None, job_num: int | None = None,
                 timeout_s: float = 300):
        self.step, self.marker, self.release, self.job_num, self.timeout_s = step, marker, release, job_num, timeout_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.step or (self.job_num is not None and HydraConfig.get().job.num != self.job_num):
            return
        Path(self.marker).write_text(str(os.getpid()))
        deadline = time.monotonic() + self.timeout_s
        while not (self.release and os.path.exists(self.release)):
            if time.monotonic() > deadline:
                raise TimeoutError("PauseAt: never released nor killed")
            time.sleep(0.05)


class SignalAt(pl.Callback):
    """Sends `signum` to this very process before training step `step`."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


# 360 training pairs, 32 a batch: 12 steps an epoch, so 16 steps cross an epoch boundary and a
# kill at step 6 is mid-epoch. A checkpoint every 4 steps; the sample evaluation every 4 steps too.
RUN = [*FAST, *SMALL_TASK, "trainer.max_steps=16", "trainer.val_check_interval=4",
       "callbacks.sample_evaluation.every_n_steps=4", "num_threads=1", "~callbacks.throughput"]


def env(**extra):
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT / 'src'}", "WANDB_SILENT": "true",
            "OMP_NUM_THREADS": "1", **extra}


def start(*args, **extra_env):
    return subprocess.Popen([sys.executable, "src/train.py", *args], cwd=ROOT, env=env(**extra_env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def fake_scontrol(tmp_path) -> tuple[str, Path]:
    """A `scontrol` that records its arguments: (a PATH that finds it first, the file it writes)."""
    bin_dir, requeues = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {requeues}\n')
    (bin_dir / "scontrol").chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}", requeues


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"exited ({process.returncode}) before {path.name}:\n" + process.stderr.read()[-3000:])
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.1)


def wait_until_stopped(processes: list[psutil.Process], timeout: float):
    """Until each process has exited or is a zombie: a dead child of the paused
    run stays a zombie until the run reaps it (psutil.wait_procs would wait the
    whole timeout for it)."""
    def stopped(member: psutil.Process) -> bool:
        try:
            return member.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + timeout
    while not all(stopped(member) for member in processes):
        assert time.monotonic() < deadline, f"still running after SIGTERM and {timeout} s: {processes}"
        time.sleep(0.1)


def checkpoint_step(run_dir: Path) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]


def comparable(summary: RunSummary) -> dict:
    return {k: v for k, v in summary.metrics.items() if "device" not in k}  # throughput is timing


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """(One torch thread here and in the subprocesses, conftest: bitwise the same arithmetic.)"""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    summary = train(compose_train([*RUN, "logger=csv"], output_dir=run_dir))
    assert [point["step"] for point in summary.trajectory] == [0, 4, 8, 12, 16]
    return summary


def assert_same_run(resumed: RunSummary, reference: RunSummary):
    assert comparable(resumed) == pytest.approx(comparable(reference), rel=1e-6, abs=1e-7)
    assert [point["step"] for point in resumed.trajectory] == [point["step"] for point in reference.trajectory]
    for point, expected in zip(resumed.trajectory, reference.trajectory):  # approx compares flat containers only
        assert point == pytest.approx(expected, rel=1e-6, abs=1e-7)


@pytest.mark.slow
def test_a_run_killed_midway_resumes_to_the_same_final_metrics(tmp_path, uninterrupted):
    """SIGKILL after the step-4 checkpoint, mid-epoch; the same command resumes
    (optimizer, scheduler, step, data order, RNG, evaluation trajectory) and
    ends where the uninterrupted run ended. W&B continues the same run id."""
    run_dir, marker, release = tmp_path / "run", tmp_path / "paused", tmp_path / "release"
    pause = ["+callbacks.pause._target_=test_resume.PauseAt", "+callbacks.pause.step=6",
             f"+callbacks.pause.marker={marker}", f"+callbacks.pause.release={release}"]
    process = start(*RUN, f"hydra.run.dir={run_dir}", *pause)
    wait_for(marker, process)
    process.kill()  # SIGKILL: no handler runs
    process.wait(timeout=60)
    assert checkpoint_step(run_dir) == 4 and not (run_dir / "summary.json").exists()
    first_id = (run_dir / "wandb_id").read_text()

    release.touch()  # the same command (the same experiment), no longer pausing
    resumed = train(compose_train([*RUN, *pause], output_dir=run_dir))  # resume=auto: the directory's last.ckpt
    assert resumed.status == "finished" and resumed.resumed_from_step == 4
    assert_same_run(resumed, uninterrupted)
    assert (run_dir / "wandb_id").read_text() == first_id
    assert {Path(run).name.rsplit("-", 1)[1] for run in find_runs(str(run_dir))} == {first_id}  # one W&B run id


@pytest.mark.slow
def test_preemption_signal_checkpoints_the_current_step_requeues_and_resumes(tmp_path, uninterrupted):
    """SIGUSR1 (SLURM's requeue signal) to a real run: the step in progress
    ends, last.ckpt is written at that step (7, not the periodic 4), the run
    stops with a record and requeues itself (scontrol, faked here); the
    requeued job resumes from step 7 to the uninterrupted run's metrics."""
    run_dir, marker, release = tmp_path / "run", tmp_path / "paused", tmp_path / "release"
    path, requeues = fake_scontrol(tmp_path)
    pause = ["+callbacks.pause._target_=test_resume.PauseAt", "+callbacks.pause.step=6",
             f"+callbacks.pause.marker={marker}", f"+callbacks.pause.release={release}"]
    process = start(*RUN, "logger=csv", f"hydra.run.dir={run_dir}", *pause,
                    SLURM_JOB_ID="4242", PATH=path)
    wait_for(marker, process)
    process.send_signal(signal.SIGUSR1)
    release.touch()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0 and "interrupted: SIGUSR1 in training step 7" in stderr, stderr[-3000:]
    assert checkpoint_step(run_dir) == 7
    record = RunSummary.read(run_dir)
    assert record.status == "failed" and record.error.startswith("Interrupted: SIGUSR1 in training step 7")
    assert requeues.read_text().split() == ["requeue", "4242"]

    resumed = train(compose_train([*RUN, "logger=csv", *pause], output_dir=run_dir))  # what the requeued job runs
    assert resumed.status == "finished" and resumed.resumed_from_step == 7
    assert_same_run(resumed, uninterrupted)


@pytest.mark.slow
def test_sigterm_to_every_process_of_the_job_kills_wandb_yet_the_run_hands_over_and_exits(tmp_path, uninterrupted):
    """What `scontrol requeue` does to a job: SIGTERM to every process, W&B's
    service too (the run logs to W&B offline, the default). The run still
    checkpoints at the step in progress, records it, requeues (scontrol,
    faked here) and exits at once by itself, in one line; the requeued job
    resumes from that step to the uninterrupted run's metrics."""
    run_dir, marker, release = tmp_path / "run", tmp_path / "paused", tmp_path / "release"
    bin_dir, requeues = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {requeues}\n')
    (bin_dir / "scontrol").chmod(0o755)
    pause = ["+callbacks.pause._target_=test_resume.PauseAt", "+callbacks.pause.step=6",
             f"+callbacks.pause.marker={marker}", f"+callbacks.pause.release={release}"]
    process = start(*RUN, f"hydra.run.dir={run_dir}", *pause, SLURM_JOB_ID="4243",
                    PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    wait_for(marker, process)
    job = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    assert any("wandb" in p.name() for p in job)  # W&B's service (in a session of its own), which SLURM finds too
    for member in job:
        member.send_signal(signal.SIGTERM)
    wait_until_stopped([p for p in job if p.pid != process.pid], timeout=60)  # the service has stopped
    release.touch()
    released = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    seconds = time.monotonic() - released
    last_line = stderr.strip().splitlines()[-1]
    assert process.returncode == 1 and last_line.startswith("interrupted: SIGTERM in training step 7")
    assert "Traceback" not in stderr, stderr[-3000:]
    assert seconds < 30, f"{seconds:.0f} s from the end of the step to the exit: SLURM's KillWait would SIGKILL it"
    assert requeues.read_text().split() == ["requeue", "4243"] and checkpoint_step(run_dir) == 7
    assert RunSummary.read(run_dir).error.startswith("Interrupted: SIGTERM in training step 7")

    resumed = train(compose_train([*RUN, *pause], output_dir=run_dir))  # the requeued job: the same command
    assert resumed.finished and resumed.resumed_from_step == 7
    assert_same_run(resumed, uninterrupted)


def test_sigterm_in_process_checkpoints_stops_and_restores_the_handlers(tmp_path, uninterrupted):
    """SIGTERM (SLURM preemption; Lightning handles it too): same path, and the
    process's own SIGTERM handling is back once the run has stopped."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    command = [*RUN, "logger=csv", "+callbacks.signal._target_=test_resume.SignalAt", "+callbacks.signal.step=9",
               f"+callbacks.signal.signum={int(signal.SIGTERM)}"]
    with pytest.raises(SystemExit, match="interrupted: SIGTERM in training step 10"):
        run_job(compose_train(command, output_dir=tmp_path))  # run_job records the stop (train raises Interrupted)
    assert {signum: signal.getsignal(signum) for signum in before} == before
    assert checkpoint_step(tmp_path) == 10
    stopped = RunSummary.read(tmp_path)
    assert stopped.status == "failed" and stopped.error.startswith("Interrupted: SIGTERM in training step 10")
    resumed = train(compose_train(command, output_dir=tmp_path))  # the same command: SignalAt's step is behind it
    assert resumed.resumed_from_step == 10
    assert_same_run(resumed, uninterrupted)
    # The run's wall time is both parts', each as its process recorded it (a requeued run's is not its last part's).
    assert resumed.segments[0] == stopped.segments[0] and stopped.segments[0]["ended_by"] == "SIGTERM"
    assert [part["ended_by"] for part in resumed.segments] == ["SIGTERM", "finished"]
    assert resumed.wall_time_s == pytest.approx(sum(part["seconds"] for part in resumed.segments))
    assert resumed.wall_time_s > resumed.segments[1]["seconds"] > 0
    # So is its time split: the stopped part's fit unsplit (no callback reported), the finishing part's split.
    first, last = (part["time_split"] for part in resumed.segments)
    assert first["fit"] > 0 and "training_steps" not in first and last["training_steps"] > 0
    assert resumed.time_split["total"] == pytest.approx(first["total"] + last["total"])
    # Starting over is a new run: no earlier parts.
    assert earlier_segments(compose_train([*RUN, "resume=false"]), tmp_path) == []
    assert len(earlier_segments(compose_train(RUN), tmp_path)) == 2


def test_ctrl_c_checkpoints_the_current_step_records_it_exits_non_zero_and_resumes(tmp_path, uninterrupted,
                                                                                     monkeypatch):
    """SIGINT as SIGTERM: the step in progress ends, last.ckpt at that step, a record and a line saying where,
    exit status 1 (a message to sys.exit), no requeue (a person's signal, even under SLURM); the same command
    resumes to the uninterrupted run's metrics. (What the CLI prints is this line: run_job is its job.)"""
    path, requeues = fake_scontrol(tmp_path)
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    before = signal.getsignal(signal.SIGINT)
    command = [*RUN, "logger=csv", "+callbacks.signal._target_=test_resume.SignalAt", "+callbacks.signal.step=5",
               f"+callbacks.signal.signum={int(signal.SIGINT)}"]
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        run_job(compose_train(command, output_dir=run_dir))
    assert str(exit_.value.code) == (f"interrupted: SIGINT in training step 6; checkpoint saved "
                                     f"({run_dir / 'checkpoints' / 'last.ckpt'}): the same command resumes from it")
    assert checkpoint_step(run_dir) == 6 and signal.getsignal(signal.SIGINT) == before
    assert RunSummary.read(run_dir).error == f"Interrupted: {str(exit_.value.code).split(': ', 1)[1]}"
    assert not requeues.exists()
    resumed = train(compose_train(command, output_dir=run_dir))
    assert resumed.resumed_from_step == 6
    assert_same_run(resumed, uninterrupted)


def test_resume_false_starts_over_and_a_named_run_without_checkpoint_is_an_error(tmp_path):
    cfg = compose_train([*FAST, *SMALL_TASK, "logger=csv", "~callbacks.sample_evaluation"], output_dir=tmp_path)
    first = train(cfg)
    again = train(compose_train([*FAST, *SMALL_TASK, "logger=csv", "~callbacks.sample_evaluation", "resume=false"],
                                output_dir=tmp_path))
    assert first.resumed_from_step is None and again.resumed_from_step is None
    assert again.metrics["train/loss"] == pytest.approx(first.metrics["train/loss"], rel=1e-6)
    with pytest.raises(InputError, match=r"resume=.*nowhere: no checkpoint to resume from"):
        train(compose_train([*FAST, f"resume={tmp_path / 'nowhere'}"], output_dir=tmp_path / "other"))
    # The run continues there.
    assert compose_train([f"resume={tmp_path}"]) and HydraConfig.get().run.dir == str(tmp_path)


def write_half(checkpoint, path):
    """Lightning's checkpoint writer, stopped after half the bytes."""
    data = io.BytesIO()
    torch.save(checkpoint, data)
    with open(path, "wb") as f:
        f.write(data.getvalue()[: len(data.getvalue()) // 2])
        f.flush()


def half_written(checkpoint, path):
    """Lightning's checkpoint writer, failing after half the bytes (as a full disk would)."""
    write_half(checkpoint, path)
    raise OSError("No space left on device")


def killed_in_a_checkpoint_write(path):
    """In a forked child: the step-2 checkpoint written over the step-1 one, the process SIGKILLed halfway
    through the bytes. A fork, not `python -c`: the same death without an interpreter importing torch (4 s)."""
    def killed_midway(checkpoint, path):
        write_half(checkpoint, path)
        os.kill(os.getpid(), signal.SIGKILL)

    torch_io._atomic_save = killed_midway
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(2), "weights": torch.ones(1000)}, path)


def test_a_checkpoint_write_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1), "weights": torch.zeros(1000)}, path)
    child = multiprocessing.get_context("fork").Process(target=killed_in_a_checkpoint_write, args=(path,))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL  # really killed inside the write
    assert int(AtomicCheckpointIO().load_checkpoint(path)["step"]) == 1  # the previous checkpoint, whole

    # The same failure under Lightning's own writer, which truncates the previous checkpoint first: none left.
    monkeypatch.setattr(torch_io, "_atomic_save", half_written)
    for writer, name, error in [(AtomicCheckpointIO(), "atomic.ckpt", RunError),
                                (TorchCheckpointIO(), "lightning.ckpt", OSError)]:
        monkeypatch.undo()
        writer.save_checkpoint({"step": torch.tensor(1)}, tmp_path / name)
        monkeypatch.setattr(torch_io, "_atomic_save", half_written)
        with pytest.raises(error, match="No space"):
            writer.save_checkpoint({"step": torch.tensor(2)}, tmp_path / name)
    monkeypatch.undo()
    assert int(torch.load(tmp_path / "atomic.ckpt", weights_only=True)["step"]) == 1
    with pytest.raises(RuntimeError, match="corrupted"):
        torch.load(tmp_path / "lightning.ckpt", weights_only=True)
    # The killed write's partial file is hidden, overwritten next time.
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "atomic.ckpt", "last.ckpt", "lightning.ckpt"]


def sweep_args(sweep_dir, *overrides):
    return ["-m", "logger=csv", "num_threads=1", *FAST, *SMALL_TASK, *overrides, f"hydra.sweep.dir={sweep_dir}"]


def sweep_again(run_in_process, sweep_dir, *overrides) -> str:
    """The same sweep command, run again in this process (the first one, killed, had its own); its output."""
    done = run_in_process("src/train.py", *sweep_args(sweep_dir, *overrides))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_a_sweep_run_again_skips_finished_jobs_resumes_interrupted_ones_and_runs_the_rest(tmp_path, run_in_process):
    sweep, marker, release = tmp_path / "sweep", tmp_path / "paused", tmp_path / "release"
    grid = ["loss=dpo,ipo,slic", "~callbacks.sample_evaluation", "+callbacks.pause._target_=test_resume.PauseAt",
            "+callbacks.pause.step=3", "+callbacks.pause.job_num=1", f"+callbacks.pause.marker={marker}",
            f"+callbacks.pause.release={release}"]
    process = start(*sweep_args(sweep, *grid))
    wait_for(marker, process)
    process.kill()  # the whole sweep dies in job 1, after its step-2 checkpoint
    process.wait(timeout=60)
    first = RunSummary.read(sweep / "000_dpo-beta0.1")
    assert checkpoint_step(sweep / "001_ipo-beta0.1") == 2 and not (sweep / "002_slic-beta0.1").exists()

    release.touch()
    output = sweep_again(run_in_process, sweep, *grid)  # the same sweep, into the same directory
    assert "finished already (summary.json); skipped" in output
    assert RunSummary.read(sweep / "000_dpo-beta0.1") == first  # not run again
    resumed, fresh = RunSummary.read(sweep / "001_ipo-beta0.1"), RunSummary.read(sweep / "002_slic-beta0.1")
    assert resumed.finished and resumed.resumed_from_step == 2
    assert fresh.finished and fresh.resumed_from_step is None
    report = pd.read_csv(sweep / "report.csv")  # the end-of-sweep report covers all three
    assert sorted(report["loss"]) == ["dpo", "ipo", "slic"] and (report["n_finished"] == 1).all()


@pytest.mark.slow
def test_the_optuna_preset_stopped_after_two_trials_resumes_to_the_full_count(tmp_path, run_in_process):
    """hparams_search=optuna: trials sample the preset's space, the study lives in
    <sweep dir>/optuna.db; killed in its third trial, the same command fails that
    trial and runs it again (job numbers go on), up to n_trials; the best value is
    the best trial's objective (the gold win rate), as train.py returned it."""
    sweep, marker = tmp_path / "sweep", tmp_path / "paused"
    study = ["hparams_search=optuna", "hydra.sweeper.n_trials=3", "~hydra.callbacks.sweep_report",
             # The same command both times (a resumed study checks it): only job 2 of the first run pauses.
             "+callbacks.pause._target_=test_resume.PauseAt", "+callbacks.pause.step=1",
             "+callbacks.pause.job_num=2", f"+callbacks.pause.marker={marker}"]
    process = start(*sweep_args(sweep, *study))
    wait_for(marker, process)
    process.kill()  # two trials done, the third running
    process.wait(timeout=60)
    storage = f"sqlite:///{sweep}/optuna.db"
    states = [t.state.name for t in optuna.load_study(study_name="gpo", storage=storage).trials]
    assert states == ["COMPLETE", "COMPLETE", "RUNNING"]

    sweep_again(run_in_process, sweep, *study)  # the same command: only the missing trial runs
    trials = optuna.load_study(study_name="gpo", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert trials[3].params == trials[2].params and trials[3].user_attrs["retry_of"] == 2  # run again
    summaries = {p.parent.name: RunSummary.read(p) for p in sweep.glob("*/summary.json")}
    assert sorted(name.split("_")[0] for name in summaries) == ["000", "001", "003"]  # job number = trial number
    assert all(s.finished for s in summaries.values())
    lrs = [float(next(o for o in s.overrides if o.startswith("optimizer.lr=")).split("=")[1])
           for s in summaries.values()]
    assert all(0.01 <= s.beta <= 2.0 for s in summaries.values()) and all(1e-5 <= lr <= 1e-3 for lr in lrs)
    preset_losses = {"dpo", "ipo", "slic", "exponential", "truncated_quadratic", "savage"}
    assert {s.loss for s in summaries.values()} <= preset_losses
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"beta", "optimizer.lr", "loss"}
    assert results["trials"] == {"complete": 3, "pruned": 0, "fail": 0, "interrupted": 1}
    win_rates = [s.metrics["eval/win_rate"] for s in summaries.values()]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert results["best_value"] == pytest.approx(max(win_rates)) == pytest.approx(max(t.value for t in complete))


def test_a_signal_in_training_is_only_recorded_until_a_safe_point():
    """Inside trainer.fit (deferred) the handler records; outside, it stops the stage where it is."""
    with interrupts.handling() as signals:
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.01)  # Python runs the handler between bytecodes
        assert signals.received == signal.SIGUSR2 and signals.pending
        with pytest.raises(Interrupted, match="SIGUSR2 during the export; the same command resumes"):
            signals.enter("during the export")
    callback = CheckpointOnSignal(signals=["SIGUSR2"], requeue=False)
    with interrupts.handling() as signals:
        callback.setup(None, None, "fit")
        assert signals.requeue_on == set()
