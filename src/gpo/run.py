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
from gpo.infra.config import CONF_DIR, check_config, instantiate, torch_threads
from gpo.infra.errors import InputError
from gpo.infra.summary import FAILED, RunSummary, SummaryContributor
from gpo.losses.scaling import beta_scale_factor
from gpo.model import LogProbs, compile_policy, device_for, export_policy, with_lora
from gpo.reference import InitialPolicy, NoReference
from gpo.training import GPOModule, Interrupted
from gpo.training.composition import AXES, Composition
from gpo.training.preemption import signal_handlers_kept
from gpo.training.resume import finished_run, resume_checkpoint

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> RunSummary:
    start = time.perf_counter()
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
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, shuffle_seed=cfg.seed)
    datamodule.setup("fit")  # bad data fails here, before any compute
    datamodule.check_trainable()
    datamodule.configure_packing(policy)  # packed batches only if the model keeps packed sequences apart
    logprobs = instantiate(cfg.logprobs) if "logprobs" in cfg else LogProbs()
    loss_fn = instantiate(cfg.loss)
    axes = {group: instantiate(cfg[group]) for group in AXES if group in cfg}
    initial = InitialPolicy(build, cfg.model.policy, cfg.model.sft, datamodule, DiskCache(cfg.cache_dir),
                            cfg.trainer.accelerator, logprobs)
    reference = (instantiate(cfg.reference, initial=initial, logprobs=logprobs) if loss_fn.needs_reference
                 else NoReference(initial, logprobs))
    # Before the SFT stage: bad input (or parts that cannot work together) costs no compute.
    composition = Composition(loss_fn, reference, datamodule, lora=cfg.model.get("lora") is not None,
                              names={group: choice(group, cfg) for group in ("loss", "reference", *AXES)}, **axes)
    composition.check()
    stages = {"sft": initial.prepare(policy)}
    policy = with_lora(policy, instantiate(cfg.model.get("lora")))  # after SFT: adapters off = the initial policy
    if cfg.model.get("compile"):
        compile_policy(policy)
    stages["reference"] = reference.setup(policy, datamodule, device_for(cfg.trainer.accelerator),
                                          tokens="reference_tokens" in composition.needs)
    beta, beta_scale = scaled_beta(cfg, loss_fn, datamodule)

    module = GPOModule(policy, reference, loss_fn, beta, instantiate(cfg.optimizer), instantiate(cfg.scheduler),
                       logprobs, **axes)
    logger = tracking.make_logger(cfg.logger, run_dir)
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=list(instantiate(cfg.callbacks).values()))
    tracking.record_config(logger, {**OmegaConf.to_container(cfg, resolve=True), "beta_effective": beta})
    log.info("Training %s (beta %g) for %s steps; policy %.3g M parameters", choice("loss", cfg), beta,
             cfg.trainer.max_steps, sum(p.numel() for p in policy.parameters()) / 1e6)
    if checkpoint is not None:
        log.info("Resuming from %s", checkpoint)
    # weights_only: a resumed checkpoint is data, never code; the process's own signal handlers back however fit ends.
    with signal_handlers_kept():
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)

    run = identity(cfg)
    summary = RunSummary(
        **run, beta=beta, beta_scale=beta_scale, loss_config=OmegaConf.to_container(cfg.loss, resolve=True),
        theory={} if run["method"] else loss_fn.theory(),  # the beta theory is about plain GPO's f(beta rho)
        metrics={k: float(v) for k, v in sorted(trainer.callback_metrics.items())},
        data=datamodule.summary(), stages={name: asdict(s) for name, s in stages.items() if s is not None},
        resumed_from_step=module.resumed_from_step,
    )
    for callback in trainer.callbacks:
        if isinstance(callback, SummaryContributor):
            callback.contribute(summary)
    export = cfg.get("export") or {}
    if trainer.is_global_zero and export.get("policy", False):  # under DDP every rank runs train()
        exported = export_policy(module.policy, tokenizer, run_dir, export.get("merged", False), trainer.strategy)
        if exported is not None:
            summary.stages["export"] = asdict(exported)
    summary.wall_time_s = time.perf_counter() - start
    if trainer.is_global_zero:  # rank 0's summary has the sample evaluation
        summary.write(run_dir)
        tracking.record_summary(logger, summary.metrics)
    tracking.finish()  # the next job of a multirun in this process starts a fresh W&B run
    report_outcome(summary.metrics)
    return summary


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
    return {"loss": choice("loss", cfg), "method": method(cfg), "beta_requested": cfg.beta, "seed": cfg.seed,
            "overrides": overrides}


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
    except Interrupted as stop:  # a preemption signal: checkpointed at this step; requeue and stop the process
        RunSummary(**identity(cfg), beta=cfg.beta, status=FAILED, error=f"Interrupted: {stop}").write(run_dir)
        tracking.finish(exit_code=1, preempted=True)
        log.warning("Interrupted: %s", stop)
        stop.hand_over()
        sys.exit(f"interrupted: {stop}")
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
