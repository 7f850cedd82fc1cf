"""Secrets stay out of every file a run writes; checkpoints and weights load as data only."""

import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import FAST, ROOT, SMALL_TASK
from gpo.infra.secrets import MASK, redact, redact_text
from gpo.infra.summary import RunSummary
from wandb_records import find_runs, read_run

HF = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWx12"
SK = "sk-" + "proj-1234567890abcdefXYZ"
PASSWORD = "correct-horse-battery-staple"


def test_redact_masks_by_key_and_by_look_and_keeps_the_rest():
    config = {"model": {"policy": {"name_or_path": "EleutherAI/pythia-160m", "token": HF, "pad_token": "<pad>"}},
              "logger": {"api_key": "0123456789abcdef", "project": "gpo"}, "db": {"password": PASSWORD},
              "hf_token": None, "notes": f"uses {SK} for judging", "max_new_tokens": 16, "tokenizer": "char",
              "credentials": {"user": "me", "secret": "x"}, "cache_key": "3f148ef69186aa02"}
    assert redact(config) == {
        "model": {"policy": {"name_or_path": "EleutherAI/pythia-160m", "token": MASK, "pad_token": "<pad>"}},
        "logger": {"api_key": MASK, "project": "gpo"}, "db": {"password": MASK}, "hf_token": None,
        "notes": f"uses {MASK} for judging", "max_new_tokens": 16, "tokenizer": "char",
        "credentials": MASK, "cache_key": "3f148ef69186aa02"}
    assert redact_text(f"+model.policy.token={HF}") == f"+model.policy.token={MASK}"
    assert redact_text(f"+db.password={PASSWORD}") == f"+db.password={MASK}"
    assert redact_text("loss=dpo") == "loss=dpo" and redact_text("data.max_length=512") == "data.max_length=512"
    assert redact_text(f"https://x.org/?t={HF}&a=1") == f"https://x.org/?t={MASK}&a=1"


@pytest.mark.slow
def test_secrets_given_on_the_command_line_reach_no_file_the_run_writes(tmp_path):
    """W&B config and metadata (the command line), summary.json, .hydra/*.yaml, train.log: all masked."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "src/train.py", *FAST, *SMALL_TASK, "~callbacks.sample_evaluation", "num_threads=1",
               f"+hf_token={HF}", f"+db.password={PASSWORD}", f"+notes=judge with {SK}", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]

    leaks = [str(path.relative_to(run_dir)) for path in run_dir.rglob("*") if path.is_file()
             and re.search(b"|".join(re.escape(s.encode()) for s in (HF, SK, PASSWORD)), path.read_bytes())]
    assert leaks == []
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert config["hf_token"] == MASK and config["db"] == {"password": MASK} and config["notes"] == f"judge with {MASK}"
    assert f"+hf_token={MASK}" in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    summary = RunSummary.read(run_dir)
    assert summary.finished and f"+db.password={MASK}" in summary.overrides
    (wandb_run,) = find_runs(str(run_dir))
    assert read_run(wandb_run)["config"]["hf_token"] == MASK


def test_every_torch_load_is_weights_only():
    """Pickle runs code: every torch.load in this project loads tensors and plain data only."""
    calls = []
    for folder in ("src", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for match in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", path.read_text()):
                calls.append((str(path.relative_to(ROOT)), match.group(0)))
    assert calls and [c for c in calls if "weights_only=True" not in c[1]] == []


# What the masking covers: (key, value) -> masked? A key naming a secret masks any value; a value that looks
# like a token is masked under any key, inside text too.
MASKED = [
    ("token", "abc"), ("hf_token", "abc"), ("api_key", "abc"), ("apikey", "abc"), ("wandb_key", "abc"),
    ("WANDB_API_KEY", "abc"), ("password", "abc"), ("passwd", "abc"), ("passphrase", "abc"), ("secret", "abc"),
    ("client_secret", "abc"), ("credentials", "abc"), ("private_key", "abc"), ("access_key", "abc"), ("auth", "abc"),
    ("bearer", "abc"), ("notes", "hf_a1B2c3D4"), ("notes", HF), ("notes", SK), ("url", "https://x/?k=ghp_" + "a" * 24),
    ("header", "Authorization: Bearer eyJhbGciOi.x-y_z"), ("aws", "AKIA" + "A" * 16),
]
KEPT = [
    ("pad_token", "<pad>"), ("eos_token", "</s>"), ("max_new_tokens", 16), ("cache_key", "3f148ef69186aa02"),
    ("tokenizer", "char"), ("notes", "hf_transfer"), ("notes", "hf_datasets"), ("bearer", None), ("token", ""),
]


@pytest.mark.parametrize(("key", "value"), MASKED)
def test_these_are_masked(key, value):
    masked = redact({key: value})[key]
    assert masked != value and "***" in masked and (value not in masked)


@pytest.mark.parametrize(("key", "value"), KEPT)
def test_these_are_kept(key, value):
    assert redact({key: value}) == {key: value}
