"""A short supervised fine-tuning stage that turns a random-weight model into
a sensible reference policy for the task (model.sft.steps > 0). It trains on
the data module's demonstrations, encoded exactly as the preference pairs are."""

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from gpo.data.tokenization import pad_sequences
from gpo.model.logprobs import LogProbs


class SFTModule(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, lr: float, logprobs: LogProbs):
        super().__init__()
        self.model, self.lr, self.logprobs = model, lr, logprobs

    def training_step(self, batch, batch_idx):
        logps = self.logprobs.sequence_logps(self.model, batch["input_ids"], batch["attention_mask"],
                                             batch["response_mask"])
        return -logps.sum() / batch["response_mask"][:, 1:].sum()  # mean NLL per response token

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr)


class _EveryStep(pl.Callback):
    def __init__(self, on_step: Callable[[], None]):
        self.on_step = on_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.on_step()


def supervised_finetune(model: torch.nn.Module, demonstrations: Dataset, pad_token_id: int, steps: int, lr: float,
                        batch_size: int, seed: int, accelerator: str = "cpu",
                        logprobs: LogProbs | None = None, on_step: Callable[[], None] | None = None) -> torch.nn.Module:
    """Train `model` in place for `steps` steps on tokenized demonstrations
    (input_ids, prompt_length), the loss on response tokens only, its
    log-probs computed as `logprobs` says (the run's settings); `on_step()`
    after every step (progress)."""
    loader = DataLoader(
        demonstrations.with_format(None),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=lambda rows: pad_sequences([r["input_ids"] for r in rows], [r["prompt_length"] for r in rows],
                                              pad_token_id),
    )
    trainer = pl.Trainer(max_steps=steps, accelerator=accelerator, devices=1, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                         callbacks=[_EveryStep(on_step)] if on_step else None)
    trainer.fit(SFTModule(model, lr, logprobs or LogProbs()), loader)
    return model
