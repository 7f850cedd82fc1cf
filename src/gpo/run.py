"""One training run, composed from the config; what src/train.py runs.

Data flows one way:

    model config -> (policy, tokenizer) -> data module (checked, tokenized)
      -> initial policy (SFT stage, cached) -> reference (conf/reference)
      -> GPOModule(policy, reference, loss) -> Lightning Trainer.fit
      -> RunSummary (summary.json, W&B run summary)

`train(cfg)` returns the summary (`compose` builds the parts; src/evaluate.py
composes the same way); `run_job(cfg)` is the entry point's job and
the one place failures are handled: the run directory held by one process
(gpo.infra.run_lock), a finished run skipped and an interrupted one resumed if
it is the same experiment (gpo.training.resume), a signal in any stage stopped
with a record (gpo.infra.interrupts), a failure recorded in summary.json and
W&B and reported in one line.
"""

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from gpo.data.sources import check_data_files
from gpo.infra import console, interrupts, tracking
from gpo.infra.cache import DiskCache
from gpo.infra.config import check_config, instantiate, torch_threads
from gpo.infra.errors import OneLineError, RunRefused
from gpo.infra.interrupts import Interrupted
from gpo.infra.run_lock import run_directory_lock
from gpo.infra.summary import FAILED, RunSummary, SummaryContributor
from gpo.losses.scaling import beta_scale_factor
from gpo.model import LogProbs, compile_policy, device_for, export_policy, with_lora
from gpo.reference import InitialPolicy, NoReference
from gpo.sweeps.outcomes import note_refused_job
from gpo.training import GPOModule, RunRecord
from gpo.training.composition import AXES, Composition
from gpo.training.identity import run_identity
from gpo.training.names import beta_name, choice, identity
from gpo.training.resume import earlier_segments, finished_run, resume_checkpoint
from gpo.training.timing import FitClock, StageClock

log = logging.getLogger(__name__)


def setup_job(cfg: DictConfig) -> None:
    """Before anything is built: the config checked, the console, the data files
    named, the seed, torch's threads."""
    devices = cfg.trainer.get("devices", 1)
    processes = (devices if isinstance(devices, int) else 1) * cfg.trainer.get("num_nodes", 1)
    console.configure(cfg.get("verbose", False), processes)  # first: a bad-input error prints once
    check_config(cfg)
    console.announce_changes(cfg)
    check_data_files(cfg.data)  # local files the config names: before the model (maybe from a hub) is fetched
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
    record: RunRecord  # the run's identity and its final metrics, in every checkpoint
    beta: float  # the beta the loss uses (after beta_scale)
    beta_scale: str
    stages: dict = field(default_factory=dict)  # sft / reference: how long, built or loaded from the cache

    def summary(self, cfg: DictConfig, **fields) -> RunSummary:
        """The run's record: final metrics, data counts, stage timings, what the callbacks measured."""
        run = identity(cfg, self.beta, self.beta_scale)
        summary = RunSummary(
            **run, loss_config=OmegaConf.to_container(cfg.loss, resolve=True),
            theory={} if run["method"] else self.module.loss_fn.theory(),  # beta theory: plain GPO's f(beta rho)
            data=self.datamodule.summary(), identity=self.record.identity,
            metrics=dict(self.record.metrics) or  # the final ones, also of a run resumed at its end
            {k: float(v) for k, v in sorted(self.trainer.callback_metrics.items())},
            stages={name: asdict(s) for name, s in self.stages.items() if s is not None}, **fields)
        for callback in self.trainer.callbacks:
            if isinstance(callback, SummaryContributor):
                callback.contribute(summary)
        return summary

    def write(self, summary: RunSummary, run_dir: str, started: float, clock: StageClock) -> None:
        """summary.json and the W&B run summary (rank 0's: it has the sample
        evaluation), this process's part of the run since `started` and where
        its time went (`clock`, with the parts of fit the callbacks timed); the W&B run closed."""
        interrupts.enter("while writing the summary")
        summary.add_segment(started, "finished", clock.split(fit_parts=summary.time_split))
        if self.trainer.is_global_zero:
            summary.write(run_dir)
            tracking.record_summary(self.logger, summary)
        tracking.finish()  # the next job of a multirun in this process starts a fresh W&B run
        log.info("%s", console.headline(summary, run_dir))


