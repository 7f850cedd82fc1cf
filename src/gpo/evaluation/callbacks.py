"""Lightning callbacks that measure a run: sample evaluation (KL, gold reward,
win rate, and the offline regulariser, through training) and throughput."""

import logging
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ThroughputMonitor
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.strategies import FSDPStrategy

from gpo.data.tokenization import real_tokens
from gpo.evaluation.reference_samples import reference_samples
from gpo.evaluation.sampling import evaluate_samples, prompt_token_ids
from gpo.summary import RunSummary

log = logging.getLogger(__name__)


class PairThroughput(ThroughputMonitor):
    """Lightning's throughput monitor, counting preference pairs and real (non-pad) tokens."""

    def __init__(self, window_size: int = 20):
        super().__init__(
            batch_size_fn=lambda batch: len(batch["chosen_length"]),
            length_fn=real_tokens,
            window_size=window_size,
            separator="/",
        )


@torch.no_grad()
def offline_regulariser(module, loader, max_batches: int | None = None) -> float | None:
    """E_data[rho^2] / 2 over the validation pairs (rho: the policy/reference
    log-ratio margin): the regulariser in the Taylor expansion of every GPO
    loss, weighted by the offline data rather than by the policy's own
    samples as KL(pi || pi_ref) is. None without reference log-probs."""
    total, count, was_training = 0.0, 0, module.policy.training
    module.policy.eval()
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            logps = module.pair_logps({k: v.to(module.device) for k, v in batch.items()})
            if logps.reference_chosen is None:
                return None
            total += float((logps.margin.double() ** 2).sum())
            count += len(logps.margin)
    finally:
        module.policy.train(was_training)
    return total / count / 2 if count else None


class SampleEvaluation(pl.Callback):
    """Samples from policy and reference on held-out prompts (the data
    module's `evaluation_prompts`) and measures KL(pi || pi_ref), gold reward
    and win rate (when the data has a gold reward) and the offline regulariser:
    at the end of training, and, with `every_n_steps`, also at step 0 and every
    n steps, so one run draws its own gold-vs-KL path (Gao et al. 2023).

    Sampling runs in a forked RNG: the policy's seeded by (seed, step), so
    evaluating more often does not change training, and an evaluation at a
    step draws the same samples whether or not the run was resumed before it;
    the reference's seeded by seed alone, drawn once per set of prompts and
    kept in the disk cache (gpo/evaluation/reference_samples.py). Every evaluation
    goes to the loggers (at its step) and to the run summary: the last as
    metrics, all of them as `trajectory` (kept in checkpoints)."""

    def __init__(self, num_prompts: int = 128, max_new_tokens: int = 64, batch_size: int = 64,
                 every_n_steps: int | None = None, trajectory_prompts: int | None = None,
                 regulariser_batches: int | None = 16, seed: int = 0):
        """`trajectory_prompts`: prompts for the evaluations before the last
        (default `num_prompts`); `regulariser_batches`: validation batches the
        offline regulariser is averaged over (None: all)."""
        self.num_prompts, self.max_new_tokens = num_prompts, max_new_tokens
        self.trajectory_prompts = trajectory_prompts or num_prompts
        self.batch_size, self.every_n_steps = batch_size, every_n_steps
        self.regulariser_batches = regulariser_batches
        self.seed = seed
        self.trajectory: list[dict[str, float]] = []
        self.seconds = 0.0  # in all evaluations of this run (summary.json time_split)
        self._prompts: dict[int, tuple] = {}  # number of prompts -> (prompts, their ids, reference samples)

    def setup(self, trainer, module, stage):
        self.trajectory = []  # before a checkpoint's state is loaded (load_state_dict)
        self.seconds = 0.0

    def state_dict(self) -> dict:
        return {"trajectory": self.trajectory}

    def load_state_dict(self, state_dict: dict) -> None:
        self.trajectory = list(state_dict.get("trajectory", []))

    def _evaluated_at(self, step: int) -> bool:
        return bool(self.trajectory) and self.trajectory[-1]["step"] == step

    def prompts(self, datamodule, module, n: int) -> tuple[list[str], list[list[int]], list[list[int]]]:
        """The first n evaluation prompts, their token ids and the reference's samples (made once per run)."""
        if n not in self._prompts:
            tokenizer = datamodule.tokenizer
            prompts = datamodule.evaluation_prompts(n)
            ids = prompt_token_ids(tokenizer, prompts, datamodule.max_prompt_length)
            samples = reference_samples(module.reference, ids, self.max_new_tokens, tokenizer.pad_token_id,
                                        tokenizer.eos_token_id, self.batch_size, self.seed, module.device)
            self._prompts[n] = prompts, ids, samples
        return self._prompts[n]

    def evaluate(self, trainer: pl.Trainer, module, final: bool = False) -> dict[str, float]:
        if isinstance(trainer.strategy, FSDPStrategy):  # rank-0-only generation with sharded weights would hang
            log.warning("Sample evaluation skipped under FSDP; evaluate the saved checkpoint on one device instead")
            return {}
        start = time.perf_counter()
        datamodule = trainer.datamodule
        prompts, prompt_ids, theirs = self.prompts(datamodule, module,
                                                   self.num_prompts if final else self.trajectory_prompts)
        devices = [module.device] if module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed * 1_000_003 + trainer.global_step)
            metrics, rows = evaluate_samples(
                module.policy, module.reference, datamodule.tokenizer, prompts, prompt_ids, theirs,
                max_new_tokens=self.max_new_tokens, gold_reward=datamodule.gold_reward, batch_size=self.batch_size,
            )
        regulariser = offline_regulariser(module, datamodule.val_dataloader(), self.regulariser_batches)
        if regulariser is not None:
            metrics["eval/offline_regulariser"] = regulariser
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if final and isinstance(logger, WandbLogger):
                columns = list(rows[0])
                logger.log_table("eval/samples", columns=columns, data=[[row[c] for c in columns] for row in rows])
        self.trajectory.append({"step": trainer.global_step, **metrics})
        seconds = time.perf_counter() - start
        self.seconds += seconds
        log.info("Sample evaluation at step %d (%.1f s): %s", trainer.global_step, seconds,
                 ", ".join(f"{k.removeprefix('eval/')} {v:.4g}" for k, v in metrics.items() if "stderr" not in k))
        return metrics

    def on_train_start(self, trainer, module):
        step = trainer.global_step  # 0, or where a resumed run continues (evaluated already if it was due)
        due = self.every_n_steps and step % self.every_n_steps == 0
        if due and trainer.is_global_zero and not self._evaluated_at(step):
            self.evaluate(trainer, module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        # several batches per step (gradient accumulation): once
        due = self.every_n_steps and step % self.every_n_steps == 0 and not self._evaluated_at(step)
        if due and (trainer.max_steps < 0 or step < trainer.max_steps) and trainer.is_global_zero:
            self.evaluate(trainer, module)  # the last step is evaluated by on_train_end

    def on_train_end(self, trainer, module):
        if trainer.is_global_zero:
            self.evaluate(trainer, module, final=True)

    def contribute(self, summary: RunSummary) -> None:
        summary.time_split["sample_evaluation"] = self.seconds
        if self.trajectory:
            summary.metrics.update({k: v for k, v in self.trajectory[-1].items() if k != "step"})
            summary.trajectory = list(self.trajectory)
