"""The initial policy: the configured model after its SFT stage.

It is both where preference training starts and, frozen, the reference. The
SFT weights are a disk-cache entry keyed by the model config, the SFT
settings and the token ids of the demonstrations, so every run of a sweep
(and of later sweeps) shares one SFT stage; a reference built later in the run
(for sampling, or as a frozen copy) loads the same weights.
"""

import logging
from collections.abc import Callable

import torch

from gpo.data.tokenization import token_digest
from gpo.infra.cache import DiskCache, Outcome, digest
from gpo.infra.console import progress
from gpo.infra.errors import RunError
from gpo.model.logprobs import LogProbs
from gpo.reference.sft import supervised_finetune

log = logging.getLogger(__name__)

WEIGHTS = "model.pt"


class InitialPolicy:
    def __init__(self, build: Callable[[], tuple[torch.nn.Module, object]], model_config, sft: dict,
                 datamodule, cache: DiskCache, accelerator: str = "cpu", logprobs: LogProbs | None = None):
        """`build()` makes a fresh (model, tokenizer) from `model_config` (the
        conf/model policy node, the model's identity in cache keys); `sft`:
        steps (0: none), lr, batch_size, seed; `logprobs`: how the SFT stage
        computes log-probs (the run's settings; chunked and full agree to
        float tolerance, so they are not part of the cache key, as for the
        reference log-probs)."""
        self.build, self.sft, self.datamodule, self.cache = build, dict(sft), datamodule, cache
        self.accelerator, self.logprobs = accelerator, logprobs or LogProbs()
        self.model_key = digest(model_config)
        self._sft_key = None

    @property
    def key(self) -> str:
        """Identity of the initial policy's weights, for caches derived from it."""
        return self.model_key if self.sft["steps"] <= 0 else self._sft_entry_key()

    def _sft_entry_key(self) -> str:
        if self._sft_key is None:
            demonstrations = self.datamodule.demonstrations()
            self._sft_key = digest(self.model_key, self.sft,
                                   token_digest(demonstrations, ("prompt_length", "input_ids")))
        return self._sft_key

    def prepare(self, model: torch.nn.Module) -> Outcome | None:
        """Give `model` (just built) the SFT weights: trained once, then loaded."""
        if self.sft["steps"] <= 0:
            return None

        def write(directory):
            demonstrations = self.datamodule.demonstrations()
            log.info("SFT stage: %d steps on %d demonstrations, to make the initial policy a sensible reference; "
                     "once per model and data, cached after (in %s). model.sft.steps=0 skips it",
                     self.sft["steps"], len(demonstrations), self.cache.root)
            with progress("SFT stage", self.sft["steps"], "steps") as advance:
                supervised_finetune(model, demonstrations, self.datamodule.tokenizer.pad_token_id,
                                    accelerator=self.accelerator, logprobs=self.logprobs, on_step=advance, **self.sft)
            broken = non_finite(model.state_dict())
            if broken:  # never cached: every later run would start from it
                raise RunError(f"SFT stage: {len(broken)} weight tensor(s) became NaN or Inf (e.g. {broken[0]}) in "
                               f"{self.sft['steps']} steps at model.sft.lr={self.sft['lr']}; nothing was cached: "
                               "lower model.sft.lr")
            torch.save(model.state_dict(), directory / WEIGHTS)

        _, outcome = self.cache.get_or_build("sft", self._sft_entry_key(), lambda path: self._load(model, path), write,
                                             describe={"sft": self.sft})
        log.info("SFT reference: %s in %.1f s (%s)", "trained" if outcome.status == "built" else "loaded from cache",
                 outcome.seconds, outcome.path)
        return outcome

    @staticmethod
    def _load(model: torch.nn.Module, path) -> None:
        state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
        broken = non_finite(state)
        if broken:  # a cache read that raises is a damaged entry: rebuilt
            raise ValueError(f"{len(broken)} weight tensor(s) hold NaN or Inf (e.g. {broken[0]})")
        model.load_state_dict(state)

    @property
    def source(self) -> str:
        """Where the initial policy's weights come from, for messages about what was built from them."""
        if self.sft["steps"] > 0:
            return f"the SFT weights in {self.cache.path('sft', self._sft_entry_key())}"
        return "the model as configured (model.policy; no SFT stage)"

    def model(self) -> torch.nn.Module:
        """A new copy of the initial policy, frozen: eval mode, no gradients."""
        model, _ = self.build()
        if self.sft["steps"] > 0:
            self._load(model, self.cache.path("sft", self._sft_entry_key()))
        return model.eval().requires_grad_(False)


def non_finite(state: dict) -> list[str]:
    """The names of a state dict's floating-point tensors that hold NaN or Inf."""
    return [name for name, value in state.items()
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]
