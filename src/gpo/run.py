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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

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
from gpo.losses.scaling import beta_scale_factor, planned_beta
from gpo.model import LogProbs, compile_policy, device_for, export_policy, with_lora
from gpo.reference import InitialPolicy, NoReference
from gpo.training import GPOModule, Interrupted
from gpo.training.preemption import signal_handlers_kept
from gpo.training.resume import finished_run, resume_checkpoint

log = logging.getLogger(__name__)


def setup_job(cfg: DictConfig) -> None:
    """Before anything is built: the config checked, the console, the seed, torch's threads."""
    devices = cfg.trainer.get("devices", 1)
    processes = (devices if isinstance(devices, int) else 1) * cfg.trainer.get("num_nodes", 1)
    console.configure(cfg.get("verbose", False), processes)  # first: a bad-input error prints once
    check_config(cfg)
    console.announce_changes(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    threads = torch_threads(cfg.get("num_threads"), devices if cfg.trainer.accelerator == "cpu" and
                            isinstance(devices, int) else 1)
    if threads:
        torch.set_num_threads(threads)


@dataclass
class Composed:
    """One run's parts, composed from the config (the data flow above)."""
    module: GPOModule
    datamodule: object
    tokenizer: object
    trainer: pl.Trainer
    logger: object
    beta: float  # the beta the loss uses (after beta_scale)
    beta_scale: str
    stages: dict = field(default_factory=dict)  # sft / reference: how long, built or loaded from the cache

    def summary(self, cfg: DictConfig, **fields) -> RunSummary:
        """The run's record: final metrics, data counts, stage timings, what the callbacks measured."""
        summary = RunSummary(
            **identity(cfg, self.beta, self.beta_scale), loss_config=OmegaConf.to_container(cfg.loss, resolve=True),
            theory=self.module.loss_fn.theory(), data=self.datamodule.summary(),
            metrics={k: float(v) for k, v in sorted(self.trainer.callback_metrics.items())},
            stages={name: asdict(s) for name, s in self.stages.items() if s is not None}, **fields)
        for callback in self.trainer.callbacks:
            if isinstance(callback, SummaryContributor):
                callback.contribute(summary)
        return summary

    def record(self, summary: RunSummary, run_dir: str, start: float) -> None:
        """summary.json and the W&B run summary (rank 0's: it has the sample
        evaluation), the job's wall time since `start`; the W&B run closed."""
        summary.wall_time_s = time.perf_counter() - start
        if self.trainer.is_global_zero:
            summary.write(run_dir)
            tracking.record_summary(self.logger, summary)
        tracking.finish()  # the next job of a multirun in this process starts a fresh W&B run
        log.info("%s", console.headline(summary, run_dir))


def compose(cfg: DictConfig, run_dir: str, logger_name: str = "") -> Composed:
    """Policy, data, initial policy (SFT stage), reference, loss and beta, the
    training module, the logger and the trainer, as the config says. Bad input
    fails before the SFT stage: it costs no compute."""
    build = instantiate(cfg.model.policy, _partial_=True)
    policy, tokenizer = build()
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, shuffle_seed=cfg.seed)
    datamodule.setup("fit")  # bad data fails here, before any compute
    datamodule.check_trainable()
    datamodule.configure_packing(policy)  # packed batches only if the model keeps packed sequences apart
    logprobs = instantiate(cfg.logprobs) if "logprobs" in cfg else LogProbs()
    loss_fn = instantiate(cfg.loss)
    initial = InitialPolicy(build, cfg.model.policy, cfg.model.sft, datamodule, DiskCache(cfg.cache_dir),
                            cfg.trainer.accelerator, logprobs)
    reference = (instantiate(cfg.reference, initial=initial, logprobs=logprobs) if loss_fn.needs_reference
                 else NoReference(initial, logprobs))
    # Before the SFT stage: bad input costs no compute.
    reference.check(choice("loss", cfg), loss_fn.needs_reference, lora=cfg.model.get("lora") is not None)
    stages = {"sft": initial.prepare(policy)}
    policy = with_lora(policy, instantiate(cfg.model.get("lora")))  # after SFT: adapters off = the initial policy
    if cfg.model.get("compile"):
        compile_policy(policy)
    stages["reference"] = reference.setup(policy, datamodule, device_for(cfg.trainer.accelerator))
    beta, beta_scale = scaled_beta(cfg, loss_fn, datamodule)

    module = GPOModule(policy, reference, loss_fn, beta, instantiate(cfg.optimizer), instantiate(cfg.scheduler),
                       logprobs)
    logger = tracking.make_logger(cfg.logger, run_dir,
                                  name=f"{logger_name}{choice('loss', cfg)}-{beta_name(beta, cfg.beta)}")
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=list(instantiate(cfg.callbacks).values()))
    # The W&B config's beta is the one the loss uses, as in summary.json: one meaning of beta everywhere.
    tracking.record_config(logger, {**OmegaConf.to_container(cfg, resolve=True), "beta": beta,
                                    "beta_requested": cfg.beta, "beta_scale": beta_scale})
    return Composed(module, datamodule, tokenizer, trainer, logger, beta, beta_scale, stages)


