"""One training run, composed from the config; what src/train.py runs.

Data flows one way:

    model config -> (policy, tokenizer) -> data module (checked, tokenized)
      -> initial policy (SFT stage, cached) -> reference (conf/reference)
      -> GPOModule(policy, reference, loss) -> Lightning Trainer.fit
      -> RunSummary (summary.json, W&B run summary)

`train(cfg)` returns the summary; `run_job(cfg)` is the entry point's job:
bad input in one line, any failure recorded in summary.json and W&B, a
finished run skipped, an interrupted one resumed (gpo.training.resume).
"""

import logging
import os
import signal
import sys
import time
from dataclasses import asdict

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gpo.infra import console, tracking
from gpo.infra.cache import DiskCache
from gpo.infra.config import check_config, instantiate, torch_threads
from gpo.infra.errors import InputError
from gpo.infra.summary import FAILED, RunSummary, SummaryContributor
from gpo.losses.scaling import beta_scale_factor
from gpo.model import LogProbs, compile_policy, device_for, export_policy, with_lora
from gpo.reference import InitialPolicy, NoReference
from gpo.training import GPOModule, Interrupted
from gpo.training.preemption import signal_handlers_kept
from gpo.training.resume import earlier_segments, finished_run, resume_checkpoint
from gpo.training.timing import FitClock, StageClock

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> RunSummary:
    started, clock = time.time(), StageClock()  # clock: this part's time_split (gpo/training/timing.py)
    check_config(cfg)
    console.configure(cfg.get("verbose", False))
    run_dir = HydraConfig.get().runtime.output_dir
    checkpoint = resume_checkpoint(cfg, run_dir)
    segments = earlier_segments(cfg, run_dir)  # a resumed run's earlier parts: its wall time sums them all
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
    datamodule.setup("fit")  # bad data fails here, before any compute
    datamodule.check_trainable()
    datamodule.configure_packing(policy)  # packed batches only if the model keeps packed sequences apart
    clock.lap("data")
    logprobs = instantiate(cfg.logprobs) if "logprobs" in cfg else LogProbs()
    loss_fn = instantiate(cfg.loss)
    initial = InitialPolicy(build, cfg.model.policy, cfg.model.sft, datamodule, DiskCache(cfg.cache_dir),
                            cfg.trainer.accelerator, logprobs)
    reference = (instantiate(cfg.reference, initial=initial, logprobs=logprobs) if loss_fn.needs_reference
                 else NoReference(initial, logprobs))
    # Before the SFT stage: bad input costs no compute.
    reference.check(choice("loss", cfg), loss_fn.needs_reference, lora=cfg.model.get("lora") is not None)
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
    logger = tracking.make_logger(cfg.logger, run_dir)
    # FitClock first: its step times end before the other callbacks' batch-end work (a sample evaluation).
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=[FitClock(), *instantiate(cfg.callbacks).values()])
    clock.lap("trainer")
    tracking.record_config(logger, {**OmegaConf.to_container(cfg, resolve=True), "beta_effective": beta})
    clock.lap("logger")
    log.info("Training %s (beta %g) for %s steps; policy %.3g M parameters", choice("loss", cfg), beta,
             cfg.trainer.max_steps, sum(p.numel() for p in policy.parameters()) / 1e6)
    if checkpoint is not None:
        log.info("Resuming from %s", checkpoint)
    # weights_only: a resumed checkpoint is data, never code; the process's own signal handlers back however fit ends.
    with signal_handlers_kept():
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
            clock.lap("fit")
        except Interrupted as stop:  # checkpointed at this step; recorded here with this part's time; run_job requeues
            if trainer.is_global_zero:
                record = RunSummary(**identity(cfg), beta=beta, beta_scale=beta_scale, status=FAILED,
                                    error=f"Interrupted: {stop}", resumed_from_step=module.resumed_from_step,
                                    segments=list(segments))
                clock.lap("fit")
                record.add_segment(started, signal.Signals(stop.signum).name, clock.split())
                record.write(run_dir)
            raise

    summary = RunSummary(
        **identity(cfg), beta=beta, beta_scale=beta_scale, loss_config=OmegaConf.to_container(cfg.loss, resolve=True),
        theory=loss_fn.theory(), metrics={k: float(v) for k, v in sorted(trainer.callback_metrics.items())},
        data=datamodule.summary(), stages={name: asdict(s) for name, s in stages.items() if s is not None},
        resumed_from_step=module.resumed_from_step, segments=list(segments),
    )
    for callback in trainer.callbacks:  # the timing ones put their parts of fit in summary.time_split
        if isinstance(callback, SummaryContributor):
            callback.contribute(summary)
    export = cfg.get("export") or {}
    if trainer.is_global_zero and export.get("policy", False):  # under DDP every rank runs train()
        exported = export_policy(module.policy, tokenizer, run_dir, export.get("merged", False), trainer.strategy)
        if exported is not None:
            summary.stages["export"] = asdict(exported)
    clock.lap("export")
    summary.add_segment(started, "finished", clock.split(fit_parts=summary.time_split))
    if trainer.is_global_zero:  # rank 0's summary has the sample evaluation
        summary.write(run_dir)
        tracking.record_summary(logger, summary.metrics)
    tracking.finish()  # the next job of a multirun in this process starts a fresh W&B run
    report_outcome(summary.metrics)
    return summary


def exit_now(message: str) -> None:
    """End the process with `message` and exit status 1 once logs are flushed,
    without the exit hooks: W&B's would wait on a service that a signal to the
    whole job has stopped (until SLURM's SIGKILL)."""
    logging.shutdown()
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def scaled_beta(cfg: DictConfig, loss_fn, datamodule) -> tuple[float, str]:
    """The beta the loss uses under `beta_scale` (gpo.losses.scaling), and the scaling applied."""
    mode = cfg.get("beta_scale", "none")
    if mode == "none":
        return cfg.beta, mode
    factor = beta_scale_factor(mode, loss_fn, datamodule.summary().get("preference_probabilities"))
    if factor is None:
        log.warning("beta_scale=%s: %s has no f''(0) > 0 to scale by; beta stays %g",
                    mode, choice("loss", cfg), cfg.beta)
        return cfg.beta, "none"
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
    trains it again). Returns `optimized_metric` (the first of a list that the
    run measured) for Hydra sweepers."""
    run_dir = HydraConfig.get().runtime.output_dir
    done = finished_run(cfg, run_dir)
    if done is not None:
        log.info("%s: finished already (summary.json); skipped (resume=false trains it again)", run_dir)
        return done.objective(cfg.get("optimized_metric"))
    try:
        summary = train(cfg)
    except Interrupted as stop:  # a preemption signal: checkpointed and recorded at this step; requeue and stop
        log.warning("Interrupted: %s", stop)
        tracking.finish(exit_code=1, preempted=True)
        try:
            stop.hand_over()
        except Exception as error:  # the checkpoint is written: the same command resumes the run
            log.error("Requeue failed (%s: %s): run the same command again to resume", type(error).__name__, error)
        finally:  # also after submitit's handler, which ends in sys.exit
            exit_now(f"interrupted: {stop}")
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        RunSummary(**identity(cfg), beta=cfg.beta, status=FAILED, error=message).write(run_dir)
        tracking.finish(exit_code=1)
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # let the other jobs of the sweep run
            log.error("Job failed: %s", message, exc_info=not isinstance(error, InputError))
            return None
        if isinstance(error, InputError):  # bad input: one clear line, no traceback
            log.error("%s", error)
            sys.exit(f"error: {error}")
        raise
    return summary.objective(cfg.get("optimized_metric"))
