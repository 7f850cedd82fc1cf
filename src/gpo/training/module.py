"""The training module: a policy, a reference, a preference loss and the axes
beside it (gpo.losses.axes).

One step: log-probs of chosen and rejected under the policy (one forward
pass) and the reference, as the loss's inputs (`PairLogps`, or `ExampleLogps`
for unpaired examples), per token where an axis asks; then

    logps = rho(logps) -> margin -> labels -> weighting
    beta, logps = beta_schedule(beta, logps, progress)   (progress: a callable, the share of training done)
    loss = aggregate(loss_fn, logps, beta)

with the defaults (rho=sum, margin=none, labels=hard, weighting=none,
beta_schedule=constant, aggregate=mean) the mean of loss_fn(logps, beta). The
module never looks at which loss or which option it holds.
"""

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import grad_norm

from gpo.infra.errors import RunError
from gpo.losses import PreferenceLoss, TokenLogps
from gpo.losses.aggregate import Aggregate, Mean
from gpo.losses.axes import Axis, HardLabels, NoMargin, NoWeighting
from gpo.losses.rho import Rho, Sum
from gpo.losses.schedules import BetaSchedule, Constant
from gpo.model.logprobs import LogProbs
from gpo.reference import Reference
from gpo.training.checkpoints import restore_rng_state, rng_state


class NonFiniteLossError(RunError, FloatingPointError):
    pass


