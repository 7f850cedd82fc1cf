"""A run's identity: the experiment its resolved config defines, stored with
its checkpoint and its summary, so that a command run again into its directory
continues (or skips) that experiment and no other.

Everything in the resolved config defines the experiment except the keys in
NOT_THE_EXPERIMENT: they say only where a run writes, how fast it runs or how
it reports. A run directory holds one experiment: resuming or skipping with
another identity is refused (gpo.training.resume), naming the keys that differ.
More `trainer.max_steps` than recorded extends a run (resumed from its last
checkpoint, the learning-rate schedule stretched to the new length); fewer are
another experiment.
"""

import hashlib
import json

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from gpo.infra.errors import RunRefused
from gpo.infra.secrets import redact

MAX_STEPS = "trainer.max_steps"

# Keys (a key covers its subtree) that do not change what is trained or measured, and why.
NOT_THE_EXPERIMENT = {
    "cache_dir": "where shared SFT weights and reference log-probs live",
    "logger": "where metrics are recorded (W&B or CSV) and under which names",
    "num_threads": "how fast: torch CPU threads",
    "resume": "how this command continues a run",
    "verbose": "how much the console says",
    "export": "what is saved after training (the policy in Hugging Face format)",
    "experiment_name": "the W&B group's name",
    "optimized_metric": "what a sweeper is told, not what is trained",
    "allow_zero_lr": "a permission; optimizer.lr is the setting",
    "logprobs.chunk_mb": "how fast: the output head in chunks (the same values to float tolerance)",
    "model.compile": "how fast: torch.compile",
    "data.num_proc": "how fast: processes preparing the data",
    "data.source.num_proc": "how fast: processes reading the data",
    "data.num_workers": "how fast: data loader workers",
    MAX_STEPS: "compared on its own: more steps extend the run, fewer are another experiment",
    "trainer.default_root_dir": "where: the run directory",
    "trainer.log_every_n_steps": "how often metrics are recorded",
    "trainer.enable_model_summary": "what the console shows",
    "trainer.enable_progress_bar": "what the console shows",
    "trainer.plugins": "how checkpoints are written and read",
    "callbacks.model_checkpoint": "where and how often last.ckpt is written",
    "callbacks.progress_bar": "what the console shows",
    "callbacks.learning_rate": "a metric recorded, not a setting",
    "callbacks.throughput": "a measurement of speed",
    "callbacks.preemption": "how a signal stops the run",
}


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _excluded(key: str) -> bool:
    return any(key == name or key.startswith(f"{name}.") for name in NOT_THE_EXPERIMENT)


def run_identity(cfg: DictConfig) -> dict:
    """{"fingerprint", "config": the experiment's keys and values (secrets masked), "max_steps"}."""
    resolved = _flatten(OmegaConf.to_container(cfg, resolve=True))
    config = redact({key: value for key, value in sorted(resolved.items()) if not _excluded(key)})
    fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"fingerprint": fingerprint, "config": config, "max_steps": resolved.get(MAX_STEPS)}


def differences(old: dict, new: dict) -> list[str]:
    """`key: old -> new` for every key of the experiment that differs (max_steps: only fewer)."""
    missing = "(absent)"
    changed = [f"{key}: {old['config'].get(key, missing)} -> {new['config'].get(key, missing)}"
               for key in sorted(set(old["config"]) | set(new["config"]))
               if old["config"].get(key, missing) != new["config"].get(key, missing)]
    if _steps(new) < _steps(old):
        changed.append(f"{MAX_STEPS}: {old['max_steps']} -> {new['max_steps']} (fewer steps)")
    return changed


def _steps(record: dict) -> float:
    steps = record.get("max_steps")
    return float("inf") if not isinstance(steps, int) or steps < 0 else steps  # -1: by epochs


def extends(old: dict, new: dict) -> bool:
    """Whether `new` is `old` with more training steps."""
    return not differences(old, new) and _steps(new) > _steps(old)


def check_same_experiment(recorded: dict | None, identity: dict, run_dir, what: str) -> None:
    """RunRefused, in one line, if `recorded` (the identity stored with `what`,
    e.g. its checkpoint) is another experiment than `identity`."""
    if not recorded or recorded.get("fingerprint") == identity["fingerprint"] and _steps(identity) >= _steps(recorded):
        return
    changed = differences(recorded, identity)
    if not changed:
        return
    shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
    raise RunRefused(f"{run_dir} holds another experiment ({what}: {shown}); resume=false starts this one there "
                     "(the old run's files are moved to previous/ inside it), or give it another directory")


class RunRecord(pl.Callback):
    """What a checkpoint holds about the run beyond Lightning's own state: its
    identity and its metrics at that point. The checkpoint written at the end of
    training (gpo.training.checkpoints.LastCheckpoint) holds the final metrics: a
    run resumed from it has nothing left to train, and reports them."""

    KEY = "gpo_run"

    def __init__(self, identity: dict):
        self.identity = identity
        self.metrics: dict[str, float] = {}  # the final ones once fit returns

    @staticmethod
    def _now(trainer) -> dict[str, float]:
        return {key: float(value) for key, value in sorted(trainer.callback_metrics.items())}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint[self.KEY] = {"identity": self.identity, "metrics": self._now(trainer)}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.metrics = dict(checkpoint.get(self.KEY, {}).get("metrics", {}))

    def on_train_end(self, trainer, pl_module) -> None:
        self.metrics = self._now(trainer)
