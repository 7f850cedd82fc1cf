import os
import subprocess
from functools import cache
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import gpo.infra.config  # noqa: F401  (registers the config resolvers)
from gpo.infra.tracking import finish as finish_wandb

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


# One torch thread in this process and (through OMP_NUM_THREADS) in every CLI
# subprocess: the models are tiny, so a second thread buys nothing on a quiet
# machine and, on a shared one, threads waiting on each other make steps 10-20x
# slower (docs/sweeps.md). It also makes in-process and subprocess arithmetic the same.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


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


@pytest.fixture(autouse=True)
def close_wandb_run():
    """A test whose in-process train() raised leaves its W&B run open (main()
    closes it in real use); close it, and its W&B service, so the next test's
    logger (or CLI subprocess) starts its own."""
    yield
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
