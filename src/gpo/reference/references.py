"""The reference policy pi_ref: one interface, chosen by conf/reference.

    reference.setup(policy, datamodule, device, tokens)  once, before training
    reference.logps(batch) -> (chosen, rejected)  log pi_ref of the batch's pairs
    reference.token_logps(batch) -> (sums, values)  the same per response token ([2 x pairs, longest])
    with reference.model(device) as model: ...     the initial policy as a model (sampling, KL)

  - `FrozenReference`: a frozen copy of the initial policy, run on every batch;
    with `sync` (TR-DPO, conf/reference/sync.yaml) the copy moves toward the
    policy during training;
  - `CachedReference`: log-probs of every pair computed once and stored
    (gpo.infra.cache), looked up by pair_id; per-token log-probs (for the axes
    that read tokens) are a second entry, computed once and shared by every
    such axis and hyperparameter; the model is built only if sampling needs it;
  - `AdapterReference`: a LoRA policy with its adapters disabled (no second copy);
  - `NoReference`: for reference-free losses: no log-probs; a model is built
    only for the sample evaluation (KL and win rate against the initial policy).
"""

import logging
from contextlib import contextmanager

import pyarrow.compute as pc
import torch
from peft import PeftModel

from gpo.data.tokenization import token_digest
from gpo.infra.cache import Outcome, digest
from gpo.infra.console import progress
from gpo.infra.errors import InputError, RunError
from gpo.model.logprobs import LogProbs
from gpo.model.runtime import eval_mode
from gpo.reference.initial import InitialPolicy

log = logging.getLogger(__name__)


class Sync:
    """TR-DPO (Gorbatovski et al. 2024, "Learn Your Reference Model for Real
    Good Alignment", arXiv 2404.09656; TRL `sync_ref_model`): every
    `every_n_steps` optimizer steps the reference moves toward the policy,
    pi_ref <- alpha * pi_theta + (1 - alpha) * pi_ref, parameter by parameter:
    alpha < 1 is the paper's soft update, alpha = 1 its hard update (TRL's
    ref_model_mixup_alpha = 0.6 and ref_model_sync_steps = 512 by default)."""

    def __init__(self, alpha: float = 0.6, every_n_steps: int = 32):
        if not 0.0 < alpha <= 1.0:
            raise InputError(f"reference.sync.alpha must lie in (0, 1], got {alpha}")
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise InputError(f"reference.sync.every_n_steps must be a positive integer, got {every_n_steps!r}")
        self.alpha, self.every_n_steps = float(alpha), every_n_steps

    @torch.no_grad()
    def mix(self, reference: torch.nn.Module, policy: torch.nn.Module) -> None:
        current = dict(policy.named_parameters())
        for name, parameter in reference.named_parameters():
            parameter.mul_(1.0 - self.alpha).add_(current[name].detach().to(parameter), alpha=self.alpha)


