"""The training module: a policy, a reference and a preference loss.

One step: log-probs of chosen and rejected under the policy (one forward
pass) and the reference, packed as `PairLogps`; the loss is the mean of
loss_fn(logps, beta). The module never looks at which loss it holds.
"""

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import grad_norm

from gpo.infra.errors import RunError
from gpo.losses import PairLogps, PreferenceLoss
from gpo.model.logprobs import LogProbs
from gpo.reference import Reference
from gpo.training.checkpoints import restore_rng_state, rng_state


class NonFiniteLossError(RunError, FloatingPointError):
    pass


def pair_metrics(logps: PairLogps, beta: float) -> dict[str, torch.Tensor]:
    """Per-batch means: implied rewards beta * log-ratio (beta * log-prob for a
    run without a reference), their margin and accuracy, log-probs and, with a
    reference, the offline regulariser E_data[rho^2]/2 that the Taylor
    expansion of every GPO loss exposes (GPO section 4)."""
    with torch.no_grad():
        has_reference = logps.reference_chosen is not None
        chosen = beta * (logps.chosen_logratio if has_reference else logps.policy_chosen)
        rejected = beta * (logps.rejected_logratio if has_reference else logps.policy_rejected)
        metrics = {
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(),
            "logps/chosen": logps.policy_chosen.mean(),
            "logps/rejected": logps.policy_rejected.mean(),
        }
        if has_reference:
            metrics["offline_regulariser"] = (logps.margin**2).mean() / 2
    return metrics


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
    ):
        super().__init__()
        self.policy = policy
        self.loss_fn = loss_fn  # a submodule: state such as BCO's running reward shift is checkpointed
        # Not a torch module: its model, if any, is frozen, outside the optimizer and the checkpoints.
        self.reference = reference
        self.beta = beta
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.resumed_from_step: int | None = None  # the checkpoint's step, when the run was resumed
        self.logprobs = logprobs or LogProbs()

    flops_per_batch = None  # unknown for an arbitrary model; tells ThroughputMonitor not to ask

    def pair_logps(self, batch) -> PairLogps:
        policy_chosen, policy_rejected = self.logprobs.pair_logps(self.policy, batch)
        reference_chosen, reference_rejected = self.reference.logps(batch)
        return PairLogps(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
                         batch["chosen_length"], batch["rejected_length"])

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
        logps = self.pair_logps(batch)
        loss = self.loss_fn(logps, self.beta).mean()
        if stage == "train" and not self._logs_this_step():
            return loss
        metrics = {"loss": loss.detach(), **pair_metrics(logps, self.beta)}
        for key in ("gold_chosen", "gold_rejected"):
            if key in batch:
                metrics[key.replace("_", "/")] = batch[key].float().mean()
        on_step = stage == "train"
        self.log_dict(
            {f"{stage}/{name}": value for name, value in metrics.items()},
            # sync_dist on train steps too: under DDP each rank sees only its share of the global batch.
            on_step=on_step, on_epoch=not on_step, batch_size=len(logps.policy_chosen), sync_dist=True,
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

    def on_before_optimizer_step(self, optimizer):
        if not self._logs_this_step():
            return
        # Before gradient clipping: the norm the data actually produced.
        self.log("train/grad_norm", grad_norm(self.policy, norm_type=2)["grad_2.0_norm_total"])

    def on_save_checkpoint(self, checkpoint):
        # Lightning restores weights, optimizer, scheduler and loops; the global RNGs (dropout) are ours to keep.
        checkpoint["rng_state"] = rng_state()

    def on_load_checkpoint(self, checkpoint):
        self.resumed_from_step = checkpoint["global_step"]
        if "rng_state" in checkpoint:
            restore_rng_state(checkpoint["rng_state"])

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(p for p in self.policy.parameters() if p.requires_grad)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer,
                                           num_training_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
