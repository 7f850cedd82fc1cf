"""The shared reference log-prob cache (gpo/reference_cache.py) through train()."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict

import train as train_script
from conftest import FAST, ROOT, compose_train
from gpo import reference_cache
from gpo.errors import DataError
from gpo.module import GPOModule


@pytest.fixture
def cache_dir(tmp_path, shared_cache):
    """A fresh reference cache that shares the session's SFT model (trained once)."""
    os.makedirs(os.path.join(shared_cache, "sft"), exist_ok=True)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "sft").symlink_to(os.path.join(shared_cache, "sft"))
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def restore_threads():
    """train() applies num_threads=1 to this process; leave other tests torch's default."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(tmp_path, name, *overrides):
    return train_script.train(compose_train(["logger=csv", "num_threads=1", *FAST, *overrides],
                                            output_dir=tmp_path / name))



def test_cache_equals_on_the_fly_and_later_jobs_skip_the_reference(tmp_path, cache_dir, monkeypatch):
    off = run(tmp_path, "off", "reference_cache=false", f"cache_dir={cache_dir}")
    first = run(tmp_path, "first", f"cache_dir={cache_dir}")

    assert off["reference_cache"] == {"status": "off"}
    assert first["reference_cache"]["status"] == "computed"
    assert Path(first["reference_cache"]["path"]).parent == cache_dir / "reference"
    # Same numbers, sample evaluation included: the reference built at the end is the same model.
    assert set(first["metrics"]) == set(off["metrics"])
    for key, value in off["metrics"].items():
        assert first["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    # A later job loads the cache: no reference model is computed with, copied, or run.
    def forbidden(*args, **kwargs):
        raise AssertionError("the reference model was used")

    monkeypatch.setattr(reference_cache, "compute_reference_logps", forbidden)
    monkeypatch.setattr(train_script, "reference_for", forbidden)
    monkeypatch.setattr(train_script, "sft_model", _count_calls(train_script.sft_model))  # policy only, once
    monkeypatch.setattr(GPOModule, "reference_model", forbidden)
    second = run(tmp_path, "second", f"cache_dir={cache_dir}", "~callbacks.sample_evaluation")

    assert second["reference_cache"]["status"] == "loaded"
    assert train_script.sft_model.calls == 1
    for key, value in off["metrics"].items():
        if not key.startswith("eval/"):
            assert second["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def _count_calls(fn):
    def wrapper(*args, **kwargs):
        wrapper.calls += 1
        return fn(*args, **kwargs)

    wrapper.calls = 0
    return wrapper


def _tokenized(rows):
    return Dataset.from_dict({
        "prompt_length": [len(p) for p, _, _ in rows],
        "chosen_input_ids": [p + c for p, c, _ in rows],
        "rejected_input_ids": [p + r for p, _, r in rows],
    })


def test_token_digest_depends_on_every_model_input():
    rows = [([1, 2], [3, 4], [5]), ([1], [6], [7, 8])]
    base = reference_cache.token_digest(_tokenized(rows))
    assert reference_cache.token_digest(_tokenized(rows)) == base
    assert reference_cache.token_digest(_tokenized(rows[::-1])) != base  # order matters: rows are aligned by position
    moved = [([1, 2, 3], [4], [5]), rows[1]]  # same tokens, different prompt/response boundary
    assert reference_cache.token_digest(_tokenized(moved)) != base
    extra = _tokenized(rows).add_column("gold_chosen", [1.0, 2.0])  # not seen by the model: same key
    assert reference_cache.token_digest(extra) == base


def test_a_cache_of_the_wrong_size_is_a_clear_error(tmp_path):
    path = tmp_path / "reference" / "key"
    DatasetDict({"train": Dataset.from_dict({c: [0.0] for c in reference_cache.COLUMNS})}).save_to_disk(str(path))
    with pytest.raises(DataError, match=r"split 'train' has 1 rows, the data has 2; delete"):
        reference_cache._load(str(path), {"train": _tokenized([([1], [2], [3]), ([1], [4], [5])])})


RACER = """
import json, os, sys, time
import torch
from gpo import reference_cache
from gpo.data import PreferenceDataModule
from gpo.models import tiny_causal_lm
from gpo.synthetic import SyntheticPreferences
from transformers import LlamaConfig

cache_dir, barrier = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)  # two processes on a shared CPU
publish = reference_cache._publish

def publish_together(*args):  # both jobs have computed (both missed the cache) before either publishes
    open(os.path.join(barrier, str(os.getpid())), "w").close()
    while len(os.listdir(barrier)) < 2:
        time.sleep(0.05)
    publish(*args)

reference_cache._publish = publish_together
model, tokenizer = tiny_causal_lm(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                              num_attention_heads=2, num_key_value_heads=2))
data = PreferenceDataModule(SyntheticPreferences(num_pairs=200, num_demonstrations=10), tokenizer,
                            max_length=32, max_prompt_length=16, batch_size=16)
data.setup()
info = reference_cache.attach_reference_logps(data, model, cache_dir, "racekey", "cpu")
print(json.dumps({"status": info["status"],
                  "chosen": data.tokenized["train"]["reference_chosen_logps"][:5],
                  "rows": data.tokenized["validation"].num_rows}))
"""


def test_two_jobs_computing_at_once_both_end_with_a_valid_cache(tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    jobs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(barrier)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [job.communicate(timeout=300) for job in jobs]
    for job, (out, err) in zip(jobs, outputs):
        assert job.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]

    assert [r["status"] for r in results] == ["computed", "computed"]
    assert results[0]["chosen"] == results[1]["chosen"]
    assert all(isinstance(v, float) and v < 0 for v in results[0]["chosen"])
    assert os.listdir(tmp_path / "reference") == ["racekey"]  # the loser's temp directory is gone
    cache = DatasetDict.load_from_disk(str(tmp_path / "reference" / "racekey"))
    assert cache["validation"].num_rows == results[0]["rows"]
    assert cache["train"]["reference_chosen_logps"][:5] == pytest.approx(results[0]["chosen"])
    assert torch.isfinite(torch.tensor(cache["train"]["reference_rejected_logps"])).all()
