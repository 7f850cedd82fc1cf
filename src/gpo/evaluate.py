"""Evaluation only: a trained policy measured as a run measures its own at the
end (src/evaluate.py; conf/evaluate.yaml).

    python src/evaluate.py policy=outputs/runs/<run>            # its checkpoints/last.ckpt (or policy/)
    python src/evaluate.py policy=outputs/runs/<run>/policy     # an exported policy, or any HF model

The run is composed exactly as training composes it (gpo.run.compose: data,
gold reward, initial policy and reference, loss and beta, the callbacks), the
policy's weights come from the checkpoint or the model directory, and
Lightning's `Trainer.validate` runs the validation pairs (val/ metrics) and
the sample evaluation (eval/: KL to the reference, gold reward, win rate,
samples) and whatever else the callbacks measure. The record is the run's:
summary.json and a W&B run, in the evaluation's own output directory.

For a run directory the command line starts from that run's own overrides
(its .hydra/overrides.yaml), so the evaluation uses its model, data and gold
reward unless the command line says otherwise (`with_run_overrides`).
"""

import logging
import time
from pathlib import Path

import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from gpo.infra import interrupts
from gpo.infra.errors import InputError
from gpo.infra.summary import RunSummary
from gpo.model import pretrained_causal_lm
from gpo.run import compose, setup_job
from gpo.training.checkpoints import last_checkpoint
from gpo.training.identity import run_identity
from gpo.training.timing import StageClock

log = logging.getLogger(__name__)

# Overrides of a run that say how it ran, not what it is: not carried into its evaluation.
NOT_CARRIED = ("hydra", "resume", "export", "hparams_search", "sweep", "optuna_trial")


def override_key(override: str) -> str:
    return OverridesParser.create().parse_override(override).key_or_group


def with_run_overrides(argv: list[str]) -> list[str]:
    """`argv` (the command line's overrides) preceded by the training run's
    own, when `policy=` names a run directory: those of its keys the command
    line does not set, and none that only say how it ran (NOT_CARRIED)."""
    policies = [arg.split("=", 1)[1] for arg in argv if arg.startswith("policy=")]
    saved = Path(policies[0]) / ".hydra" / "overrides.yaml" if len(policies) == 1 else None
    if saved is None or not saved.is_file():
        return argv
    given = {override_key(arg) for arg in argv if not arg.startswith("-")}
    carried = [o for o in yaml.safe_load(saved.read_text()) or []
               if override_key(o) not in given and override_key(o).split("/")[0].split(".")[0] not in NOT_CARRIED]
    return [*carried, *argv]


def policy_source(policy: str) -> tuple[Path | None, str]:
    """(checkpoint, model path): what `policy=` names. A run directory: its
    checkpoints/last.ckpt, else its exported policy/; a .ckpt file; anything
    else a Hugging Face model directory or hub name."""
    path = Path(policy)
    if path.is_dir() and last_checkpoint(path).is_file():
        return last_checkpoint(path), policy
    if path.is_dir() and (path / "policy").is_dir():
        return None, str(path / "policy")
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise InputError(f"policy={policy}: checkpoint not found")
        return path, policy
    if not path.exists() and (policy.startswith(("/", ".", "~")) or policy.count("/") > 1):
        raise InputError(f"policy={policy}: no such run directory, checkpoint or model directory")
    if (path / "adapter_config.json").is_file():
        raise InputError(f"policy={policy} is a LoRA adapter: evaluate its run directory (the checkpoint) or the "
                         "merged model (export.merged=true: <run dir>/policy_merged)")
    return None, policy


def load_policy(path: str, tokenizer):
    """The model at `path`, checked to speak the configured model's tokenizer
    (the reference's, the data's token ids)."""
    try:
        policy, theirs = pretrained_causal_lm(path)
    except (OSError, ValueError) as error:
        raise InputError(f"policy={path}: not a run directory, a checkpoint or a model transformers can load "
                         f"({type(error).__name__}: {str(error).splitlines()[0]})") from None
    if theirs.get_vocab() != tokenizer.get_vocab():
        raise InputError(f"policy={path}: its tokenizer differs from the configured model's ({len(theirs)} vs "
                         f"{len(tokenizer)} tokens): set model=... to the model it was trained from")
    return policy


def load_weights(module, checkpoint: Path) -> None:
    """The training module's weights from a run's checkpoint (data only:
    weights_only), and the step they are from (the sample evaluation draws
    the samples that run's own evaluation drew at that step). Only the
    weights: Trainer.validate(ckpt_path=...) would also restore the training
    callbacks' state, which an evaluation has no use for."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as error:
        raise InputError(f"policy={checkpoint}: its weights do not fit the configured model (model=...; "
                         f"{str(error).splitlines()[0]})") from None
    module.resumed_from_step = state.get("global_step")


@interrupts.handled  # a signal stops the evaluation where it is, with a record (gpo.run.run_job)
def evaluate(cfg: DictConfig) -> RunSummary:
    started, clock = time.time(), StageClock()
    setup_job(cfg)
    out_dir = HydraConfig.get().runtime.output_dir
    checkpoint, model_path = policy_source(str(cfg.policy))  # before any compute: a wrong path costs nothing
    run = compose(cfg, out_dir, run_identity(cfg), clock, logger_name="eval-")
    if checkpoint is None:
        run.module.policy = load_policy(model_path, run.tokenizer)
    else:
        load_weights(run.module, checkpoint)
    log.info("Evaluating %s", checkpoint or model_path)
    run.trainer.validate(run.module, datamodule=run.datamodule, verbose=False)  # its final line says what it measured
    summary = run.summary(cfg, evaluated=str(checkpoint or model_path))
    clock.lap("evaluation")
    run.write(summary, out_dir, started, clock)
    return summary
