"""A quiet console: one line per stage from us, each message once, progress
for every long stage; library chatter off unless `verbose=true` (datasets and
transformers progress bars, Lightning's device and tip lines, W&B's banners,
deprecation warnings from inside the libraries).

    configure(verbose, processes)        # once per job, before anything prints
    announce_changes(cfg)                # one line if an experiment swapped the logger or the progress bar
    with progress("SFT stage", 300, "steps") as advance: ... advance(1)
    log.error("...", extra=FILE_ONLY)    # in train.log, not on the console (printed another way)
"""

import logging
import os
import time
import warnings
from contextlib import contextmanager

import datasets
import huggingface_hub
import rich
import transformers
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import RichProgressBar
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gpo.infra.config import CONF_DIR
from gpo.infra.summary import RunSummary

log = logging.getLogger(__name__)

CHATTY_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                  "lightning_fabric.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                  "pytorch_lightning.accelerators.cuda", "lightning.pytorch.accelerators.cuda")
# Lightning's hint, printed by every Trainer when an `srun` is on PATH, that parallel jobs must be started by srun.
SRUN_HINT = "The `srun` command is available on your system but is not used"
# `extra=` of a record that goes to the log file only: its message reaches the console another way
# (an error the entry point prints as `error: ...`).
FILE_ONLY = {"console": False}


class _NotFileOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True)


def configure(verbose: bool = False, processes: int = 1) -> None:
    """The console of one job. `processes`: how many processes its trainer
    starts (devices x nodes); Lightning's SLURM hint is only shown when that
    is more than one, the case where not starting them with srun hangs."""
    for handler in logging.getLogger().handlers:  # Hydra's console handler (the file handler keeps everything)
        if type(handler) is logging.StreamHandler and not any(isinstance(f, _NotFileOnly) for f in handler.filters):
            handler.addFilter(_NotFileOnly())
    # datasets and huggingface_hub log through a handler of their own AND propagate to the root logger (Hydra's
    # handlers): every message printed twice. transformers has its own handler and does not propagate (never in
    # train.log). All three through the root's handlers: each message once, on the console and in train.log.
    transformers.logging.disable_default_handler()
    transformers.logging.enable_propagation()
    for name in ("datasets", "huggingface_hub"):
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.propagate = True
    if processes <= 1:
        warnings.filterwarnings("ignore", message=SRUN_HINT)
    if verbose:  # the libraries' defaults, also after a quiet job of the same process
        datasets.enable_progress_bars()
        transformers.logging.enable_progress_bar()
        huggingface_hub.utils.enable_progress_bars()
        datasets.logging.set_verbosity_warning()
        transformers.logging.set_verbosity_warning()
        return
    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()  # "Loading weights", "Writing model shards" (the export)
    huggingface_hub.utils.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("WANDB_SILENT", "true")
    # Raised inside the libraries, not by anything a user of this project can change.
    for module in ("pytorch_lightning", "lightning_fabric", "torch", "transformers", "datasets", "wandb"):
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")