class Reference:
    provides_logps = True

    def __init__(self, initial: InitialPolicy, logprobs: LogProbs | None = None, sync: Sync | None = None):
        """`sync`: TR-DPO's updates (only a reference that runs a model on every batch can follow them)."""
        self.initial = initial
        self.logprobs = logprobs or LogProbs()  # how log-probs are computed (the policy's settings)
        self.sync = sync
        self._model: torch.nn.Module | None = None

    def check(self, run) -> None:
        """Raise InputError, before any compute, if this reference cannot serve
        the run (gpo.training.composition.Composition: the loss, whether the
        policy has LoRA adapters, the config choices in `run.names`)."""
        if run.loss.needs_reference and not self.provides_logps:
            raise InputError(f"loss={run.names.get('loss')} needs reference log-probs; reference=none gives none")
        if self.sync is not None and not isinstance(self, FrozenReference):
            raise InputError(f"reference.sync (TR-DPO) moves the reference during training; "
                             f"reference={run.names.get('reference')} cannot follow it (its log-probs are computed "
                             "once, or it is the policy itself): use reference=sync, a frozen copy that is updated")

    def setup(self, policy: torch.nn.Module, datamodule, device: torch.device, tokens: bool = False) -> Outcome | None:
        """`tokens`: per-token log-probs will be asked for (token_logps)."""
        return None

    def logps(self, batch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        raise NotImplementedError

    def token_logps(self, batch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(log pi_ref per sequence [2 x pairs], per response token [2 x pairs, longest]): rows as the batch's."""
        raise NotImplementedError

    def on_train_step(self, policy: torch.nn.Module, step: int) -> None:
        """Once `step` optimizer steps are done (before the next): TR-DPO's update when due."""

    def state_dict(self) -> dict:
        """What a checkpoint must keep (a synced reference's weights)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @contextmanager
    def model(self, device: torch.device):
        """The initial policy, built on first use and kept."""
        if self._model is None:
            self._model = self.initial.model()
        yield self._model.to(device)


class FrozenReference(Reference):
    """A frozen copy of the initial policy; with `sync`, a second copy that TR-DPO
    moves toward the policy, while `model()` (sampling, KL) stays the initial policy."""

    def setup(self, policy, datamodule, device, tokens=False):
        self._scorer = self.initial.model()
        if self.sync is None:
            self._model = self._scorer  # one copy serves both
        self._synced_at = 0

    @torch.no_grad()
    def logps(self, batch):
        return self.logprobs.pair_logps(self._scorer.to(batch["input_ids"].device), batch)

    @torch.no_grad()
    def token_logps(self, batch):
        tokens = self.logprobs.batch_tokens(self._scorer.to(batch["input_ids"].device), batch)
        return tokens.sums, tokens.values

    def on_train_step(self, policy, step):
        if self.sync is not None and step > 0 and step % self.sync.every_n_steps == 0 and step != self._synced_at:
            self.sync.mix(self._scorer, policy)
            self._synced_at = step

    def state_dict(self):
        return {} if self.sync is None else {"weights": self._scorer.state_dict(), "synced_at": self._synced_at}

    def load_state_dict(self, state):
        if state and self.sync is not None:
            self._scorer.load_state_dict(state["weights"])
            self._synced_at = state["synced_at"]


# Exactly what the reference sees of a pair (see PairCollator): the cache key's data part.
MODEL_INPUTS = ("prompt_length", "chosen_input_ids", "rejected_input_ids")


class CachedReference(Reference):
    def __init__(self, initial: InitialPolicy, batch_size: int | None = None, logits_budget_mb: int = 1024,
                 logprobs: LogProbs | None = None, sync: Sync | None = None):
        """`batch_size` pairs per forward pass when computing (default: as
        many as fit `logits_budget_mb` of float32 logits, at least the
        validation batch; inference keeps no activations for a backward pass)."""
        super().__init__(initial, logprobs, sync)
        self.batch_size, self.logits_budget_mb = batch_size, logits_budget_mb
        self.values: torch.Tensor | None = None  # [pairs, 2]: chosen, rejected; row = pair_id
        self.tokens: CachedTokens | None = None  # per-token log-probs, when asked for

    def setup(self, policy, datamodule, device, tokens=False):
        splits = [datamodule.tokenized[name] for name in ("train", "validation")]
        key = digest(self.initial.key, type(datamodule.tokenizer).__name__, len(datamodule.tokenizer),
                     [token_digest(split, MODEL_INPUTS) for split in splits])
        rows = sum(len(split) for split in splits)

        def computed(per_token: bool):  # with a model built for this only: none is kept through training
            model = self.initial.model().to(device)
            with progress("Reference log-probs", rows, "pairs") as advance:
                parts = [self._compute(model, split, datamodule, device, per_token, advance) for split in splits]
            values = torch.cat([part.values if per_token else part for part in parts])
            if not torch.isfinite(values).all():  # never cached: every later run would read it
                raise RunError(f"reference log-probs: {int((~torch.isfinite(values)).sum())} of {values.numel()} "
                               f"values are NaN or Inf, computed from {self.initial.source}; nothing was cached: "
                               "if that is a cache entry, it is damaged (delete it to rebuild it)")
            return parts

        if tokens:  # one entry per data set and initial policy, whatever the axis and its hyperparameters
            lengths = torch.cat([response_lengths(split) for split in splits])
            self.tokens, outcome = self.initial.cache.get_or_build(
                "reference_token_logps", key, lambda path: CachedTokens.read(path, lengths),
                lambda path: CachedTokens.concatenate(computed(per_token=True)).write(path),
                describe={"pairs": rows, "tokens": int(lengths.sum())})
        else:
            def read(directory):
                values = torch.load(directory / "logps.pt", map_location="cpu", weights_only=True)
                if values.shape != (rows, 2) or not torch.isfinite(values).all():
                    raise ValueError(f"holds {tuple(values.shape)} values for {rows} pairs, or non-finite ones")
                return values

            self.values, outcome = self.initial.cache.get_or_build(
                "reference_logps", key, read, lambda path: torch.save(torch.cat(computed(per_token=False)),
                                                                       path / "logps.pt"),
                describe={"pairs": rows})
        log.info("Reference log-probs%s: %s in %.1f s (%s)", " per token" if tokens else "",
                 "computed" if outcome.status == "built" else "loaded from cache", outcome.seconds, outcome.path)
        return outcome

    @torch.no_grad()
    def _compute(self, model, split, datamodule, device, per_token: bool = False, advance=lambda n: None):
        """A split's log-probs ([pairs, 2]), or per token (CachedTokens). Batches
        built as in training (padded or packed: the same values to float
        tolerance); no DataLoader, because creating one draws from the global
        RNG and would change the run's shuffling."""
        bytes_per_pair = 2 * datamodule.max_length * model.config.vocab_size * 4
        batch_size = self.batch_size or max(datamodule.eval_batch_size,
                                            min(512, self.logits_budget_mb * 2**20 // bytes_per_pair))
        collate, out = datamodule.collator(), []
        for rows in split.select_columns(list(MODEL_INPUTS)).iter(batch_size=batch_size):
            batch = collate([dict(zip(rows, values)) for values in zip(*rows.values())])
            batch = {k: v.to(device) for k, v in batch.items()}
            if per_token:
                tokens = self.logprobs.batch_tokens(model, batch)
                out.append(CachedTokens.from_batch(tokens.values.float().cpu(), tokens.mask.cpu()))
            else:
                chosen, rejected = self.logprobs.pair_logps(model, batch)
                out.append(torch.stack([chosen, rejected], dim=1).float().cpu())
            advance(len(rows["prompt_length"]))
        return CachedTokens.concatenate(out) if per_token else torch.cat(out)

    def logps(self, batch):
        values = self.values.to(batch["pair_id"].device)[batch["pair_id"]]
        return values[:, 0], values[:, 1]

    def token_logps(self, batch):
        values = self.tokens.lookup(batch["pair_id"], int(max(batch["chosen_length"].max(),
                                                                batch["rejected_length"].max())))
        values = values.to(batch["pair_id"].device)
        return values.sum(-1), values


def response_lengths(split) -> torch.Tensor:
    """[pairs, 2]: response tokens of chosen and rejected (what PairCollator's lengths count)."""
    table = split.select_columns(list(MODEL_INPUTS)).with_format("arrow")[:]
    prompt = table.column("prompt_length").to_numpy()
    return torch.stack([torch.as_tensor(pc.list_value_length(table.column(column)).to_numpy() - prompt,
                                        dtype=torch.long) for column in MODEL_INPUTS[1:]], dim=1)


class CachedTokens:
    """Per-token reference log-probs of every pair, stored flat (float32): pair
    0's chosen tokens, its rejected tokens, pair 1's chosen tokens, ...;
    `lengths` [pairs, 2] says how many each response has. No padding is
    stored: the size is 4 bytes per response token (docs/performance.md)."""

    def __init__(self, values: torch.Tensor, lengths: torch.Tensor):
        self.values, self.lengths = values, lengths
        self.starts = (torch.cumsum(lengths.flatten(), 0) - lengths.flatten()).view_as(lengths)

    @classmethod
    def from_batch(cls, values: torch.Tensor, mask: torch.Tensor) -> "CachedTokens":
        """From one batch's [2 x pairs, L] values and mask (chosen rows, then rejected)."""
        pairs = len(values) // 2
        interleave = torch.stack([torch.arange(pairs), torch.arange(pairs) + pairs], dim=1).flatten()
        return cls(values[interleave][mask[interleave]], mask.sum(-1).view(2, pairs).T.contiguous())

    @classmethod
    def concatenate(cls, parts: list["CachedTokens"]) -> "CachedTokens":
        return cls(torch.cat([p.values for p in parts]), torch.cat([p.lengths for p in parts]))

    def write(self, directory) -> None:
        torch.save({"values": self.values, "lengths": self.lengths}, directory / "token_logps.pt")

    @classmethod
    def read(cls, directory, lengths: torch.Tensor) -> "CachedTokens":
        """The entry, checked against the data's response lengths."""
        stored = torch.load(directory / "token_logps.pt", map_location="cpu", weights_only=True)
        values, stored_lengths = stored["values"], stored["lengths"]
        if not torch.equal(stored_lengths, lengths) or len(values) != int(lengths.sum()) or \
                not torch.isfinite(values).all():
            raise ValueError("its response lengths differ from the data's, or it holds non-finite values")
        return cls(values, lengths)

    def lookup(self, pair_ids: torch.Tensor, width: int) -> torch.Tensor:
        """[2 x pairs, width]: the pairs' chosen rows, then their rejected rows, 0 past each response's end."""
        ids = pair_ids.cpu()
        starts = torch.cat([self.starts[ids, 0], self.starts[ids, 1]])
        lengths = torch.cat([self.lengths[ids, 0], self.lengths[ids, 1]])
        columns = torch.arange(width)[None, :]
        inside = columns < lengths[:, None]
        index = torch.where(inside, starts[:, None] + columns, 0)
        return torch.where(inside, self.values[index], 0.0)


class AdapterReference(Reference):
    NEEDS_LORA = ("reference=adapters needs a policy with LoRA adapters (model/lora=default); "
                  "use reference=cached or reference=frozen otherwise")

    def check(self, run):
        super().check(run)
        if not run.lora:
            raise InputError(self.NEEDS_LORA)

    def setup(self, policy, datamodule, device, tokens=False):
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

    @torch.no_grad()
    def token_logps(self, batch):
        with self.model(batch["input_ids"].device) as model:
            tokens = self.logprobs.batch_tokens(model, batch)
        return tokens.sums, tokens.values


class NoReference(Reference):
    provides_logps = False

    def logps(self, batch):
        return None, None

    def token_logps(self, batch):
        return None, None