def compose(cfg: DictConfig, run_dir: str, experiment: dict, clock: StageClock, logger_name: str = "") -> Composed:
    """Policy, data, initial policy (SFT stage), reference, loss, method axes and
    beta, the training module, the logger and the trainer, as the config says.
    Bad input (or parts that cannot work together) fails before the SFT stage:
    it costs no compute. `clock` times the stages (summary.json time_split)."""
    interrupts.enter("while loading the model")
    build = instantiate(cfg.model.policy, _partial_=True)
    policy, tokenizer = build()
    clock.lap("setup")
    interrupts.enter("during data preparation")
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, shuffle_seed=cfg.seed)
    datamodule.setup("fit")  # bad data fails here, before any compute
    datamodule.check_trainable()
    datamodule.configure_packing(policy)  # packed batches only if the model keeps packed sequences apart
    clock.lap("data")
    logprobs = instantiate(cfg.logprobs) if "logprobs" in cfg else LogProbs()
    loss_fn = instantiate(cfg.loss)
    axes = {group: instantiate(cfg[group]) for group in AXES if group in cfg}
    initial = InitialPolicy(build, cfg.model.policy, cfg.model.sft, datamodule, DiskCache(cfg.cache_dir),
                            cfg.trainer.accelerator, logprobs)
    reference = (instantiate(cfg.reference, initial=initial, logprobs=logprobs) if loss_fn.needs_reference
                 else NoReference(initial, logprobs))
    composition = Composition(loss_fn, reference, datamodule, lora=cfg.model.get("lora") is not None,
                              names={group: choice(group, cfg) for group in ("loss", "reference", *AXES)}, **axes)
    composition.check()
    interrupts.enter("during the SFT stage")
    stages = {"sft": initial.prepare(policy)}
    clock.lap("sft")
    policy = with_lora(policy, instantiate(cfg.model.get("lora")))  # after SFT: adapters off = the initial policy
    if cfg.model.get("compile"):
        compile_policy(policy)
    interrupts.enter("during the reference log-probs")
    stages["reference"] = reference.setup(policy, datamodule, device_for(cfg.trainer.accelerator),
                                          tokens="reference_tokens" in composition.needs)
    clock.lap("reference")
    beta, beta_scale = scaled_beta(cfg, loss_fn, datamodule)

    module = GPOModule(policy, reference, loss_fn, beta, instantiate(cfg.optimizer), instantiate(cfg.scheduler),
                       logprobs, **axes)
    logger = tracking.make_logger(cfg.logger, run_dir,
                                  name=f"{logger_name}{choice('loss', cfg)}-{beta_name(beta, cfg.beta)}")
    record = RunRecord(experiment)
    # FitClock first: its step times end before the other callbacks' batch-end work (a sample evaluation).
    trainer = instantiate(cfg.trainer, logger=logger,
                          callbacks=[FitClock(), *instantiate(cfg.callbacks).values(), record])
    clock.lap("trainer")
    # The W&B config's beta is the one the loss uses, as in summary.json: one meaning of beta everywhere.
    tracking.record_config(logger, {**OmegaConf.to_container(cfg, resolve=True), "beta": beta,
                                    "beta_requested": cfg.beta, "beta_scale": beta_scale})
    clock.lap("logger")
    return Composed(module, datamodule, tokenizer, trainer, logger, record, beta, beta_scale, stages)


@interrupts.handled  # a signal in any stage stops the run where it is (gpo.infra.interrupts)
def train(cfg: DictConfig) -> RunSummary:
    started, clock = time.time(), StageClock()  # clock: this part's time_split (gpo/training/timing.py)
    interrupts.enter("while starting")
    setup_job(cfg)
    run_dir = HydraConfig.get().runtime.output_dir
    experiment = run_identity(cfg)
    checkpoint = resume_checkpoint(cfg, run_dir, experiment)
    segments = earlier_segments(cfg, run_dir)  # a resumed run's earlier parts: its wall time sums them all
    run = compose(cfg, run_dir, experiment, clock)
    policy, trainer = run.module.policy, run.trainer
    log.info("Training %s (beta %g) for %s steps; policy %.3g M parameters", choice("loss", cfg), run.beta,
             cfg.trainer.max_steps, sum(p.numel() for p in policy.parameters()) / 1e6)
    if checkpoint is not None:
        log.info("Resuming from %s", checkpoint)
    interrupts.enter("in training")
    with interrupts.deferred():  # a signal stops training at the end of a step (gpo.training.preemption)
        # weights_only: a resumed checkpoint is data, never code.
        trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=checkpoint, weights_only=True)
    clock.lap("fit")

    interrupts.enter("after training")  # a signal received since its last step: its final checkpoint is written
    summary = run.summary(cfg, resumed_from_step=run.module.resumed_from_step, segments=list(segments))
    interrupts.enter("during the export")
    export = cfg.get("export") or {}
    if trainer.is_global_zero and export.get("policy", False):  # under DDP every rank runs train()
        exported = export_policy(run.module.policy, run.tokenizer, run_dir, export.get("merged", False),
                                 trainer.strategy)
        if exported is not None:
            summary.stages["export"] = asdict(exported)
    clock.lap("export")
    run.write(summary, run_dir, started, clock)
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


