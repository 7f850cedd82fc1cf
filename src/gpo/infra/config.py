"""Config checks and resolvers shared by the entry points."""

import math
import os
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gpo.infra.errors import InputError

BETA_SCALES = ("none", "taylor", "link")


def run_group() -> str:
    """One W&B group per multirun (the sweep directory's name), else per run."""
    hydra_cfg = HydraConfig.get()
    directory = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else hydra_cfg.run.dir
    return Path(directory).name


OmegaConf.register_new_resolver("run_group", run_group, replace=True)


RESUME_OFF = (False, None, "false", "never")  # `resume` values that start over (gpo.training.resume)


def resume_dir(resume, default: str) -> str:
    """hydra.run.dir: the run directory `resume=<run dir>` names (the run
    continues there), else `default` (resume=auto or false)."""
    return default if resume in RESUME_OFF or resume == "auto" else str(resume)


OmegaConf.register_new_resolver("resume_dir", resume_dir, replace=True)


GPU_ACCELERATORS = ("gpu", "cuda")


def on_gpu(accelerator: str, gpu_value, cpu_value):
    """`gpu_value` for a trainer on GPUs, else `cpu_value`: a job request that
    follows the trainer (conf/hydra/launcher/slurm.yaml), decided when the job
    is submitted, before any device is seen."""
    if accelerator not in ("cpu", *GPU_ACCELERATORS):
        raise InputError(f"hydra/launcher=slurm sizes each job from trainer.accelerator, which must be cpu or gpu "
                         f"there, got {accelerator!r}")
    return gpu_value if accelerator in GPU_ACCELERATORS else cpu_value


def devices_per_node(accelerator: str, devices) -> int:
    """The devices one node of a run trains on (trainer.devices: a count or a
    list; `auto` is one on CPU). Under SLURM each device is one task: Lightning
    starts no processes there, every rank is a task SLURM started."""
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.replace(",", "").isdigit():
        return len(devices.split(",")) if "," in devices else int(devices)
    if OmegaConf.is_list(devices) or isinstance(devices, list):
        return len(devices)
    if devices == "auto" and on_gpu(accelerator, False, True):
        return 1
    raise InputError(f"hydra/launcher=slurm requests one task (and one GPU) per device, so trainer.devices must "
                     f"be a number on {accelerator}, got {devices!r}: set trainer.devices=<devices per node>")


OmegaConf.register_new_resolver("on_gpu", on_gpu, replace=True)
OmegaConf.register_new_resolver("devices_per_node", devices_per_node, replace=True)


def job_number(num) -> str:
    """hydra.sweep.subdir's job number, zero-padded to 3 digits so that `ls`
    lists jobs in order (000, 001, ..., 010); longer past 999."""
    return f"{int(num):03d}"


OmegaConf.register_new_resolver("job_number", job_number, replace=True)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


SEED_RANGE = (0, 2**32 - 1)  # what numpy (hence Lightning's seed_everything) accepts


def check_config(cfg: DictConfig) -> None:
    """Reject values that would waste a run, before any model or data is loaded."""
    if not _is_number(cfg.beta) or cfg.beta <= 0:
        raise InputError(f"beta must be a positive number, got {cfg.beta!r}")
    if cfg.get("beta_scale", "none") not in BETA_SCALES:
        raise InputError(f"beta_scale must be one of {', '.join(BETA_SCALES)}, got {cfg.beta_scale!r}")
    seed = cfg.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise InputError(f"seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {seed!r}")
    lr = cfg.get("optimizer", {}).get("lr")
    if lr is not None and (not _is_number(lr) or lr < 0):
        raise InputError(f"optimizer.lr must be a number >= 0, got {lr!r}")
    if lr == 0 and not cfg.get("allow_zero_lr", False):
        raise InputError("optimizer.lr=0 trains nothing (the policy stays where it starts); "
                         "set allow_zero_lr=true if that is what you want")
    max_steps = cfg.trainer.get("max_steps", -1)
    if not isinstance(max_steps, int) or (max_steps <= 0 and max_steps != -1):
        raise InputError(f"trainer.max_steps must be a positive integer (or -1: train by epochs), got {max_steps!r}")
    if max_steps == -1 and not cfg.trainer.get("max_epochs"):
        raise InputError("trainer.max_steps=-1 trains by epochs, but trainer.max_epochs is not set (Lightning would "
                         "train 1000 epochs): add +trainer.max_epochs=<n>, or set trainer.max_steps")
    if cfg.trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise InputError(f"trainer.accelerator={cfg.trainer.accelerator} (trainer=gpu, ddp, fsdp), but this machine "
                         "has no GPU that torch can use: use trainer=cpu, or run where there is one")


def instantiate(node, **kwargs):
    """hydra.utils.instantiate, but a bad-input error raised by the target
    surfaces as itself rather than wrapped in Hydra's InstantiationException."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, InputError):
            raise error.__cause__ from None
        raise


CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def group_options(group: str) -> dict[str, DictConfig]:
    """Every option of a config group (conf/<group>/*.yaml) by name: what
    `<group>=glob(*)` sweeps, for code that must cover them all (tests, the bandit)."""
    return {path.stem: OmegaConf.load(path) for path in sorted((CONF_DIR / group).glob("*.yaml"))}


def torch_threads(setting, cpu_processes: int = 1) -> int | None:
    """Torch CPU threads for one job from `num_threads`: a number, null
    (torch's default: one per core, or OMP_NUM_THREADS), or `auto`: this
    process's cores divided among the processes that compute side by side,
    the jobs of a parallel multirun (`hydra.launcher.n_jobs`) times
    `cpu_processes` (DDP on CPU: trainer.devices), so that they never ask
    for more threads than cores (more make torch's threads wait on each
    other). An OMP_NUM_THREADS set in the environment (a launcher's choice)
    is kept. In a SLURM task the cores are SLURM_CPUS_PER_TASK: SLURM's
    task/none plugin (and some clusters' setups) sets no affinity mask, so
    the mask shows the whole node; with one task per rank (DDP launched by
    SLURM: SLURM_NTASKS > 1) Lightning starts no processes of its own."""
    if setting in (None, "null"):
        return None
    if setting != "auto":
        if not isinstance(setting, int) or setting < 1:
            raise InputError(f"num_threads must be a positive integer, auto or null, got {setting!r}")
        return setting
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"])
    cores, jobs = len(os.sched_getaffinity(0)), 1
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        cores = int(os.environ["SLURM_CPUS_PER_TASK"])
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            cpu_processes = 1
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        n_jobs = HydraConfig.get().launcher.get("n_jobs")
        if isinstance(n_jobs, int) and n_jobs != 0:
            jobs = n_jobs if n_jobs > 0 else os.cpu_count() + 1 + n_jobs  # joblib: -1 all cores, -2 all but one
    return max(1, cores // max(1, jobs * cpu_processes))
