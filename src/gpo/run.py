"""One training run, composed from the config; what src/train.py runs.

Data flows one way:

    model config -> (policy, tokenizer) -> data module (checked, tokenized)
      -> initial policy (SFT stage, cached) -> reference (conf/reference)
      -> GPOModule(policy, reference, loss) -> Lightning Trainer.fit
      -> RunSummary (summary.json, W&B run summary)

`train(cfg)` returns the summary; `run_job(cfg)` is the entry point's job:
bad input in one line, any failure recorded in summary.json and W&B, a
finished run skipped, an interrupted one resumed (`resume`: gpo/resume.py, gpo/checkpoints.py).
"""

# First: imported after Lightning, wandb's pydantic models take ~15 s longer to
# build (their docstring extraction scans every loaded module).
import wandb  # isort: skip

import logging
import sys
import time
from dataclasses import asdict

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.strategies import FSDPStrategy

from gpo import console
from gpo.cache import DiskCache, digest
from gpo.checkpoints import Interrupted, signal_handlers_kept
from gpo.config import check_config, instantiate, torch_threads
from gpo.data.module import file_stamps
from gpo.errors import InputError
from gpo.export import export_policy
from gpo.logprobs import LogProbs
from gpo.losses import GPOLoss, Squared
from gpo.losses.base import link_ratio
from gpo.models import compile_policy, device_for, with_lora
from gpo.module import GPOModule
from gpo.reference import InitialPolicy, NoReference
from gpo.resume import finished_run, resume_checkpoint, wandb_resume
from gpo.secrets import redact, redacted_argv
from gpo.summary import FAILED, RunSummary, SummaryContributor
from gpo.timing import FitClock, StageClock

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> RunSummary:
    start, clock = time.perf_counter(), StageClock()  # clock: summary.time_split (gpo/timing.py)
    check_config(cfg)
    console.configure(cfg.get("verbose", False))
    run_dir = HydraConfig.get().runtime.output_dir
    checkpoint = resume_checkpoint(cfg, run_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    devices = cfg.trainer.get("devices", 1)
    threads = torch_threads(cfg.get("num_threads"), devices if cfg.trainer.accelerator == "cpu" and
                            isinstance(devices, int) else 1)
    if threads:
        torch.set_num_threads(threads)

    build = instantiate(cfg.model.policy, _partial_=True)
    policy, tokenizer = build()
    clock.lap("setup")
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, shuffle_seed=cfg.seed)
    # The next job of a multirun in this process reuses the prepared data (same configs, same files).
    datamodule.reuse_key = digest(cfg.data, cfg.model.policy, file_stamps(cfg.data))
    datamodule.setup("fit")  # bad data fails here, before any compute
    datamodule.check_trainable()
    datamodule.configure_packing(policy)  # packed batches only if the model keeps packed sequences apart
    clock.lap("data")
    logprobs = instantiate(cfg.logprobs) if "logprobs" in cfg else LogProbs()
    loss_fn = instantiate(cfg.loss)
    initial = InitialPolicy(build, cfg.model.policy, cfg.model.sft, datamodule, DiskCache(cfg.cache_dir),
                            cfg.trainer.accelerator)
    reference = (instantiate(cfg.reference, initial=initial, logprobs=logprobs) if loss_fn.needs_reference
                 else NoReference(initial, logprobs))
    if loss_fn.needs_reference and not reference.provides_logps:
        raise InputError(f"loss={choice('loss', cfg)} needs reference log-probs; reference=none gives none")
    reference.check(lora=cfg.model.get("lora") is not None)  # before the SFT stage: bad input costs no compute
    stages = {"sft": initial.prepare(policy)}
    clock.lap("sft")
    policy = with_lora(policy, instantiate(cfg.model.get("lora")))  # after SFT: adapters off = the initial policy
    if cfg.model.get("compile"):
        compile_policy(policy)
    stages["reference"] = reference.setup(policy, datamodule, device_for(cfg.trainer.accelerator))
    clock.lap("reference")
    beta, beta_scale = scaled_beta(cfg, loss_fn, datamodule)

    module = GPOModule(policy, reference, loss_fn, beta, instantiate(cfg.optimizer), instantiate(cfg.scheduler),
                       logprobs)
    logger = instantiate(cfg.logger, **wandb_resume(cfg.logger, run_dir))
    # FitClock first: its step times end before the other callbacks' batch-end work (a sample evaluation).
    callbacks = [FitClock(), *instantiate(cfg.callbacks).values()]
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    clock.lap("trainer")
    if hasattr(logger, "log_hyperparams"):  # creates the W&B run, which records the command line: masked too
        with redacted_argv():
            logger.log_hyperparams(redact({**OmegaConf.to_container(cfg, resolve=True), "beta_effective": beta}))
    clock.lap("logger")
    log.info("Training %s (beta %g) for %s steps; policy %.3g M parameters", choice("loss", cfg), beta,
             cfg.trainer.max_steps, sum(p.numel() for p in policy.parameters()) / 1e6)
    if checkpoint is not None:
        log.info("Resuming from %s", checkpoint)
    # weights_only: a resumed checkpoint is data, never code; the process's own signal handlers back however fit ends.
    with signal_handlers_kept():
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
        clock.lap("fit")

    summary = RunSummary(
        **identity(cfg), beta=beta, beta_scale=beta_scale, loss_config=OmegaConf.to_container(cfg.loss, resolve=True),
        theory=loss_fn.theory(), metrics={k: float(v) for k, v in sorted(trainer.callback_metrics.items())},
        data=datamodule.summary(), stages={name: asdict(s) for name, s in stages.items() if s is not None},
        resumed_from_step=module.resumed_from_step,
    )
    for callback in trainer.callbacks:
        if isinstance(callback, SummaryContributor):
            callback.contribute(summary)
    if trainer.is_global_zero:  # under DDP every rank runs train(); rank 0's summary has the sample evaluation
        export = cfg.get("export") or {}
        if export.get("policy", False) and isinstance(trainer.strategy, FSDPStrategy):
            log.warning("export.policy: skipped under FSDP (sharded weights); export from the checkpoint instead")
        elif export.get("policy", False):
            exported = export_policy(module.policy, tokenizer, run_dir, export.get("merged", False))
            summary.stages["export"] = asdict(exported)
    clock.lap("export")
    if trainer.is_global_zero and isinstance(logger, WandbLogger):
        logger.experiment.summary.update(summary.metrics)
    finish_wandb()  # the next job of a multirun in this process starts a fresh W&B run
    clock.lap("teardown")
    summary.time_split = clock.split(summary.time_split)  # the callbacks' parts of fit, filled in by contribute
    summary.wall_time_s = time.perf_counter() - start
    if trainer.is_global_zero:
        summary.write(run_dir)
    report_outcome(summary.metrics)
    return summary


