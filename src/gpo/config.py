"""Config checks and resolvers shared by the entry points."""

import hashlib
import json
import math
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gpo.errors import InputError


def run_group() -> str:
    """One W&B group per multirun (the sweep directory's name), else per run."""
    hydra_cfg = HydraConfig.get()
    directory = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else hydra_cfg.run.dir
    return Path(directory).name


OmegaConf.register_new_resolver("run_group", run_group, replace=True)


def check_config(cfg: DictConfig) -> None:
    """Reject values that would waste a run, before any model or data is loaded."""
    beta = cfg.beta
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        raise InputError(f"beta must be a positive number, got {beta!r}")


def fingerprint(*parts) -> str:
    """A short stable hash of config nodes and plain values, for cache keys."""
    plain = [OmegaConf.to_container(p, resolve=True) if isinstance(p, DictConfig) else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def instantiate(node, **kwargs):
    """hydra.utils.instantiate, but a bad-input error raised by the target
    surfaces as itself rather than wrapped in Hydra's InstantiationException."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, InputError):
            raise error.__cause__ from None
        raise
