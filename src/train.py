"""Train a policy with a GPO loss.  python src/train.py loss=ipo beta=0.5"""

import json
import logging
import os
import sys
import time
from functools import partial
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from peft import PeftModel

from gpo.config import check_config, fingerprint, instantiate
from gpo.errors import InputError
from gpo.models import reference_for, with_lora
from gpo.module import GPOModule
from gpo.reference_cache import attach_reference_logps, cache_key, device_for
from gpo.sft import load_or_finetune

log = logging.getLogger(__name__)
# Launchers that start fresh job processes (submitit local/SLURM) unpickle this
# module's functions there; they inherit the environment, so this lets them import gpo.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))


def train(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    check_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.get("num_threads"):
        torch.set_num_threads(cfg.num_threads)

    policy, tokenizer = instantiate(cfg.model.policy)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup("fit")  # fail on bad data now, and the SFT stage needs it
    policy = sft_model(cfg, tokenizer, datamodule, policy)
    reference_cache = {"status": "off"}
    if cfg.reference_cache:  # before any preference training: the policy is the reference here
        key = cache_key(cfg, tokenizer, datamodule.tokenized)
        device = device_for(cfg.trainer.accelerator)
        reference_cache = attach_reference_logps(datamodule, policy, cfg.cache_dir, key, device)
    policy = with_lora(policy, instantiate(cfg.model.get("lora")))  # after SFT: adapters off = reference
    # With cached log-probs only the final sample evaluation needs the reference
    # model: GPOModule builds it then instead of holding a copy through training.
    deferred = cfg.reference_cache and not isinstance(policy, PeftModel)  # LoRA: the reference costs nothing
    module = GPOModule(
        policy=policy,
        reference=partial(sft_model, cfg, tokenizer, datamodule) if deferred else reference_for(policy),
        loss_fn=instantiate(cfg.loss),
        beta=cfg.beta,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
    )
    logger = instantiate(cfg.logger)
    callbacks = list(instantiate(cfg.callbacks).values())
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
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
        "truncation": datamodule.truncation,  # per split: pairs truncated and dropped by tokenization
        "reference_cache": reference_cache,
    }
    if trainer.is_global_zero:  # under DDP every rank runs train(); rank 0's summary has the sample evaluation
        write_summary(summary)
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "summary"):  # elsewhere a dummy experiment
            logger.experiment.summary.update(summary["metrics"])
    if wandb.run is not None:  # the next job of a multirun in this process starts a fresh W&B run
        wandb.finish()
    report_gold_reward(summary["metrics"])
    return summary


def report_gold_reward(metrics: dict) -> None:
    if "eval/gold_reward" in metrics:
        policy, reference = metrics["eval/gold_reward"], metrics["eval/gold_reward_reference"]
        log.info(
            "Gold reward of samples: policy %.3f vs reference %.3f (%s); win rate %.3f; KL %.3f; val accuracy %.3f",
            policy, reference, "went up" if policy > reference else "did not go up",
            metrics["eval/win_rate"], metrics["eval/kl"], metrics.get("val/rewards/accuracies", float("nan")),
        )


def sft_model(cfg: DictConfig, tokenizer, datamodule, policy=None):
    """The policy before preference training, which is the reference: `policy`
    (default: a new one from the config) after the SFT stage, cached on disk."""
    if policy is None:
        policy, _ = instantiate(cfg.model.policy)
    if cfg.model.sft.steps > 0:
        load_or_finetune(
            policy, tokenizer, datamodule.demonstrations(), cfg.cache_dir,
            fingerprint(cfg.model.policy, cfg.model.sft, cfg.data.source, cfg.data.max_length),
            max_length=cfg.data.max_length, trainer_kwargs={"accelerator": cfg.trainer.accelerator}, **cfg.model.sft,
        )
    return policy


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
