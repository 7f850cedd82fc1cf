"""Where and how a model runs: the job's device, eval mode for a while, and
whether packed sequences stay apart in it."""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def device_for(accelerator: str) -> torch.device:
    """The device a job's models run on for `trainer.accelerator`: this
    process's GPU (its local rank's under DDP/SLURM) when one is asked for and
    present, else the CPU."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model` in eval mode (no dropout) inside the block, and back in the mode
    it was in after, however the block ends (a policy evaluated mid-training
    must not go on training without dropout)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def packing_support(model: torch.nn.Module) -> str | None:
    """How `model` keeps sequences packed end to end in one row apart
    (position_ids restarting at 0 for each): "rows" for sdpa/eager attention,
    whose transformers masks are then block-causal (checked: two short
    sequences packed give the logits they give alone), "one_row" for flash
    attention, whose varlen path takes position_ids of a single row (not
    checkable on a CPU), None if the check fails (the caller pads instead)."""
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    if implementation.startswith("flash_attention"):
        return "one_row"
    try:
        device = next(model.parameters()).device
        vocab = model.get_output_embeddings().weight.shape[0]
        generator = torch.Generator().manual_seed(0)
        first, second = (torch.randint(0, vocab, (1, n), generator=generator).to(device) for n in (5, 7))
        positions = torch.cat([torch.arange(5), torch.arange(7)])[None].to(device)
        with eval_mode(model):
            # use_cache=False: with a KV cache transformers ignores packed position_ids.
            packed = model(input_ids=torch.cat([first, second], 1), position_ids=positions,
                           use_cache=False).logits.float()[0]
            alone = torch.cat([model(input_ids=ids, use_cache=False).logits.float()[0] for ids in (first, second)])
    except Exception:  # no position_ids argument, no output embeddings, ...
        return None
    tolerance = 1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2  # looser for half precision
    return "rows" if (packed - alone).abs().max() <= tolerance * alone.abs().max().clamp(min=1) else None
