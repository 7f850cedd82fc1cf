"""Faults a run meets on its way: a damaged, truncated or untrusted
checkpoint, a full disk, two processes on one run directory, a resume that
must keep the earlier logs. Each is one line naming the problem, where, and
what to do; nothing already written is lost."""

import csv
import errno
import os
import pickle
import signal
import socket
import subprocess
import sys

import pytest
import torch
from lightning_fabric.plugins.io import torch_io

from catalogue import in_readme
from conftest import FAST, ROOT, SMALL_TASK, compose_train
from gpo.infra.errors import InputError, RunError, RunRefused
from gpo.infra.run_lock import run_directory_lock
from gpo.run import run_job, train
from gpo.training import Interrupted, NonFiniteLossError

RUN = ["logger=csv", *FAST, *SMALL_TASK, "~callbacks.sample_evaluation", "trainer.max_steps=6"]
SIGNAL_AT = ["+callbacks.signal._target_=test_resume.SignalAt", f"+callbacks.signal.signum={int(signal.SIGTERM)}"]


def stopped(run_dir, step: int = 2) -> list[str]:
    """Stop a run by SIGTERM in step `step` + 1 (last.ckpt there); the command, which resumes it (its signal is
    behind it)."""
    command = [*RUN, *SIGNAL_AT, f"+callbacks.signal.step={step}"]
    with pytest.raises(Interrupted):
        train(compose_train(command, output_dir=run_dir))
    return command


def metric_steps(run_dir):
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def test_a_truncated_checkpoint_is_one_line_before_compute_and_keeps_the_logs(tmp_path):
    command = stopped(tmp_path)
    logged = metric_steps(tmp_path)
    assert len(logged) == 3  # steps 1, 2 and 3
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    with open(checkpoint, "r+b") as handle:
        handle.truncate(os.path.getsize(checkpoint) // 2)
    with pytest.raises(SystemExit) as exit_:
        run_job(compose_train(command, output_dir=tmp_path))
    message = str(exit_.value.code)
    error = ("RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory")
    assert message == (f"error: {checkpoint}: cannot read the checkpoint ({error}): it is truncated or damaged; "
                       "resume=false starts over (the old run's files are moved to previous/ in the run directory)")
    in_readme(message, file=checkpoint, error=error)
    assert metric_steps(tmp_path) == logged  # Lightning's CSV logger deleted them here


def pickled(obj, path):  # the format before torch's zip files
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


@pytest.mark.parametrize("save", [torch.save, pickled])
def test_an_untrusted_checkpoint_is_refused_by_name_without_advice_to_unpickle(tmp_path, save):
    command = stopped(tmp_path)
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    save({"state_dict": {}, "payload": os.system}, checkpoint)  # loading it would run code
    with pytest.raises(InputError) as error:
        train(compose_train(command, output_dir=tmp_path))
    assert str(error.value) == (f"{checkpoint}: refused: it holds Python objects beyond tensors and plain data "
                                "(loading them could run code), so no run of this project wrote it; resume=false "
                                "starts over (the old run's files are moved to previous/ in the run directory)")
    assert "weights_only" not in str(error.value)
    in_readme(str(error.value), file=checkpoint)


def test_a_checkpoint_with_non_finite_weights_is_named_as_damaged(tmp_path):
    command = stopped(tmp_path)
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["policy.lm_head.weight"][0, 0] = float("nan")
    torch.save(state, checkpoint)
    with pytest.raises(InputError) as error:
        train(compose_train(command, output_dir=tmp_path))
    assert str(error.value) == (f"{checkpoint}: 1 weight tensor(s) hold NaN or Inf (e.g. policy.lm_head.weight): the "
                                "checkpoint is damaged; resume=false starts over (the old run's files are moved to "
                                "previous/ in the run directory)")
    in_readme(str(error.value), file=checkpoint)


def test_a_nan_loss_after_resuming_says_the_checkpoint_may_be_damaged(tmp_path):
    """Damaged but loadable and finite: huge weights. The loss goes NaN at once; the line points at the checkpoint."""
    command = stopped(tmp_path)
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"] = {k: v * 1e30 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, checkpoint)
    with pytest.raises(NonFiniteLossError) as error:
        train(compose_train(command, output_dir=tmp_path))
    step = int(str(error.value).split(" at step ")[1].split(" ")[0])
    assert step >= 3 and str(error.value) == (
        f"loss is nan at step {step} (beta=0.1); stopping. Checkpoints written so far are kept. The run resumed from "
        "its checkpoint at step 3: the checkpoint may be damaged (resume=false starts over).")
    in_readme(str(error.value).replace(f"at step {step} (", "at step <n> ("))


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    command = stopped(tmp_path)  # step 3
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    before = checkpoint.read_bytes()

    def full_disk(data, path):  # Lightning's writer, on a full disk: half the bytes, then ENOSPC
        with open(path, "wb") as handle:
            handle.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch_io, "_atomic_save", full_disk)
    with pytest.raises(SystemExit) as exit_:
        run_job(compose_train(command, output_dir=tmp_path))
    assert str(exit_.value.code) == (f"error: cannot write the checkpoint {checkpoint} (No space left on device): the "
                                     "previous one there is kept; free space (or set hydra.run.dir elsewhere) and "
                                     "run the same command to resume")
    in_readme(str(exit_.value.code), file=checkpoint)
    assert checkpoint.read_bytes() == before
    assert not (tmp_path / "checkpoints" / ".last.ckpt.partial").exists()


HOLDER = """
import sys, time
from gpo.infra.run_lock import run_directory_lock
with run_directory_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_one_process_per_run_directory_and_a_dead_holders_lock_is_taken_over(tmp_path, caplog):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as exit_:
            run_job(compose_train(RUN, output_dir=tmp_path))
        host = socket.gethostname()
        assert str(exit_.value.code) == (
            f"error: {tmp_path} is in use by another process (pid {holder.pid} on {host}): wait until it ends, or "
            "give this run another directory (hydra.run.dir=..., or hydra.sweep.dir=... for a sweep)")
        in_readme(str(exit_.value.code), dir=tmp_path, pid=holder.pid, host=host)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()  # SIGKILL: the lock dies with it, its pid stays in the file
        holder.wait()
    with run_directory_lock(tmp_path):
        pass
    (warning,) = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert warning == f"{tmp_path}: taking over the lock its last holder (pid {holder.pid} on {host}) left: that " \
                      "process is gone"
    in_readme(warning, dir=tmp_path, pid=holder.pid, host=host)
    with run_directory_lock(tmp_path), pytest.raises(RunRefused), run_directory_lock(tmp_path):
        pass  # also within one process: one holder


def test_csv_metrics_of_a_resumed_run_keep_the_earlier_rows(tmp_path):
    command = stopped(tmp_path, step=3)  # steps 1..4 logged, checkpoint at 4
    first = metric_steps(tmp_path)
    resumed = train(compose_train(command, output_dir=tmp_path))
    assert resumed.resumed_from_step == 4
    assert len(first) == 4 and metric_steps(tmp_path) == first + [first[-1] + 1, first[-1] + 2]  # steps 5 and 6
    with open(tmp_path / "csv" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(bool(row.get("val/loss")) for row in rows) == 3  # at steps 2, 4, 6: a column of rows written before


def test_a_failing_checkpoint_write_is_a_run_error(tmp_path, monkeypatch):
    """In-process, what run_job reports: the error type and the line."""
    def full_disk(data, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch_io, "_atomic_save", full_disk)
    with pytest.raises(RunError, match="there is no earlier one"):
        train(compose_train(RUN, output_dir=tmp_path))
