"""The GPO LightningModule: policy vs frozen reference, loss = mean f(beta * rho)."""

from collections.abc import Callable
from contextlib import contextmanager

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import grad_norm

from gpo.logprobs import pair_logps


class NonFiniteLossError(FloatingPointError):
    pass


class GPOModule(pl.LightningModule):
    def __init__(
        self,
        policy: torch.nn.Module,
        reference: torch.nn.Module | Callable[[], torch.nn.Module] | None,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
        beta: float,
        optimizer: Callable,
        scheduler: Callable | None = None,
    ):
        super().__init__()
        self.policy = policy
        # Kept out of the module's children: frozen, never in the optimizer, and
        # not written into checkpoints next to the policy.
        self.__dict__["reference"] = reference
        self.loss_fn, self.beta = loss_fn, beta
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler

    @contextmanager
    def reference_model(self):
        """The reference as a model: the frozen copy, or, for a LoRA policy
        (reference=None), the policy itself with adapters disabled and in eval
        mode (no dropout), as the frozen copy would be. A callable `reference`
        is called to build the model on first use: with cached reference
        log-probs only the sample evaluation needs it, so none is held in training."""
        if callable(self.reference) and not isinstance(self.reference, torch.nn.Module):
            self.__dict__["reference"] = self.reference().eval().requires_grad_(False)
        if self.reference is not None:
            self.reference.to(self.device)
            yield self.reference
            return
        was_training = self.policy.training
        self.policy.eval()
        try:
            with self.policy.disable_adapter():
                yield self.policy
        finally:
            self.policy.train(was_training)

    @torch.no_grad()
    def reference_logps(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi_ref of (chosen, rejected): precomputed in the batch when the
        reference cache is on, else from `reference_model()`."""
        if "reference_chosen_logps" in batch:
            return batch["reference_chosen_logps"], batch["reference_rejected_logps"]
        with self.reference_model() as reference:
            return pair_logps(reference, batch)

    def _step(self, batch, stage: str) -> torch.Tensor:
        policy_chosen, policy_rejected = pair_logps(self.policy, batch)
        reference_chosen, reference_rejected = self.reference_logps(batch)
        chosen_ratio = policy_chosen - reference_chosen
        rejected_ratio = policy_rejected - reference_rejected
        loss = self.loss_fn(self.beta * (chosen_ratio - rejected_ratio)).mean()

        rewards_chosen, rewards_rejected = self.beta * chosen_ratio.detach(), self.beta * rejected_ratio.detach()
        metrics = {
            "loss": loss.detach(),
            "rewards/chosen": rewards_chosen.mean(),
            "rewards/rejected": rewards_rejected.mean(),
            "rewards/margins": (rewards_chosen - rewards_rejected).mean(),
            "rewards/accuracies": (rewards_chosen > rewards_rejected).float().mean(),
            "logps/chosen": policy_chosen.detach().mean(),
            "logps/rejected": policy_rejected.detach().mean(),
        }
        for key in ("gold_chosen", "gold_rejected"):
            if key in batch:
                metrics[key.replace("_", "/")] = batch[key].mean()
        on_step = stage == "train"
        self.log_dict(
            {f"{stage}/{name}": value for name, value in metrics.items()},
            # sync_dist on train steps too: under DDP each rank sees only its share of the global batch.
            on_step=on_step, on_epoch=not on_step, batch_size=len(chosen_ratio), sync_dist=True,
        )
        return loss

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at step {self.global_step} (beta={self.beta}); stopping. "
                "Checkpoints written so far are kept."
            )
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_before_optimizer_step(self, optimizer):
        # Before gradient clipping: the norm the data actually produced.
        self.log("train/grad_norm", grad_norm(self.policy, norm_type=2)["grad_2.0_norm_total"])

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(p for p in self.policy.parameters() if p.requires_grad)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer, num_training_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