class GPOModule(pl.LightningModule):
    def __init__(
        self,
        policy: torch.nn.Module,
        reference: Reference,
        loss_fn: PreferenceLoss,
        beta: float,
        optimizer: Callable,
        scheduler: Callable | None = None,
        logprobs: LogProbs | None = None,
        rho: Rho | None = None,
        margin: Axis | None = None,
        labels: Axis | None = None,
        weighting: Axis | None = None,
        beta_schedule: BetaSchedule | None = None,
        aggregate: Aggregate | None = None,
    ):
        super().__init__()
        self.policy = policy
        self.loss_fn = loss_fn  # a submodule: state such as BCO's running reward shift is checkpointed
        # Not a torch module: its model, if any, is frozen, outside the optimizer and the checkpoints
        # (a TR-DPO reference's moving weights are the exception: on_save_checkpoint).
        self.reference = reference
        self.beta = beta
        # The axes (conf groups of the same names); submodules, so their state is checkpointed too.
        self.rho, self.margin, self.labels = rho or Sum(), margin or NoMargin(), labels or HardLabels()
        self.weighting, self.beta_schedule = weighting or NoWeighting(), beta_schedule or Constant()
        self.aggregate = aggregate or Mean()
        axes = (self.rho, self.margin, self.labels, self.weighting, self.beta_schedule, self.aggregate)
        self.needs = frozenset().union(*(axis.needs for axis in axes))  # what the step computes beyond sums
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.resumed_from_step: int | None = None  # the checkpoint's step, when the run was resumed
        self.logprobs = logprobs or LogProbs()

    flops_per_batch = None  # unknown for an arbitrary model; tells ThroughputMonitor not to ask

    def pair_logps(self, batch):
        """The loss's inputs for `batch`: summed log-probs of policy and reference
        (and per-token ones where an axis needs them)."""
        if "policy_tokens" not in self.needs:  # the fast path: sums only
            policy = self.logprobs.pair_logps(self.policy, batch)
            return self.loss_fn.inputs.from_batch(policy, self.reference.logps(batch), batch)
        response = self.logprobs.batch_tokens(self.policy, batch, square_norm="policy_square_norm" in self.needs)
        reference_values = None
        if "reference_tokens" in self.needs:
            reference_sums, reference_values = self.reference.token_logps(batch)
            reference = reference_sums.chunk(2)
        else:
            reference = self.reference.logps(batch)
        tokens = TokenLogps(response.values, reference_values, response.mask, response.log_sum_sq)
        return self.loss_fn.inputs.from_batch(response.sums.chunk(2), reference, batch, tokens)

    def progress(self) -> float:
        """The share of training done (beta schedules)."""
        trainer = self._trainer
        total = trainer.estimated_stepping_batches if trainer is not None else 0
        return self.global_step / total if total and total != float("inf") else 0.0

    def _logs_this_step(self) -> bool:
        """Whether this training step's metrics reach the loggers or are the
        run's last (the summary's final train/ values). Logging on the other
        steps only costs time: each self.log call walks Lightning's result
        collection, about a millisecond per step for our dozen metrics.

        Lightning sends a step's metrics to the loggers when the step's number
        (1-based) is a multiple of trainer.log_every_n_steps (0: never) or the
        trainer is stopping. It decides that in a private method
        (_logger_connector.should_update_logs) with no public equivalent, so
        this is the same test on public attributes: global_step counts
        optimizer steps as its counter does, and is not yet incremented during
        the step (nor before the optimizer step)."""
        trainer = self._trainer
        if trainer is None:  # called outside a Trainer (tests)
            return True
        step = self.global_step + 1
        due = trainer.log_every_n_steps > 0 and step % trainer.log_every_n_steps == 0
        last = trainer.max_steps > 0 and step >= trainer.max_steps
        return due or trainer.should_stop or last

    def _step(self, batch, stage: str) -> torch.Tensor:
        logps = self.rho(self.pair_logps(batch), batch, self.global_step)
        logps = self.weighting(self.labels(self.margin(logps, batch), batch), batch)
        beta, logps = self.beta_schedule(self.beta, logps, self.progress)
        loss = self.aggregate(self.loss_fn, logps, beta)
        if stage == "train" and not self._logs_this_step():
            return loss
        metrics = {"loss": loss.detach(), **logps.metrics(beta)}
        if not self.beta_schedule.neutral:
            metrics["beta"] = torch.as_tensor(float(beta))
        for key in ("gold_chosen", "gold_rejected"):
            if key in batch:
                metrics[key.replace("_", "/")] = batch[key].float().mean()
        on_step = stage == "train"
        self.log_dict(
            {f"{stage}/{name}": value for name, value in metrics.items()},
            # sync_dist on train steps too: under DDP each rank sees only its share of the global batch.
            on_step=on_step, on_epoch=not on_step, batch_size=len(logps), sync_dist=True,
        )
        return loss

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):
            resumed = ("" if self.resumed_from_step is None else f" The run resumed from its checkpoint at step "
                       f"{self.resumed_from_step}: the checkpoint may be damaged (resume=false starts over).")
            raise NonFiniteLossError(
                f"loss is {loss.item()} at step {self.global_step} (beta={self.beta}); stopping. "
                f"Checkpoints written so far are kept.{resumed}"
            )
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_train_batch_start(self, batch, batch_idx):
        # TR-DPO's update after step `global_step`, made before the next step rather than at the end of this
        # one: the checkpoint of a step is written first, so a resumed run makes the same update here.
        self.reference.on_train_step(self.policy, self.global_step)

    def on_before_optimizer_step(self, optimizer):
        if not self._logs_this_step():
            return
        # Before gradient clipping: the norm the data actually produced.
        self.log("train/grad_norm", grad_norm(self.policy, norm_type=2)["grad_2.0_norm_total"])

    def on_save_checkpoint(self, checkpoint):
        # Lightning restores weights, optimizer, scheduler and loops; the global RNGs (dropout) are ours to keep.
        checkpoint["rng_state"] = rng_state()
        reference = self.reference.state_dict()  # a TR-DPO reference's moving weights; {} for the others
        if reference:
            checkpoint["reference_state"] = reference

    def on_load_checkpoint(self, checkpoint):
        self.resumed_from_step = checkpoint["global_step"]
        if "rng_state" in checkpoint:
            restore_rng_state(checkpoint["rng_state"])
        self.reference.load_state_dict(checkpoint.get("reference_state", {}))

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(p for p in self.policy.parameters() if p.requires_grad)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer,
                                           num_training_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
