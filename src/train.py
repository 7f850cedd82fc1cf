"""Train a policy with a GPO loss.  python src/train.py loss=ipo beta=0.5"""

import json
import logging
import sys
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gpo.config import check_config, fingerprint
from gpo.errors import InputError
from gpo.models import frozen_copy
from gpo.module import GPOModule
from gpo.sft import load_or_finetune

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    check_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)

    policy, tokenizer = hydra.utils.instantiate(cfg.model.policy)
    datamodule = hydra.utils.instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup("fit")  # fail on bad data now, and the SFT stage needs it
    if cfg.model.sft.steps > 0:
        load_or_finetune(
            policy, tokenizer, datamodule.demonstrations(), cfg.cache_dir,
            fingerprint(cfg.model, cfg.data.source, cfg.data.max_length),
            max_length=cfg.data.max_length, trainer_kwargs={"accelerator": cfg.trainer.accelerator}, **cfg.model.sft,
        )
    module = GPOModule(
        policy=policy,
        reference=frozen_copy(policy),
        loss_fn=hydra.utils.instantiate(cfg.loss),
        beta=cfg.beta,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler),
    )
    logger = hydra.utils.instantiate(cfg.logger)
    callbacks = list(hydra.utils.instantiate(cfg.callbacks).values())
    trainer = hydra.utils.instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    if hasattr(logger, "log_hyperparams"):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=datamodule)
    summary = {
        **run_identity(cfg),
        "status": "finished",
        "error": None,
        "wall_time_s": time.perf_counter() - start,
        **{k: getattr(module.loss_fn, k) for k in ("f0", "df0", "d2f0", "regularisation_scale")},
        "metrics": {k: float(v) for k, v in sorted(trainer.callback_metrics.items())},
    }
    write_summary(summary)
    if hasattr(logger, "experiment") and hasattr(logger.experiment, "summary"):
        logger.experiment.summary.update(summary["metrics"])
    return summary


def run_identity(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    return {"loss": hydra_cfg.runtime.choices["loss"], "beta": cfg.beta, "seed": cfg.seed,
            "overrides": list(hydra_cfg.overrides.task)}


def write_summary(summary: dict) -> None:
    path = Path(HydraConfig.get().runtime.output_dir) / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        summary = train(cfg)
    except Exception as error:
        # Leave a record for the sweep report and close the W&B run as failed;
        # checkpoints and logs already written stay where they are.
        message = f"{type(error).__name__}: {error}"
        write_summary({**run_identity(cfg), "status": "failed", "error": message})
        if wandb.run is not None:
            wandb.finish(exit_code=1)
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # let the other jobs of the sweep run
            log.error("Job failed: %s", message, exc_info=not isinstance(error, InputError))
            return None
        if isinstance(error, InputError):  # bad input: one clear line, no traceback
            log.error("%s", error)
            sys.exit(f"error: {error}")
        raise
    return summary["metrics"].get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
