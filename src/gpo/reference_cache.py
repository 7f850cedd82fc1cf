"""Shared reference log-prob cache.

log pi_ref(y|x) of every training/validation response depends only on the
reference model (the policy config and its SFT stage), the tokenizer and the
tokenized pairs, not on the loss, beta, learning rate or seed. So one job of a
sweep computes them, stores them with `datasets`' save_to_disk under
<cache_dir>/reference/<key>, and every later job (of this sweep and of later
ones) loads them as the columns `reference_chosen_logps` /
`reference_rejected_logps`; PairCollator passes them into the batch, and
GPOModule then never runs a reference model during training.

Concurrent jobs may both compute; each writes a temp directory and renames it
into place atomically, so readers never see a partial cache; a job that finds
the target already there keeps the existing one and discards its own.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetDict, concatenate_datasets
from omegaconf import DictConfig

from gpo.config import fingerprint
from gpo.data import PairCollator
from gpo.errors import DataError
from gpo.logprobs import pair_logps

log = logging.getLogger(__name__)

COLUMNS = ("reference_chosen_logps", "reference_rejected_logps")
# Exactly what the reference sees of a pair (see PairCollator).
MODEL_INPUTS = ("prompt_length", "chosen_input_ids", "rejected_input_ids")
LOGITS_BUDGET = 2**30  # bytes of float32 logits per forward pass when computing the cache
MAX_BATCH = 512
DIGEST_ROWS = 100_000  # rows hashed at a time: bounded memory on large datasets


def token_digest(dataset: Dataset) -> str:
    """sha256 of the model inputs of every pair, in order. Part of the cache key
    because the config alone does not pin the data: a file edited in place has
    the same path. Vectorised over Arrow buffers, so cheap next to a forward pass."""
    digest = hashlib.sha256()
    for table in dataset.select_columns(list(MODEL_INPUTS)).with_format("arrow").iter(batch_size=DIGEST_ROWS):
        for name in MODEL_INPUTS:
            column = table.column(name).combine_chunks()
            parts = [pc.list_value_length(column), pc.list_flatten(column)] if name.endswith("_ids") else [column]
            for part in parts:
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(part.to_numpy(zero_copy_only=False), dtype=np.int64).tobytes())
    return digest.hexdigest()


def cache_key(cfg: DictConfig, tokenizer, tokenized: dict[str, Dataset]) -> str:
    """Everything the cached log-probs depend on: the reference model (policy
    config and SFT settings; the SFT data comes from the data source, truncated
    at max_length), the tokenizer, and the tokenized pairs themselves."""
    return fingerprint(
        cfg.model.policy, cfg.model.sft, cfg.data.source, cfg.data.max_length, cfg.data.max_prompt_length,
        type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer),
        {split: token_digest(dataset) for split, dataset in sorted(tokenized.items())},
    )


@torch.no_grad()
def compute_reference_logps(model: torch.nn.Module, dataset: Dataset, pad_token_id: int, batch_size: int,
                            device: torch.device) -> Dataset:
    """The two reference columns for `dataset`, in its row order. Batches are
    built by PairCollator as in training; no DataLoader, because creating one
    draws from the global RNG and would change the training run's shuffling."""
    was_training, original_device = model.training, next(model.parameters()).device
    model.eval().to(device)
    collate = PairCollator(pad_token_id)
    chosen, rejected = [], []
    try:
        for rows in dataset.select_columns(list(MODEL_INPUTS)).iter(batch_size=batch_size):
            batch = collate([dict(zip(rows, values)) for values in zip(*rows.values())])
            c, r = pair_logps(model, {k: v.to(device) for k, v in batch.items()})
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
    finally:
        model.train(was_training).to(original_device)
    # float32 as computed on the fly, so the cached values are the same numbers.
    values = [torch.cat(part).numpy() if part else np.zeros(0, np.float32) for part in (chosen, rejected)]
    return Dataset.from_dict(dict(zip(COLUMNS, values)))


def _publish(cache: DatasetDict, path: str, meta: dict) -> None:
    """Write next to `path`, then rename into place (atomic on one filesystem)."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        cache.save_to_disk(tmp)
        with open(os.path.join(tmp, "gpo_reference.json"), "w") as f:
            json.dump(meta, f, indent=2)
        os.rename(tmp, path)
    except OSError:
        if not os.path.isdir(path):  # a real write error, not a lost race
            raise
        log.info("Reference cache %s was written by another job meanwhile; keeping that one", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load(path: str, tokenized: dict[str, Dataset]) -> DatasetDict:
    try:
        cache = DatasetDict.load_from_disk(path)
    except Exception as error:  # datasets raises several types for a damaged directory
        raise DataError(f"reference cache {path} cannot be read ({error}); delete it to recompute") from error
    for split, dataset in tokenized.items():
        rows = cache[split].num_rows if split in cache else None
        if rows != dataset.num_rows:
            raise DataError(f"reference cache {path}: split '{split}' has {rows} rows, the data has "
                            f"{dataset.num_rows}; delete the directory to recompute")
    return cache


def cache_batch_size(model: torch.nn.Module, datamodule) -> int:
    """Pairs per forward pass: at least the validation batch (validation runs
    the same forward), more while the batch's float32 logits fit LOGITS_BUDGET,
    since inference keeps no activations for a backward pass. Small models on a
    CPU are dominated by per-batch overhead, so this is several times faster."""
    bytes_per_pair = 2 * datamodule.max_length * model.config.vocab_size * 4
    return max(datamodule.eval_batch_size, min(MAX_BATCH, LOGITS_BUDGET // bytes_per_pair))


def attach_reference_logps(datamodule, reference: torch.nn.Module, cache_dir: str, key: str,
                           device: torch.device) -> dict:
    """Add the cached reference columns to `datamodule.tokenized`, computing
    and storing them first if no job has. `reference` is only run on a miss.
    Returns what happened, for the run summary."""
    path = os.path.join(os.path.expanduser(cache_dir), "reference", key)
    start = time.perf_counter()
    status = "loaded"
    if not os.path.isdir(path):
        log.info("Computing reference log-probs for %s; caching them at %s",
                 {s: d.num_rows for s, d in datamodule.tokenized.items()}, path)
        status = "computed"
        batch_size = cache_batch_size(reference, datamodule)
        computed = DatasetDict({
            split: compute_reference_logps(reference, dataset, datamodule.tokenizer.pad_token_id, batch_size, device)
            for split, dataset in datamodule.tokenized.items()
        })
        _publish(computed, path, {"key": key, "rows": {s: d.num_rows for s, d in computed.items()}})
    else:
        log.info("Loading cached reference log-probs from %s", path)
    cache = _load(path, datamodule.tokenized)
    datamodule.tokenized = {
        split: concatenate_datasets([dataset.remove_columns([c for c in COLUMNS if c in dataset.column_names]),
                                     cache[split]], axis=1)
        for split, dataset in datamodule.tokenized.items()
    }
    return {"status": status, "seconds": time.perf_counter() - start, "path": path}



def device_for(accelerator: str) -> torch.device:
    """Where the trainer will run (one device per job), to compute the cache there."""
    return torch.device("cuda" if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu")
