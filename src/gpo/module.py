"""The GPO LightningModule: policy vs frozen reference, loss = mean f(beta * rho)."""

from collections.abc import Callable

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
        reference: torch.nn.Module | None,
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

    @torch.no_grad()
    def reference_logps(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi_ref of (chosen, rejected): precomputed in the batch when the
        reference cache is on; else from the frozen reference model, or, for a
        LoRA policy (reference=None), from the policy with adapters disabled."""
        if "reference_chosen_logps" in batch:
            return batch["reference_chosen_logps"], batch["reference_rejected_logps"]
        if self.reference is None:
            with self.policy.disable_adapter():
                return pair_logps(self.policy, batch)
        self.reference.to(self.device)
        return pair_logps(self.reference, batch)

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
            on_step=on_step, on_epoch=not on_step, batch_size=len(chosen_ratio), sync_dist=not on_step,
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
