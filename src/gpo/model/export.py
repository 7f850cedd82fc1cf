"""The trained policy in the Hugging Face format, so transformers (and vLLM,
TGI, ...) load it directly: `<run dir>/policy` (conf/train.yaml: export).

    AutoModelForCausalLM.from_pretrained("<run dir>/policy"); AutoTokenizer.from_pretrained(same)

A LoRA policy is saved as its adapter (peft: PeftModel.from_pretrained(base,
"<run dir>/policy"), vLLM's LoRA support), and with `export.merged=true` also
merged into the base weights, a plain model, in `<run dir>/policy_merged`."""

import logging
import shutil
import time
from pathlib import Path

from peft import PeftModel
from pytorch_lightning.strategies import FSDPStrategy

from gpo.infra.cache import Outcome

log = logging.getLogger(__name__)


def _save(model, tokenizer, directory: Path) -> None:
    """Written beside the target and renamed into place: a killed export leaves no half policy."""
    tmp = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def export_policy(policy, tokenizer, run_dir: str | Path, merged: bool = False, strategy=None) -> Outcome | None:
    """Save `policy` and `tokenizer` under `run_dir` (see above); None under
    FSDP (`strategy`), where rank 0 holds only a shard of the weights."""
    if isinstance(strategy, FSDPStrategy):
        log.warning("export.policy: skipped under FSDP (sharded weights); export from the checkpoint instead")
        return None
    start = time.perf_counter()
    directory = Path(run_dir) / "policy"
    _save(policy, tokenizer, directory)
    if merged and isinstance(policy, PeftModel):  # last use of the policy: merging changes it in place
        _save(policy.merge_and_unload(), tokenizer, directory.with_name("policy_merged"))
    log.info("Policy saved in Hugging Face format: %s%s", directory,
             " (LoRA adapter; merged model in policy_merged)" if merged and isinstance(policy, PeftModel) else "")
    return Outcome("saved", time.perf_counter() - start, str(directory))