def train(cfg: DictConfig) -> RunSummary:
    start = time.perf_counter()
    setup_job(cfg)
    run_dir = HydraConfig.get().runtime.output_dir
    checkpoint = resume_checkpoint(cfg, run_dir)
    run = compose(cfg, run_dir)
    policy, trainer = run.module.policy, run.trainer
    log.info("Training %s (beta %g) for %s steps; policy %.3g M parameters", choice("loss", cfg), run.beta,
             cfg.trainer.max_steps, sum(p.numel() for p in policy.parameters()) / 1e6)
    if checkpoint is not None:
        log.info("Resuming from %s", checkpoint)
    # weights_only: a resumed checkpoint is data, never code; the process's own signal handlers back however fit ends.
    with signal_handlers_kept():
        trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=checkpoint, weights_only=True)

    summary = run.summary(cfg, resumed_from_step=run.module.resumed_from_step)
    export = cfg.get("export") or {}
    if trainer.is_global_zero and export.get("policy", False):  # under DDP every rank runs train()
        exported = export_policy(run.module.policy, run.tokenizer, run_dir, export.get("merged", False),
                                 trainer.strategy)
        if exported is not None:
            summary.stages["export"] = asdict(exported)
    run.record(summary, run_dir, start)
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


def identity(cfg: DictConfig, beta: float | None = None, beta_scale: str | None = None) -> dict:
    """What names a run in its summary: loss, seed, overrides, `beta` (the
    value the loss used; for a run that failed before reading its data,
    the one the config implies: gpo.losses.scaling.planned_beta) and
    `beta_requested` (the value given)."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    mode = cfg.get("beta_scale", "none")
    if beta is None:
        beta = planned_beta(cfg.beta, mode, cfg.loss)
        beta = cfg.beta if beta is None else beta
    return {"loss": choice("loss", cfg), "beta": beta, "beta_requested": cfg.beta, "beta_scale": beta_scale or mode,
            "seed": cfg.seed, "overrides": overrides}


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


def run_job(cfg: DictConfig, job: Callable[[DictConfig], RunSummary] = train) -> float | None:
    """Train (or run `job`: src/evaluate.py's evaluation); on failure leave a
    record for the sweep report and close the W&B run as failed (checkpoints
    and logs already written stay where they are).
    A run directory whose summary.json says finished is skipped (resume=false
    trains it again). Returns `optimized_metric` (the first of a list that the
    run measured) for Hydra sweepers."""
    run_dir = HydraConfig.get().runtime.output_dir
    done = finished_run(cfg, run_dir)
    if done is not None:
        log.info("%s: finished already (summary.json); skipped (resume=false trains it again)", run_dir)
        return done.objective(cfg.get("optimized_metric"))
    try:
        summary = job(cfg)
    except Interrupted as stop:  # a preemption signal: checkpointed at this step; requeue and stop the process
        RunSummary(**identity(cfg), status=FAILED, error=f"Interrupted: {stop}").write(run_dir)
        tracking.finish(exit_code=1, preempted=True)
        log.warning("Interrupted: %s", stop)
        stop.hand_over()
        sys.exit(f"interrupted: {stop}")
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        RunSummary(**identity(cfg), status=FAILED, error=message).write(run_dir)
        tracking.finish(exit_code=1)
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # let the other jobs of the sweep run
            log.error("Job failed: %s", message, exc_info=not isinstance(error, InputError))
            return None
        if isinstance(error, InputError):  # bad input: one clear line, no traceback
            log.error("%s", error, extra=console.FILE_ONLY)  # in train.log; the console gets the line below
            sys.exit(f"error: {error}")
        raise
    return summary.objective(cfg.get("optimized_metric"))
