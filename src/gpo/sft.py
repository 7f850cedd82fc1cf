"""A short supervised fine-tuning stage that turns a random-weight model into a
sensible reference policy for the task. Its result is cached on disk, keyed by
a fingerprint of everything it depends on, so every run of a sweep (and later
sweeps) share one reference instead of each training its own."""

import logging
import os
import tempfile

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from gpo.data import pad_sequences
from gpo.logprobs import sequence_logps

log = logging.getLogger(__name__)


class SFTModule(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, lr: float):
        super().__init__()
        self.model, self.lr = model, lr

    def training_step(self, batch, batch_idx):
        logps = sequence_logps(self.model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        return -logps.sum() / batch["response_mask"][:, 1:].sum()  # mean NLL per response token

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr)


def _tokenize(row, tokenizer, max_length):
    prompt = tokenizer(row["prompt"])["input_ids"]
    response = tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": (prompt + response)[:max_length], "prompt_length": len(prompt)}


def supervised_finetune(model, tokenizer, demonstrations, steps, lr, batch_size, max_length, seed, trainer_kwargs):
    tokenized = demonstrations.map(
        _tokenize, fn_kwargs=dict(tokenizer=tokenizer, max_length=max_length), remove_columns=demonstrations.column_names
    )
    loader = DataLoader(
        tokenized,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=lambda rows: pad_sequences(
            [r["input_ids"] for r in rows], [r["prompt_length"] for r in rows], tokenizer.pad_token_id
        ),
    )
    trainer = pl.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_model_summary=False, **trainer_kwargs
    )
    trainer.fit(SFTModule(model, lr), loader)
    return model


def load_or_finetune(model, tokenizer, demonstrations, cache_dir: str, fingerprint: str, **sft_kwargs):
    """Load the cached SFT weights for `fingerprint`, or train and cache them.

    Concurrent jobs may both train; each writes a temp file and renames it into
    place atomically, so readers never see a partial file."""
    path = os.path.join(os.path.expanduser(cache_dir), "sft", f"{fingerprint}.pt")
    if os.path.exists(path):
        log.info("Loading cached SFT reference %s", path)
        model.load_state_dict(torch.load(path, map_location="cpu"))
        return model
    log.info("Training the SFT reference (%s steps); it will be cached at %s", sft_kwargs["steps"], path)
    supervised_finetune(model, tokenizer, demonstrations, **sft_kwargs)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".tmp", delete=False) as tmp:
        torch.save(model.state_dict(), tmp)
    os.replace(tmp.name, path)
    return model