def announce_changes(cfg: DictConfig) -> None:
    """One line when the composed config (an experiment, a sweep preset) swaps
    the console's defaults without the command line asking: the logger (the
    default in conf/train.yaml) or the progress bar (conf/callbacks/default.yaml)."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    choices = hydra_cfg.runtime.choices
    asked = {override.split("=", 1)[0].lstrip("~+") for override in hydra_cfg.overrides.task}
    changes = []
    default_logger = next(entry["logger"] for entry in OmegaConf.load(CONF_DIR / "train.yaml").defaults
                          if isinstance(entry, DictConfig) and "logger" in entry)
    if choices.get("logger") not in (None, default_logger) and "logger" not in asked:
        changes.append(f"logger={choices.logger} instead of {default_logger} (logger={default_logger} to change it)")
    default_bar = OmegaConf.load(CONF_DIR / "callbacks" / "default.yaml").progress_bar._target_
    bar = cfg.get("callbacks", {}).get("progress_bar")
    if (bar is None or bar.get("_target_") != default_bar) and not any(key.startswith("callbacks") for key in asked):
        changes.append("no live progress bar (its output is meant to be read as a log file)")
    if changes:
        source = f"experiment={choices.experiment}" if choices.get("experiment") else "this config"
        log.info("%s: %s", source, "; ".join(changes))


def duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '1 h 05 min'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def headline(summary: RunSummary, where: str) -> str:
    """The line every run ends with: what ran, what it measured, and "not
    evaluated" (never a NaN) for what it did not."""
    m = summary.metrics
    beta = f"beta {summary.beta:.4g}" + (f", requested {summary.beta_requested:g}"
                                         if summary.beta_requested not in (None, summary.beta) else "")
    parts = [f"KL {m['eval/kl']:.3g} ± {m.get('eval/kl_stderr', float('nan')):.2g}" if "eval/kl" in m
             else "KL not evaluated"]
    if "eval/gold_reward" in m:
        policy, reference = m["eval/gold_reward"], m.get("eval/gold_reward_reference", float("nan"))
        parts.append(f"gold reward {policy:.3f} vs reference {reference:.3f} "
                     f"({'went up' if policy > reference else 'did not go up'}), win rate {m['eval/win_rate']:.3f}")
    else:
        parts.append("gold reward not evaluated (no gold reward for this data)")
    if "val/rewards/accuracies" in m:
        parts.append(f"val accuracy {m['val/rewards/accuracies']:.3f}, val loss {m['val/loss']:.4g}")
    else:
        parts.append("val metrics not evaluated (no validation step ran)")
    verb = f"{summary.evaluated} evaluated" if summary.evaluated else "trained"
    took = f" in {duration(summary.wall_time_s)}" if summary.wall_time_s is not None else ""
    return f"Done: {summary.loss} ({beta}) {verb}{took}: {'; '.join(parts)}. Written to {where}"


@contextmanager
def progress(description: str, total: int, unit: str, first_s: float = 5.0, every_s: float = 30.0):
    """Progress of a long loop; yields `advance(n=1)`. On a terminal a bar
    (count, elapsed, time left) that disappears when the loop ends; elsewhere
    (a log file, a sweep's output) a line with the rate and the time left,
    first after `first_s` seconds, then every `every_s`, so a log shows early
    how long the stage will take."""
    if rich.get_console().is_terminal:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                   TimeElapsedColumn(), TextColumn("•"), TimeRemainingColumn())
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
        return
    start = time.perf_counter()
    state = {"done": 0, "next": start + first_s}

    def advance(n: int = 1) -> None:
        state["done"] += n
        now, done = time.perf_counter(), state["done"]
        if now >= state["next"] and 0 < done < total:
            state["next"] = now + every_s
            rate = done / (now - start)
            log.info("%s: %d/%d %s in %s (%s %s/s), ~%s left", description, done, total, unit,
                     duration(now - start), f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}", unit,
                     duration((total - done) / rate))

    yield advance


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting optimizer steps out of
    trainer.max_steps over the whole run (not batches of an epoch, with an
    "Epoch 1/-2" when training is step-based), without the logger's version
    (`v_num`, a W&B run id that means nothing next to the metrics).

    Lightning's bar has no public setting for that, and only private methods
    to add and move its tasks. So this adds one task for the whole run with
    rich's public Progress.add_task, on the bar's public `progress`, and lets
    Lightning's own hook move it and update the metrics: that hook counts
    `batch_idx + 1`, so it is handed the step count instead."""

    def _by_steps(self, trainer) -> bool:
        return trainer.max_steps > 0

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # Lightning's documented way to hide it: override get_metrics
        return metrics

    def on_train_epoch_start(self, trainer, pl_module):
        if not self._by_steps(trainer):
            return super().on_train_epoch_start(trainer, pl_module)
        if self.progress is not None and self.train_progress_bar_id is None:  # one task, not one per epoch
            description = f"{'Training':{len(self.validation_description)}}"
            if self.theme.description:
                description = f"[{self.theme.description}]{description}"
            self.train_progress_bar_id = self.progress.add_task(description, total=trainer.max_steps,
                                                                completed=trainer.global_step)
        self.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self._by_steps(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.train_progress_bar_id is None:  # e.g. resumed mid-epoch
            self.on_train_epoch_start(trainer, pl_module)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, trainer.global_step - 1)
