"""What names a run: the option chosen for each config group, the fields that
identify it in summary.json and the report (loss, method, the beta used and
the beta requested, seed, overrides), and the beta in its W&B and folder names.
Importing this module registers the `beta_label` resolver conf/train.yaml's
run and job directories use."""

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from gpo.infra.config import CONF_DIR
from gpo.losses.scaling import planned_beta
from gpo.training.composition import AXES


def choice(group: str, cfg: DictConfig) -> str:
    """The option chosen for a config group (e.g. loss=dpo), where Hydra ran the job."""
    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices.get(group) or "?"
    return "?"


def identity(cfg: DictConfig, beta: float | None = None, beta_scale: str | None = None) -> dict:
    """What names a run in its summary: loss, method, seed, overrides, `beta`
    (the value the loss used; for a run that failed before reading its data,
    the one the config implies: gpo.losses.scaling.planned_beta) and
    `beta_requested` (the value given)."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    mode = cfg.get("beta_scale", "none")
    if beta is None:
        beta = planned_beta(cfg.beta, mode, cfg.loss)
        beta = cfg.beta if beta is None else beta
    return {"loss": choice("loss", cfg), "method": method(cfg), "beta": beta, "beta_requested": cfg.beta,
            "beta_scale": beta_scale or mode, "seed": cfg.seed, "overrides": overrides}


def method(cfg: DictConfig) -> str:
    """What the run trains besides its loss: the axis choices that differ from
    conf/train.yaml's defaults, and a reference that moves (TR-DPO), e.g.
    "rho=mean weighting=wpo" ("" for plain GPO). Part of a run's identity in the
    summary and the sweep report, so that runs differing only there are never
    averaged into one curve."""
    defaults = {group: option for entry in OmegaConf.load(CONF_DIR / "train.yaml").defaults
                if isinstance(entry, DictConfig) for group, option in entry.items()}
    changed = [f"{group}={choice(group, cfg)}" for group in AXES
               if choice(group, cfg) not in (defaults.get(group), "?")]
    if cfg.get("reference", {}).get("sync") is not None:
        changed.append(f"reference={choice('reference', cfg)}")
    return " ".join(changed)


def beta_name(used, requested) -> str:
    """The beta in run and folder names: `beta<used>`, and `-requested<given>`
    when beta_scale changed it (`beta0.2-requested0.1`)."""
    return f"beta{requested}" if used == requested else f"beta{used:.4g}-requested{requested}"


def folder_beta(beta, mode, loss_cfg) -> str:
    """`${beta_label:${beta},${beta_scale},${loss}}` (conf/train.yaml): the beta
    of a run's folder name, known before the run starts. Under beta_scale=link
    the beta used depends on the data's preference probabilities, read only by
    the run: `requested<given>-link` (the W&B run name, summary.json and the
    report give the value used)."""
    if mode == "link":
        return f"requested{beta}-link"
    used = planned_beta(beta, mode, loss_cfg)
    return beta_name(beta if used is None else used, beta)


OmegaConf.register_new_resolver("beta_label", folder_beta, replace=True)
