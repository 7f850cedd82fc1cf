import os
import runpy
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

# No torch, Hydra or gpo import at this module's top: under pytest-xdist the controller
# process loads this file too, only to hand tests out, and those imports would cost it
# 6 s of CPU before any worker starts. The workers import them with the tests.

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")

# Small, fast settings shared by tests that train.
FAST = [
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "+trainer.limit_val_batches=2",
    "callbacks.sample_evaluation.num_prompts=8",
    "callbacks.sample_evaluation.max_new_tokens=9",
    "trainer.log_every_n_steps=1",
    "callbacks.throughput.window_size=2",
    "~callbacks.progress_bar",
]
# The synthetic task made smaller (pairs only: the SFT stage, keyed by the demonstrations, is shared).
SMALL_TASK = ["data.source.num_pairs=400"]


os.environ["OMP_NUM_THREADS"] = "1"  # every CLI subprocess: one torch thread (one_torch_thread)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One torch thread in the process running the tests and (OMP_NUM_THREADS, above)
    in every CLI subprocess: the models are tiny, so a second thread buys nothing on a
    quiet machine and, on a shared one, threads waiting on each other make steps 10-20x
    slower (docs/sweeps.md). It also makes in-process and subprocess arithmetic the same."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory):
    """One cache for the whole session: the SFT reference is trained once.
    pytest-xdist's workers (pyproject.toml runs the suite on one per core) share
    it, as a sweep's jobs do: the cache's file locks let one build an entry while
    the others wait for it. The inner loop keeps it between sessions too:
        GPO_TEST_CACHE_DIR=/tmp/gpo-test-cache python -m pytest -m "not slow"
    """
    if os.environ.get("GPO_TEST_CACHE_DIR"):
        cache = os.environ["GPO_TEST_CACHE_DIR"]
    elif "PYTEST_XDIST_WORKER" not in os.environ:  # not under xdist (-n0, -p no:xdist)
        cache = str(tmp_path_factory.mktemp("gpo-cache"))
    else:  # the session's base directory, above each worker's own
        cache = str(tmp_path_factory.getbasetemp().parent / "gpo-cache")
    os.environ["GPO_CACHE_DIR"] = cache
    os.environ["WANDB_SILENT"] = "true"
    return cache


def compose_train(overrides=(), output_dir=None, config_name="train"):
    """Compose conf/train.yaml (or conf/<config_name>.yaml) the way `python
    src/train.py` would, with the Hydra runtime config set so `${hydra:...}`
    interpolations resolve."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import gpo.infra.config  # noqa: F401  (registers the config resolvers)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):  # a task function never sees the hydra node
        del cfg["hydra"]
    return cfg


def run_script(script, args, monkeypatch) -> int:
    """`python <script> <args>`, run in this process, its exit status returned: the entry
    point's own __main__ block, Hydra's command-line handling included, without a fresh
    interpreter importing torch and friends again (7 s a command). A SystemExit's message
    goes to stderr, as the interpreter would print it; capture the output with capfd.
    What a process would take with it when it ends stays here, so it is put back: the
    logging setup (Hydra's job logging points the root logger at this test's captured
    streams, which close with the test), warning filters and torch's thread count.
    For what only a process of its own shows (signals, exit codes set by the interpreter,
    a console, a clean import state) tests still start one."""
    import logging
    import warnings

    import torch

    threads = torch.get_num_threads()
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    saved = {lg: (list(lg.handlers), lg.level, lg.propagate, lg.disabled)
             for lg in loggers if isinstance(lg, logging.Logger)}
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    try:
        with warnings.catch_warnings():
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(threads)
        # Hydra's job logging configures the root logger; loggers the run created keep their setup.
        for lg, (handlers, level, propagate, disabled) in saved.items():
            for handler in set(lg.handlers) - set(handlers):  # the run's train.log, its console
                handler.close()
            lg.handlers[:] = handlers
            lg.level, lg.propagate, lg.disabled = level, propagate, disabled
    return 0


@pytest.fixture
def run_in_process(monkeypatch, capfd):
    """run_in_process("src/train.py", *args): run_script, from the repository root, with
    the command's console output captured, as a subprocess.CompletedProcess would give it."""
    def run(script, *args):
        capfd.readouterr()  # what came before is not this command's
        status = run_script(ROOT / script, list(args), monkeypatch)
        output = capfd.readouterr()
        return subprocess.CompletedProcess([script, *args], status, output.out, output.err)

    return run


@pytest.fixture(autouse=True)
def close_wandb_run():
    """A test whose in-process train() raised leaves its W&B run open (main()
    closes it in real use); close it, and its W&B service, so the next test's
    logger (or CLI subprocess) starts its own."""
    yield
    from gpo.infra.tracking import finish as finish_wandb

    finish_wandb(exit_code=1)


@cache
def no_scheduler() -> str | None:
    """Why the `slurm` tests cannot run here, or None when a SLURM scheduler
    answers. The suite never installs or starts one: .ci/slurm_cluster.sh does."""
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%P %t"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return "no SLURM here (no sinfo on the PATH)"
    except subprocess.TimeoutExpired:
        return "no SLURM scheduler answers (sinfo timed out)"
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return f"no SLURM scheduler answers (sinfo: {last_line.removeprefix('sinfo: ')})"
    return None


def pytest_collection_modifyitems(config, items):
    """Modules with `slurm` tests run first, then those with `slow` tests, each
    module's tests in their own order: xdist's workers take whole modules in
    this order (pyproject.toml), so the long ones start early and the many
    short ones fill in at the end, instead of one long module finishing alone.
    Tests marked `slurm` skip, with the reason, unless a scheduler answers
    (start the one-node test cluster: bash .ci/slurm_cluster.sh start)."""
    def modules_with(mark):
        return {item.path for item in items if item.get_closest_marker(mark)}

    slurm_modules, slow_modules = modules_with("slurm"), modules_with("slow")
    items.sort(key=lambda item: (item.path not in slurm_modules, item.path not in slow_modules))  # stable sort
    slurm = [item for item in items if item.get_closest_marker("slurm")]
    if slurm and (reason := no_scheduler()):
        for item in slurm:
            item.add_marker(pytest.mark.skip(reason=f"{reason}; start one: bash .ci/slurm_cluster.sh start"))
