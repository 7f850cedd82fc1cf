"""The SLURM path on a real scheduler, as docs/sweeps.md gives it: the
README's multirun through `hydra/launcher=slurm` (a job array on a CPU
partition); preemption by `scontrol requeue`, SIGUSR1 and SIGUSR2, each ending
in a resumed run equal to an uninterrupted one and the sweep command's exit 0;
a sweep run again into its directory; DDP with one SLURM task per rank.

Needs a scheduler that answers `sinfo`; on one machine, as root:
`bash .ci/slurm_cluster.sh start` (a one-node cluster; conftest skips these
tests without one). Sized for a 2-CPU node: on trainer=cpu the launcher preset
asks 1 CPU per task, so two jobs (or one 2-rank DDP job) run at once.
Jobs inherit this environment (sbatch --export=ALL): tests/ on PYTHONPATH for
the instrumentation callback below, the session's cache (GPO_CACHE_DIR), and
no OMP_NUM_THREADS, so that `num_threads=auto` takes SLURM_CPUS_PER_TASK."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig

from conftest import FAST, ROOT, SMALL_TASK, compose_train
from gpo.infra.interrupts import slurm_job_id
from gpo.infra.summary import RunSummary
from gpo.run import train
from gpo.training.preemption import CheckpointOnSignal
from test_distributed import COMMON as DDP_COMMON
from test_distributed import curve, in_process
from wandb_records import find_runs, read_run

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# 16 steps, a checkpoint and a sample evaluation every 4 (as tests/test_resume.py); W&B offline (the default
# logger): the requeue path must survive W&B's service dying with the job.
RUN = [*FAST, *SMALL_TASK, "trainer.max_steps=16", "trainer.val_check_interval=4",
       "callbacks.sample_evaluation.every_n_steps=4", "~callbacks.throughput"]
WAIT_S = 600  # bound on every wait for the scheduler; a test fails with what it waited for


class WaitForSignal(pl.Callback):
    """Test instrumentation, added from the command line (+callbacks.wait=...):
    before training step `step`, write `<markers>/<job num>.json` (this job's
    SLURM id, the signal the test is to stop it with, `signals[job num]`, and
    torch's thread count) and hold the step until the run's CheckpointOnSignal
    has received a signal. So the test stops each job at a known step without sleeping."""

    def __init__(self, step: int, markers: str, signals: list[str], timeout_s: float = WAIT_S):
        self.step, self.markers, self.signals, self.timeout_s = step, Path(markers), list(signals), timeout_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        (preemption,) = [c for c in trainer.callbacks if isinstance(c, CheckpointOnSignal)]
        job = HydraConfig.get().job.num
        marker, tmp = self.markers / f"{job}.json", self.markers / f"{job}.partial"
        tmp.write_text(json.dumps({"job": slurm_job_id(), "signal": self.signals[job],
                                   "threads": torch.get_num_threads()}))
        tmp.rename(marker)  # whole or absent: the test never reads half a marker
        deadline = time.monotonic() + self.timeout_s
        while not preemption.handler.pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"WaitForSignal: no signal within {self.timeout_s} s")
            time.sleep(0.05)


def env() -> dict:
    environment = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT / 'src'}", "WANDB_SILENT": "true"}
    environment.pop("OMP_NUM_THREADS", None)  # the jobs' threads come from SLURM (num_threads=auto)
    return environment


def start_sweep(sweep_dir: Path, *overrides: str) -> subprocess.Popen:
    command = [sys.executable, "src/train.py", "-m", *overrides, "hydra/launcher=slurm", f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.Popen(command, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, what: str) -> str:
    try:
        output, _ = process.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"{what}: the sweep command did not end within {WAIT_S} s:\n{output[-4000:]}") from None
    assert process.returncode == 0, f"{what}: exit {process.returncode}:\n{output[-4000:]}"
    return output


def sweep(sweep_dir: Path, *overrides: str) -> str:
    return finish(start_sweep(sweep_dir, *overrides), "sweep")


def job_logs(sweep_dir: Path, slurm_id: str) -> str:
    """What SLURM captured of a job's tasks (submitit appends every run of a requeued job to the same files)."""
    return "".join(p.read_text(errors="replace") for p in sorted(sweep_dir.glob(f".submitit/{slurm_id}/*_log.*")))


def sbatch_script(sweep_dir: Path) -> str:
    (script,) = sweep_dir.glob(".submitit/*/*_submission.sh")  # one array: one script
    return script.read_text()


def comparable(summary: RunSummary) -> dict:
    return {k: v for k, v in summary.metrics.items() if "device" not in k}  # throughput is timing


SIGNALS = {  # how a job is stopped at step 6: the command the test runs on the job's SLURM id
    "requeue": ["scontrol", "requeue"],  # SIGTERM to every process of the job, W&B's service included
    "USR1": ["scancel", "--signal=USR1"],  # to the job's steps: what `#SBATCH --signal=USR1@90` sends before a limit
    "USR2": ["scancel", "--signal=USR2"],  # submitit's: its handler saves the submission and requeues the job
}
STOPPED_BY = {"requeue": "SIGTERM", "USR1": "SIGUSR1", "USR2": "SIGUSR2"}
JOBS = {"000_dpo-beta0.1": "requeue", "001_ipo-beta0.1": "USR1", "002_slic-beta0.1": "USR2"}


@pytest.fixture(scope="module")
def readme_sweep(tmp_path_factory):
    """The README's multirun on the CPU partition as docs/sweeps.md writes it
    (`python src/train.py -m loss=dpo,ipo,slic hydra/launcher=slurm`), small:
    one job array of 3 tasks, 2 running at once. Each job is held at step 6
    until the test has stopped it (JOBS); the command waits for all of them."""
    root = tmp_path_factory.mktemp("readme")
    sweep_dir, markers = root / "sweep", root / "markers"
    markers.mkdir()
    overrides = ["loss=dpo,ipo,slic", *RUN, "+callbacks.wait._target_=test_slurm.WaitForSignal",
                 "+callbacks.wait.step=6", f"+callbacks.wait.markers={markers}",
                 f"+callbacks.wait.signals=[{','.join(JOBS.values())}]"]
    started = time.monotonic()
    process = start_sweep(sweep_dir, *overrides)
    sent, deadline = {}, time.monotonic() + WAIT_S
    while len(sent) < len(JOBS):  # bounded: each job reaches step 6 once (its resumed run starts at step 7)
        for marker in sorted(markers.glob("*.json")):
            if marker.stem not in sent:
                waiting = json.loads(marker.read_text())
                subprocess.run([*SIGNALS[waiting["signal"]], waiting["job"]], check=True, timeout=60)
                sent[marker.stem] = waiting
        if process.poll() is not None:
            raise AssertionError(f"the sweep ended before every job was stopped:\n{process.stdout.read()[-4000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"after {WAIT_S} s only jobs {sorted(sent)} had reached step 6")
        time.sleep(0.2)
    output = finish(process, "the README sweep")
    print(f"README multirun through SLURM, each job stopped and requeued once: {time.monotonic() - started:.0f} s")
    return sweep_dir, sent, overrides, output


def test_readme_multirun_runs_as_a_job_array_on_a_cpu_partition(readme_sweep):
    sweep_dir, _, _, output = readme_sweep
    script = sbatch_script(sweep_dir)
    assert "#SBATCH --array=0-2%3" in script and "#SBATCH --cpus-per-task=1" in script
    assert "#SBATCH --ntasks-per-node=1" in script and "gpu" not in script  # trainer=cpu: no GPU asked for
    assert "#SBATCH --signal=USR2@120" in script  # what docs/sweeps.md says submitit asks for
    tasks = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    array = tasks[0].split("_")[0]
    assert tasks == [f"{array}_{i}" for i in range(3)]  # one array job, three tasks
    jobs = [RunSummary.read(sweep_dir / name) for name in JOBS]
    assert all(summary.finished for summary in jobs)
    # Jobs ran side by side on the node and shared the SFT cache entry: built at most once, under its lock.
    assert [s.stages["sft"]["status"] for s in jobs].count("built") <= 1
    table = pd.read_csv(sweep_dir / "report.csv")  # the end-of-sweep report, written by the submitting command
    assert sorted(table["loss"]) == ["dpo", "ipo", "slic"] and (table["n_finished"] == 1).all()
    assert "All 3 jobs of" in output


@pytest.mark.parametrize("name, how", JOBS.items())
def test_a_preempted_job_resumes_to_the_uninterrupted_run(readme_sweep, tmp_path, name, how):
    """The job is stopped at step 6 of 16: it checkpoints at step 7, is
    requeued, and its second run resumes from step 7 to the metrics and
    evaluation trajectory of the same run uninterrupted (here, in-process)."""
    sweep_dir, sent, _, _ = readme_sweep
    job = sent[str(int(name.split("_")[0]))]  # the marker file is named by Hydra's job number
    assert job["signal"] == how and job["threads"] == 1  # num_threads=auto: SLURM_CPUS_PER_TASK, 1 of 2 cores
    job_dir = sweep_dir / name
    summary = RunSummary.read(job_dir)
    reference = train(compose_train([*RUN, f"loss={name.split('_')[1].split('-')[0]}", "logger=csv"],
                                    output_dir=tmp_path))
    assert summary.finished and summary.resumed_from_step == 7
    assert comparable(summary) == pytest.approx(comparable(reference), rel=1e-6, abs=1e-7)
    assert [point["step"] for point in summary.trajectory] == [0, 4, 8, 12, 16]
    assert [point["step"] for point in reference.trajectory] == [0, 4, 8, 12, 16]
    for point, expected in zip(summary.trajectory, reference.trajectory):  # approx compares flat containers only
        assert point == pytest.approx(expected, rel=1e-6, abs=1e-7)
    # Wall time: both runs of the job, each recorded as it ended.
    assert [part["ended_by"] for part in summary.segments] == [STOPPED_BY[how], "finished"]
    assert summary.wall_time_s == pytest.approx(sum(part["seconds"] for part in summary.segments))
    assert summary.segments[0]["end"] <= summary.segments[1]["start"]
    logs = job_logs(sweep_dir, job["job"])
    assert f"interrupted: {STOPPED_BY[how]} in training step 7" in logs, logs[-3000:]
    # The first run exited by itself (SLURM SIGKILLs a job that outlives KillWait: "task 0: Killed"), no traceback.
    assert "task 0: Exited with exit code 1" in logs and "Killed" not in logs, logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]
    # W&B: the requeued job continued the same run id (an offline-run directory per part) and closed it.
    parts = find_runs(str(job_dir))
    assert {Path(part).name.rsplit("-", 1)[1] for part in parts} == {(job_dir / "wandb_id").read_text()}
    first, last = read_run(parts[0]), read_run(parts[-1])
    assert len(parts) == 2 and last["exit_code"] == 0 and last["history"]
    # The first part's records: written when its run closed, except after `scontrol requeue`, whose SIGTERM
    # reaches W&B's service too, which dies with the records it had not yet written (docs/sweeps.md).
    assert bool(first["history"]) == (how != "requeue")


def test_a_sweep_run_again_after_a_requeue_skips_the_finished_job(readme_sweep):
    """A sweep command run again into its directory (docs/sweeps.md, "Resuming
    a sweep"), here for the requeued dpo point: the job finds its finished
    summary and skips; the record, with both runs' segments, stays as it was."""
    sweep_dir, _, overrides, _ = readme_sweep
    before = {p.parent.name: p.read_text() for p in sweep_dir.glob("*/summary.json")}
    arrays = {p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" not in p.name}
    sweep(sweep_dir, "loss=dpo", *overrides[1:])
    assert {p.parent.name: p.read_text() for p in sweep_dir.glob("*/summary.json")} == before
    (again,) = {p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" not in p.name} - arrays
    assert "000_dpo-beta0.1: finished already (summary.json); skipped" in job_logs(sweep_dir, again)  # 1 job: no array
    assert len(pd.read_csv(sweep_dir / "report.csv")) == 3  # the report covers the whole directory


def test_ddp_runs_one_slurm_task_per_rank_through_the_launcher(tmp_path):
    """trainer=ddp on the CPU node with 2 devices: the preset asks SLURM for 2
    tasks of 1 CPU and no GPU; each task is one rank (under SLURM Lightning
    starts no processes), gloo between them; the run follows the curve of one
    process with the doubled batch (the comparison of tests/test_distributed.py)."""
    cpus = max(int(n) for n in subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True,
                                               timeout=60).stdout.split())
    if cpus < 2:
        pytest.skip(f"DDP with 2 tasks of 1 CPU needs a node with 2 CPUs; the largest here has {cpus}")
    sweep_dir = tmp_path / "sweep"
    started = time.monotonic()
    sweep(sweep_dir, *DDP_COMMON, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
          "trainer.precision=32-true", "data.batch_size=4")
    seconds = time.monotonic() - started
    script = sbatch_script(sweep_dir)
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --cpus-per-task=1" in script and "gpu" not in script
    ranks = {int(p.name.split("_")[-2]): p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.err")}
    assert sorted(ranks) == [0, 1]  # SLURM started two tasks, which joined one process group as ranks 0 and 1
    assert all(f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in log for rank, log in ranks.items()), ranks

    job_dir = sweep_dir / "000_dpo-beta0.1"
    assert RunSummary.read(job_dir).finished
    (run,) = find_runs(str(job_dir))  # one W&B run: rank 0's
    ddp = read_run(run)
    assert ddp["config"]["trainer"]["devices"] == 2 and ddp["exit_code"] == 0
    single = in_process(tmp_path / "single", "data.batch_size=8")
    for key in ("train/loss", "train/rewards/margins", "train/grad_norm"):
        assert len(curve(ddp, key)) == 5, key
        assert curve(ddp, key) == pytest.approx(curve(single, key), rel=1e-4, abs=1e-6), key
    print(f"DDP job (2 tasks) through SLURM: {seconds:.0f} s")
