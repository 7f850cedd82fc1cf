"""The reference policy pi_ref: one interface, chosen by conf/reference.

    reference.setup(policy, datamodule, device)  once, before training
    reference.logps(batch) -> (chosen, rejected)  log pi_ref of the batch's pairs
    with reference.model(device) as model: ...     the reference as a model (sampling)

  - `FrozenReference`: a frozen copy of the initial policy, run on every batch;
  - `CachedReference`: log-probs of every pair computed once and stored
    (gpo.infra.cache), looked up by pair_id; the model is built only if sampling needs it;
  - `AdapterReference`: a LoRA policy with its adapters disabled (no second copy);
  - `NoReference`: for reference-free losses: no log-probs; a model is built
    only for the sample evaluation (KL and win rate against the initial policy).
"""

import logging
from contextlib import contextmanager

import torch
from peft import PeftModel

from gpo.data.tokenization import token_digest
from gpo.infra.cache import Outcome, digest
from gpo.infra.console import progress
from gpo.infra.errors import InputError
from gpo.model.logprobs import LogProbs
from gpo.model.runtime import eval_mode
from gpo.reference.initial import InitialPolicy

log = logging.getLogger(__name__)


class Reference:
    provides_logps = True

    def __init__(self, initial: InitialPolicy, logprobs: LogProbs | None = None):
        self.initial = initial
        self.logprobs = logprobs or LogProbs()  # how log-probs are computed (the policy's settings)
        self._model: torch.nn.Module | None = None

    def check(self, loss: str, needs_logps: bool, lora: bool) -> None:
        """Raise InputError, before any compute, if this reference cannot serve
        the configured loss (`loss`: its config name; `needs_logps`: it needs
        log pi_ref) or policy (`lora`: it has LoRA adapters)."""
        if needs_logps and not self.provides_logps:
            raise InputError(f"loss={loss} needs reference log-probs; reference=none gives none")

    def setup(self, policy: torch.nn.Module, datamodule, device: torch.device) -> Outcome | None:
        return None

    def logps(self, batch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        raise NotImplementedError

    @contextmanager
    def model(self, device: torch.device):
        """The initial policy, built on first use and kept."""
        if self._model is None:
            self._model = self.initial.model()
        yield self._model.to(device)


class FrozenReference(Reference):
    def setup(self, policy, datamodule, device):
        self._model = self.initial.model()

    @torch.no_grad()
    def logps(self, batch):
        with self.model(batch["input_ids"].device) as model:
            return self.logprobs.pair_logps(model, batch)


# Exactly what the reference sees of a pair (see PairCollator): the cache key's data part.
MODEL_INPUTS = ("prompt_length", "chosen_input_ids", "rejected_input_ids")


class CachedReference(Reference):
    def __init__(self, initial: InitialPolicy, batch_size: int | None = None, logits_budget_mb: int = 1024,
                 logprobs: LogProbs | None = None):
        """`batch_size` pairs per forward pass when computing (default: as
        many as fit `logits_budget_mb` of float32 logits, at least the
        validation batch; inference keeps no activations for a backward pass)."""
        super().__init__(initial, logprobs)
        self.batch_size, self.logits_budget_mb = batch_size, logits_budget_mb
        self.values: torch.Tensor | None = None  # [pairs, 2]: chosen, rejected; row = pair_id

    def setup(self, policy, datamodule, device):
        splits = [datamodule.tokenized[name] for name in ("train", "validation")]
        key = digest(self.initial.key, type(datamodule.tokenizer).__name__, len(datamodule.tokenizer),
                     [token_digest(split, MODEL_INPUTS) for split in splits])
        rows = sum(len(split) for split in splits)

        def write(directory):  # a model only for this: none is kept through training
            model = self.initial.model().to(device)
            with progress("Reference log-probs", rows, "pairs") as advance:
                values = torch.cat([self._compute(model, split, datamodule, device, advance) for split in splits])
            torch.save(values, directory / "logps.pt")

        def read(directory):
            values = torch.load(directory / "logps.pt", map_location="cpu", weights_only=True)
            if values.shape != (rows, 2) or not torch.isfinite(values).all():
                raise ValueError(f"holds {tuple(values.shape)} values for {rows} pairs, or non-finite ones")
            return values

        self.values, outcome = self.initial.cache.get_or_build("reference_logps", key, read, write,
                                                               describe={"pairs": rows})
        log.info("Reference log-probs: %s in %.1f s (%s)", "computed" if outcome.status == "built" else
                 "loaded from cache", outcome.seconds, outcome.path)
        return outcome

    @torch.no_grad()
    def _compute(self, model, split, datamodule, device, advance=lambda n: None) -> torch.Tensor:
        """Batches built as in training (padded or packed: the same values to
        float tolerance); no DataLoader, because creating one draws from the
        global RNG and would change the run's shuffling."""
        bytes_per_pair = 2 * datamodule.max_length * model.config.vocab_size * 4
        batch_size = self.batch_size or max(datamodule.eval_batch_size,
                                            min(512, self.logits_budget_mb * 2**20 // bytes_per_pair))
        collate, out = datamodule.collator(), []
        for rows in split.select_columns(list(MODEL_INPUTS)).iter(batch_size=batch_size):
            batch = collate([dict(zip(rows, values)) for values in zip(*rows.values())])
            chosen, rejected = self.logprobs.pair_logps(model, {k: v.to(device) for k, v in batch.items()})
            out.append(torch.stack([chosen, rejected], dim=1).float().cpu())
            advance(len(chosen))
        return torch.cat(out)

    def logps(self, batch):
        values = self.values.to(batch["pair_id"].device)[batch["pair_id"]]
        return values[:, 0], values[:, 1]


class AdapterReference(Reference):
    NEEDS_LORA = ("reference=adapters needs a policy with LoRA adapters (model/lora=default); "
                  "use reference=cached or reference=frozen otherwise")

    def check(self, loss, needs_logps, lora):
        super().check(loss, needs_logps, lora)
        if not lora:
            raise InputError(self.NEEDS_LORA)

    def setup(self, policy, datamodule, device):
        if not isinstance(policy, PeftModel):
            raise InputError(self.NEEDS_LORA)
        self.policy = policy

    @contextmanager
    def model(self, device):
        """The policy with adapters off and in eval mode (no dropout), as a
        frozen copy would be; training mode is restored after."""
        with eval_mode(self.policy), self.policy.disable_adapter():
            yield self.policy

    @torch.no_grad()
    def logps(self, batch):
        with self.model(batch["input_ids"].device) as model:
            return self.logprobs.pair_logps(model, batch)


class NoReference(Reference):
    provides_logps = False

    def logps(self, batch):
        return None, None
