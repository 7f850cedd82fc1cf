"""A run's W&B files are complete when train() returns, on a loaded machine too.

The flaky failures this pins down (tests that read an offline run back and
found it empty, only in the full suite): wandb.finish() returns when the W&B
service, a separate process, has the run's last record; the service writes
and closes the run file later. The pytest process's service also stayed up
between tests, and its WANDB_SERVICE variable went into every CLI subprocess's
environment, so those subprocesses handed their runs to it and exited before
their files were written. train() now shuts its service down (gpo.infra.tracking.finish).
"""

import os
import signal
import threading
from pathlib import Path

import pytest
import wandb
from wandb.sdk import wandb_setup
from wandb.sdk.lib.service import service_connection

from conftest import FAST, SMALL_TASK, compose_train
from gpo.run import train
from wandb_records import find_runs, read_run


def test_offline_run_is_complete_when_train_returns_even_if_the_service_lags(tmp_path, monkeypatch):
    """The W&B service is frozen (SIGSTOP) the moment the run informs it that
    it finished, for 2 s, as a busy 2-core machine may deschedule it: before
    the fix the run read back empty here, every time."""
    inform_finish = service_connection.ServiceConnection.inform_finish

    def lagging(self, run_id):
        # wandb internals (0.22 to 0.31): the only hook at that moment; an AttributeError here says they moved.
        pid = wandb_setup.singleton()._connection._proc._process.pid
        os.kill(pid, signal.SIGSTOP)
        threading.Timer(2.0, os.kill, (pid, signal.SIGCONT)).start()
        return inform_finish(self, run_id)

    monkeypatch.setattr(service_connection.ServiceConnection, "inform_finish", lagging)
    train(compose_train([*FAST, *SMALL_TASK, "~callbacks.sample_evaluation"], output_dir=tmp_path))

    (run,) = find_runs(str(tmp_path))
    record = read_run(run)
    assert record["exit_code"] == 0
    assert sum("train/loss" in step for step in record["history"]) == 4
    # Nothing left for a subprocess started now to inherit: it starts (and waits for) its own service.
    assert "WANDB_SERVICE" not in os.environ


def test_the_run_file_reads_back_as_written_and_a_damaged_one_fails(tmp_path):
    """tests/wandb_records.py against wandb's own writer: what was logged
    comes back; a flipped byte or a cut file is an error, never a partial read."""
    run = wandb.init(mode="offline", dir=tmp_path, project="p", name="n", group="g",
                     config={"beta": 0.1, "model": {"sft": {"steps": 3}}})
    for step in range(3):
        run.log({"train/loss": 1.0 / (step + 1), "step_text": "x" * 40_000 * step})  # > 32 KiB: spans blocks
    run.summary.update({"eval/kl": 0.25})
    run.finish(exit_code=0)
    wandb.teardown()

    (directory,) = find_runs(str(tmp_path))
    record = read_run(directory)
    assert (record["name"], record["group"], record["project"], record["exit_code"]) == ("n", "g", "p", 0)
    assert record["config"]["beta"] == 0.1 and record["config"]["model"] == {"sft": {"steps": 3}}
    assert [step["train/loss"] for step in record["history"]] == [1.0, 0.5, 1.0 / 3]
    assert [len(step["step_text"]) for step in record["history"]] == [0, 40_000, 80_000]
    assert record["summary"]["eval/kl"] == 0.25

    (path,) = Path(directory).glob("*.wandb")
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    for damaged in (bytes(flipped), data[: len(data) // 2 + 3]):
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match="damaged|truncated|ends inside|out of order|padding"):
            read_run(directory)
