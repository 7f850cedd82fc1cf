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
        pid = wandb_setup.singleton()._connection._proc._process.pid  # wandb 0.22 internals (pinned)
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