def run_job(cfg: DictConfig, job: Callable[[DictConfig], RunSummary] = train) -> float | None:
    """Train (or run `job`: src/evaluate.py's evaluation), holding the run
    directory; returns `optimized_metric` (the first of a list that the run
    measured) for Hydra sweepers.

    A finished run of this experiment is skipped (resume=false trains it again).
    A signal stops the run with a record and, for a scheduler's, a requeue. A
    failure is recorded (summary.json, the W&B run closed as failed; checkpoints
    and logs stay) and reported in one line when its message says everything;
    in a multirun the other jobs go on. A directory that another process holds,
    or that holds another experiment, is left untouched."""
    run_dir = HydraConfig.get().runtime.output_dir
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    with interrupts.handling() as signals:
        try:
            with run_directory_lock(run_dir) if rank_zero_only.rank == 0 else nullcontext():  # DDP: rank 0 holds it
                return _run_job(cfg, run_dir, multirun, signals, job)
        except RunRefused as refused:  # nothing of this run was written there: nothing to record
            if multirun:
                log.error("Job refused: %s", refused)
                note_refused_job(HydraConfig.get().sweep.dir, run_dir, str(refused))
                return None
            log.error("%s", refused)
            sys.exit(f"error: {refused}")


def _run_job(cfg: DictConfig, run_dir: str, multirun: bool, signals: interrupts.InterruptHandler,
             job: Callable[[DictConfig], RunSummary]) -> float | None:
    started, experiment = time.time(), {}
    segments = earlier_segments(cfg, run_dir)  # the record of a failed or interrupted part keeps the earlier ones
    try:
        experiment = run_identity(cfg)
        done = finished_run(cfg, run_dir, experiment)
        if done is not None:
            log.info("%s: finished already (summary.json); skipped (resume=false trains it again)", run_dir)
            return done.objective(cfg.get("optimized_metric"))
        return job(cfg).objective(cfg.get("optimized_metric"))
    except RunRefused:
        raise
    except (Interrupted, SIGTERMException) as caught:  # SIGTERMException: Lightning's own, should one get through
        stop = caught if isinstance(caught, Interrupted) else signals.interrupted("in training (Lightning's stop)")
    except Exception as error:
        if signals.pending:  # it failed on its way to stopping (a W&B service the signal killed too, say)
            stop = signals.interrupted(f"{signals.stage}, then {type(error).__name__}: {error}")
        else:
            message = f"{type(error).__name__}: {error}"
            _record_failure(cfg, run_dir, experiment, message, Segments(segments, started, "failed", signals.stage))
            if multirun:  # let the other jobs of the sweep run
                log.error("Job failed: %s", message, exc_info=not isinstance(error, OneLineError))
                return None
            if isinstance(error, OneLineError):  # one clear line, no traceback
                log.error("%s", error, extra=console.FILE_ONLY)  # in train.log; the console gets the line below
                sys.exit(f"error: {error}")
            raise
    closed = _record_failure(cfg, run_dir, experiment, f"Interrupted: {stop}",
                             Segments(segments, started, signal.Signals(stop.signum).name, signals.stage),
                             preempted=stop.requeue)
    log.warning("Interrupted: %s", stop)
    try:
        if rank_zero_only.rank == 0:
            stop.hand_over()  # a scheduler's signal: requeue (never raises)
    except SystemExit:  # submitit's handler requeues, then exits: the line below stays the run's last word
        pass
    # Exit at once, without the exit hooks, when they could outlive what is left: W&B's would wait on a service
    # the signal stopped; and in a SLURM job step that was requeued, SLURM cancels the step right after.
    if not closed or (stop.requeue and "SLURM_STEP_ID" in os.environ):
        exit_now(f"interrupted: {stop}")
    sys.exit(f"interrupted: {stop}")


@dataclass
class Segments:
    """The run's parts before this process's, and this one's start and how it ended (RunSummary.segments)."""

    earlier: list[dict]
    started: float
    ended_by: str
    stage: str  # where it stopped (gpo.infra.interrupts): "in training" is the time_split's `fit`, unsplit


def _record_failure(cfg: DictConfig, run_dir: str, experiment: dict, error: str, parts: Segments,
                    preempted: bool = False) -> bool:
    """summary.json says why the run stopped; the W&B run is closed (as preempted: to be resumed). Never raises:
    a full disk or a dead W&B service must not hide the failure being recorded. True if W&B shut down."""
    try:
        record = RunSummary(**identity(cfg), status=FAILED, error=error, identity=experiment,
                            segments=list(parts.earlier))
        stopped_stage = "fit" if parts.stage == "in training" else "stopped"
        record.add_segment(parts.started, parts.ended_by, StageClock.current_split(stopped_stage))
        record.write(run_dir)
    except Exception as failure:
        log.warning("Could not write %s/summary.json (%s: %s)", run_dir, type(failure).__name__, failure)
    return tracking.finish(exit_code=1, preempted=preempted)
