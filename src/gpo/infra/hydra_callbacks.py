"""Hydra callbacks around every job (hydra.callbacks in conf/train.yaml and
the launcher presets): check the output directory, mask secrets in the config
files Hydra writes, give every local parallel job a GPU of its own. The
callbacks at the end of a sweep: gpo/sweeps/outcomes.py."""

import fcntl
import logging
import os
import subprocess
import time
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from gpo.infra.errors import InputError
from gpo.infra.secrets import redact

log = logging.getLogger(__name__)


def redact_yaml_file(path: Path) -> bool:
    """Mask secrets in a YAML file in place (atomically); True if it held any."""
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    masked = redact(content)
    if masked == content:
        return False
    tmp = path.with_name(f".{path.name}.redacted")
    tmp.write_text(yaml.safe_dump(masked, sort_keys=False, allow_unicode=True))
    os.replace(tmp, path)
    return True


class RedactSecrets(Callback):
    """Hydra writes the job's config, its own config and the overrides
    (<run dir>/.hydra/*.yaml) and, in a multirun, <sweep dir>/multirun.yaml
    before the job starts: mask the secrets in them (gpo.infra.secrets) as it starts."""

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        hydra_cfg = HydraConfig.get()
        files = []
        if hydra_cfg.output_subdir is not None:
            files += sorted((Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir).glob("*.yaml"))
        if hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN":
            files.append(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
        masked = [str(path) for path in files if path.exists() and redact_yaml_file(path)]
        if masked:
            log.info("Secrets masked in %s", ", ".join(masked))


class CheckOutputDir(Callback):
    """The run (or sweep) directory must be creatable: one line naming it if
    not, instead of Hydra's traceback from deep inside its job runner."""

    def _check(self, config: DictConfig, key: str) -> None:
        HydraConfig.instance().set_config(config)  # what Hydra does before resolving the directory itself
        directory = Path(str(OmegaConf.select(config, key)))
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise SystemExit(f"error: {key}={directory} is not a writable directory ({error.strerror}); "
                             f"set {key}=<a writable directory>") from None

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "hydra.sweep.dir")


class CheckLauncher(Callback):
    """The launcher's settings resolved before any job is submitted: a request
    the config cannot make (conf/hydra/launcher/slurm.yaml with
    trainer.devices=auto on GPUs) is one line naming it, not a traceback from
    inside the sweeper."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            OmegaConf.to_container(config.hydra.launcher, resolve=True)
        except InterpolationResolutionError as error:
            cause = error
            while cause is not None and not isinstance(cause, InputError):  # what a (nested) resolver raised
                cause = cause.__cause__ or cause.__context__
            if cause is not None:
                raise SystemExit(f"error: {cause}") from None
            # anything else surfaces where Hydra resolves it


# Per process: the GPU this process holds and its lock file (kept open). Process-global
# on purpose: a joblib worker runs many jobs and Hydra hands each one a fresh copy of
# this callback (the launcher pickles it per job), so only module state outlives a
# job; CUDA fixes a process's visible devices at their first use, so the choice
# belongs to the process, and the lock must stay held as long as the process lives.
_PINNED: dict = {}


def _candidate_gpus(gpus) -> list[str]:
    if gpus is not None:
        return [str(g) for g in ([gpus] if isinstance(gpus, int) else gpus)]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:  # e.g. set by SLURM for the node's allocation: choose among those only
        return [g for g in visible.split(",") if g]
    try:  # nvidia-smi, not torch: querying CUDA here would fix this process's devices before we choose
        listing = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU")]


class OneGPUPerProcess(Callback):
    """Pin each job process to one GPU that no other job process holds.

    Local parallel launchers (joblib) run jobs in a pool of worker processes
    and reuse them; CUDA fixes a process's visible devices when it first uses
    them, so the GPU is chosen per process, at its first job, and held for the
    process's lifetime with an exclusive lock file (released by the OS when
    the process exits, so no stale locks). Locks are node-wide, so two sweeps on
    one node do not share GPUs either. With more worker processes than GPUs the
    extra ones wait `wait_s` for a GPU, then hide all GPUs: their jobs fail
    (listed at the end) instead of sharing a device."""

    def __init__(self, gpus: int | list | None = None, lock_dir: str = "/tmp/gpo-gpu-locks", wait_s: float = 60.0):
        self.gpus, self.lock_dir, self.wait_s = gpus, lock_dir, wait_s

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if "gpu" not in _PINNED:
            gpus = _candidate_gpus(self.gpus)
            if not gpus:
                log.warning("No GPU found (nvidia-smi, CUDA_VISIBLE_DEVICES, or the callback's `gpus`): not pinning")
                _PINNED["gpu"] = None
                return
            _PINNED["gpu"], _PINNED["lock"] = self._acquire(gpus)
            os.environ["CUDA_VISIBLE_DEVICES"] = _PINNED["gpu"]
        if _PINNED["gpu"] is not None:
            log.info("Process %d runs its jobs on GPU %s", os.getpid(), _PINNED["gpu"] or "none (see above)")

    def _acquire(self, gpus: list[str]):
        os.makedirs(self.lock_dir, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        while True:
            for gpu in gpus:
                lock = open(os.path.join(self.lock_dir, f"gpu{gpu}.lock"), "a")  # noqa: SIM115 (held for the process)
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return gpu, lock
                except BlockingIOError:
                    lock.close()
            if time.monotonic() >= deadline:
                log.error("No free GPU among %s (locks in %s): more parallel jobs than GPUs? Set "
                          "hydra.launcher.n_jobs to at most %d. This process gets no GPU.",
                          gpus, self.lock_dir, len(gpus))
                return "", None
            time.sleep(1.0)
