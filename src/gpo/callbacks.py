"""Lightning callbacks specific to preference training."""

import logging

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ThroughputMonitor
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.strategies import FSDPStrategy

from gpo.evaluation import evaluate_samples

log = logging.getLogger(__name__)


class PairThroughput(ThroughputMonitor):
    """Lightning's throughput monitor, counting preference pairs and (non-pad) tokens."""

    flops_per_batch = None  # unknown for arbitrary HF models; silences the per-run warning

    def __init__(self, window_size: int = 20):
        super().__init__(
            batch_size_fn=lambda batch: batch["input_ids"].shape[0] // 2,
            length_fn=lambda batch: int(batch["attention_mask"].sum()),
            window_size=window_size,
            separator="/",
        )


class SampleEvaluation(pl.Callback):
    """At the end of training (and every `every_n_steps` if set), sample from
    policy and reference on held-out prompts (datamodule.evaluation_prompts); log KL, gold reward and win rate
    (when the data has a gold reward) and a table of samples."""

    def __init__(self, num_prompts: int = 128, max_new_tokens: int = 64, batch_size: int = 64, every_n_steps: int | None = None):
        self.num_prompts, self.max_new_tokens = num_prompts, max_new_tokens
        self.batch_size, self.every_n_steps = batch_size, every_n_steps

    def evaluate(self, trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, float]:
        if isinstance(trainer.strategy, FSDPStrategy):  # rank-0-only generation with sharded weights would hang
            log.warning("Sample evaluation skipped under FSDP; evaluate the saved checkpoint on one device instead")
            return {}
        datamodule = trainer.datamodule
        prompts = datamodule.evaluation_prompts(self.num_prompts)
        metrics, rows = evaluate_samples(
            module.policy, module.reference_model, datamodule.tokenizer, prompts,
            max_prompt_length=datamodule.max_prompt_length, max_new_tokens=self.max_new_tokens,
            gold_reward=datamodule.gold_reward, batch_size=self.batch_size,
        )
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if isinstance(logger, WandbLogger):
                columns = list(rows[0])
                logger.log_table("eval/samples", columns=columns, data=[[row[c] for c in columns] for row in rows])
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})  # into the run summary
        log.info("Sample evaluation at step %d: %s", trainer.global_step, {k: round(v, 4) for k, v in metrics.items()})
        return metrics

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and trainer.is_global_zero:
            self.evaluate(trainer, module)

    def on_train_end(self, trainer, module):
        if trainer.is_global_zero:
            self.evaluate(trainer, module)