def finish_wandb(exit_code: int = 0) -> None:
    """Close this process's W&B run and wait until its files are written.

    wandb.finish() returns once the W&B service (a separate process) has the
    run's last record; the service writes and closes the run file after that,
    so until then an offline run reads back empty or partial, for longer on a
    loaded machine. Shutting the service down (wandb.teardown) waits for it.
    That also takes WANDB_SERVICE out of os.environ: left there, it hands the
    runs of every process started later from this one (a test's CLI
    subprocess) to this process's service, and their exit no longer waits for
    their files."""
    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
    wandb.teardown()


def scaled_beta(cfg: DictConfig, loss_fn, datamodule) -> tuple[float, str]:
    """beta_scale=taylor|link multiplies beta per GPO family so that families
    compare at the squared loss's (IPO's) local regularisation: taylor by
    scale(squared)/scale(f) (the paper's f''(0)/|f'(0)| argument), link by the
    link-function ratio on this data's preference probabilities (derived here).
    Returns (beta, the scaling applied)."""
    mode = cfg.get("beta_scale", "none")
    if mode == "none":
        return cfg.beta, mode
    if not isinstance(loss_fn, GPOLoss) or not loss_fn.regularisation_scale > 0:
        log.warning("beta_scale=%s: %s has no f''(0) > 0 to scale by; beta stays %g",
                    mode, choice("loss", cfg), cfg.beta)
        return cfg.beta, "none"
    if mode == "taylor":
        factor = Squared().regularisation_scale / loss_fn.regularisation_scale
    else:
        probabilities = datamodule.summary().get("preference_probabilities")
        if not probabilities:
            raise InputError("beta_scale=link needs the data's preference probabilities (the synthetic task, or "
                             "data relabelled by a gold reward: data.relabel_temperature)")
        p, weights = zip(*probabilities)
        factor = link_ratio(loss_fn, Squared(), p, weights)
    log.info("beta_scale=%s: beta %g x %.4g = %.4g", mode, cfg.beta, factor, cfg.beta * factor)
    return cfg.beta * factor, mode


def choice(group: str, cfg: DictConfig) -> str:
    """The option chosen for a config group (e.g. loss=dpo), where Hydra ran the job."""
    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices.get(group) or "?"
    return "?"


def identity(cfg: DictConfig) -> dict:
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return {"loss": choice("loss", cfg), "beta_requested": cfg.beta, "seed": cfg.seed, "overrides": overrides}


def report_outcome(metrics: dict) -> None:
    if "eval/gold_reward" in metrics:
        policy, reference = metrics["eval/gold_reward"], metrics["eval/gold_reward_reference"]
        log.info(
            "Gold reward of samples: policy %.3f vs reference %.3f (%s); win rate %.3f; KL %.3f; val accuracy %.3f",
            policy, reference, "went up" if policy > reference else "did not go up",
            metrics["eval/win_rate"], metrics["eval/kl"], metrics.get("val/rewards/accuracies", float("nan")),
        )


def run_job(cfg: DictConfig) -> float | None:
    """Train; on failure leave a record for the sweep report and close the W&B
    run as failed (checkpoints and logs already written stay where they are).
    A run directory whose summary.json says finished is skipped (resume=false
    trains it again). Returns `optimized_metric` for Hydra sweepers."""
    run_dir = HydraConfig.get().runtime.output_dir
    done = finished_run(cfg, run_dir)
    if done is not None:
        log.info("%s: finished already (summary.json); skipped (resume=false trains it again)", run_dir)
        return done.metrics.get(cfg.get("optimized_metric"))
    try:
        summary = train(cfg)
    except Interrupted as stop:  # a preemption signal: checkpointed at this step; requeue and stop the process
        RunSummary(**identity(cfg), beta=cfg.beta, status=FAILED, error=f"Interrupted: {stop}").write(run_dir)
        if wandb.run is not None:
            wandb.run.mark_preempting()
        finish_wandb(exit_code=1)
        log.warning("Interrupted: %s", stop)
        stop.hand_over()
        sys.exit(f"interrupted: {stop}")
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        RunSummary(**identity(cfg), beta=cfg.beta, status=FAILED, error=message).write(run_dir)
        finish_wandb(exit_code=1)
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # let the other jobs of the sweep run
            log.error("Job failed: %s", message, exc_info=not isinstance(error, InputError))
            return None
        if isinstance(error, InputError):  # bad input: one clear line, no traceback
            log.error("%s", error)
            sys.exit(f"error: {error}")
        raise
    return summary.metrics.get(cfg.get("optimized_metric"))
