"""The reference's samples for the win rate: drawn once, kept on disk.

The reference does not train, so its samples on a set of prompts depend only
on its weights (the initial policy), the prompts, the generation settings and
the RNG seed they are drawn with. They get an RNG stream of their own (seeded
by the evaluation's seed, not by the step), so every evaluation of a run
compares the policy with the same reference samples, and every run of a sweep
that shares the initial policy, prompts and seed (all families and betas of
the over-optimisation testbed) draws them once: a disk-cache entry
(gpo.cache) beside the SFT weights. Cached or drawn, they are the same
samples, so the cache changes no number.
"""

import json
import logging

import torch

from gpo.cache import digest
from gpo.errors import InputError
from gpo.evaluation.sampling import sample

log = logging.getLogger(__name__)

KIND = "reference_samples"


def stream_seed(seed: int) -> int:
    """The reference samples' seed: apart from the policy's (seed, step) streams."""
    return int(digest("reference samples", seed), 16) % 2**63


def reference_samples(reference, prompt_ids: list[list[int]], max_new_tokens: int, pad_token_id: int,
                      eos_token_id: int, batch_size: int, seed: int, device: torch.device) -> list[list[int]]:
    """One sample of `reference` (a gpo.reference.Reference) per prompt, from
    the disk cache or drawn (and stored) in their own RNG stream."""
    settings = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                    batch_size=batch_size)

    def draw() -> list[list[int]]:
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), reference.model(device) as model:
            torch.manual_seed(stream_seed(seed))
            return sample(model, prompt_ids, **settings)[0]

    def write(directory):
        (directory / "samples.json").write_text(json.dumps(draw()))

    def read(directory) -> list[list[int]]:
        samples = json.loads((directory / "samples.json").read_text())
        if len(samples) != len(prompt_ids) or not all(isinstance(s, list) and len(s) <= max_new_tokens
                                                      for s in samples):
            raise ValueError(f"holds {len(samples)} samples for {len(prompt_ids)} prompts, or malformed ones")
        return samples

    initial = reference.initial
    key = digest(KIND, initial.key, device.type, prompt_ids, settings, seed)
    try:
        samples, outcome = initial.cache.get_or_build(KIND, key, read, write,
                                                      describe={"prompts": len(prompt_ids), "seed": seed, **settings})
    except InputError as error:  # an unwritable cache: the same samples, drawn for this run only
        log.warning("Reference samples not cached (%s); drawing them for this run", error)
        return draw()
    log.info("Reference samples for %d prompts: %s in %.1f s", len(prompt_ids),
             "drawn" if outcome.status == "built" else "loaded from cache", outcome.seconds)
    return samples
