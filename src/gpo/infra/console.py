"""A quiet console: one line per stage from us, a progress bar counting
steps; library chatter off unless `verbose=true` (datasets and transformers
progress bars, Lightning's device and tip lines, W&B's banners, deprecation
warnings from inside the libraries)."""

import logging
import os
import warnings

import datasets
import transformers
from pytorch_lightning.callbacks import RichProgressBar

CHATTY_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                  "lightning_fabric.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                  "pytorch_lightning.accelerators.cuda", "lightning.pytorch.accelerators.cuda")


def configure(verbose: bool = False) -> None:
    if verbose:
        datasets.enable_progress_bars()
        transformers.logging.enable_progress_bar()
        return
    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()  # "Loading weights", "Writing model shards" (the export)
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


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting optimizer steps out of
    trainer.max_steps over the whole run (not batches of an epoch, with an
    "Epoch 1/-2" when training is step-based).

    Lightning's bar has no public setting for that, and only private methods
    to add and move its tasks. So this adds one task for the whole run with
    rich's public Progress.add_task, on the bar's public `progress`, and lets
    Lightning's own hook move it and update the metrics: that hook counts
    `batch_idx + 1`, so it is handed the step count instead."""

    def _by_steps(self, trainer) -> bool:
        return trainer.max_steps > 0

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
