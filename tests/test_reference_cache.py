"""The disk cache (gpo/infra/cache.py) and the cached reference log-probs through train()."""

import json
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset

from conftest import FAST, ROOT, SMALL_TASK, compose_train
from gpo.data.tokenization import token_digest
from gpo.infra.cache import DiskCache
from gpo.infra.errors import InputError
from gpo.reference import InitialPolicy
from gpo.reference.references import MODEL_INPUTS
from gpo.run import train


@pytest.fixture
def cache_dir(tmp_path, shared_cache):
    """A fresh cache that shares the session's SFT weights (trained once)."""
    os.makedirs(os.path.join(shared_cache, "sft"), exist_ok=True)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "sft").symlink_to(os.path.join(shared_cache, "sft"))
    return tmp_path / "cache"


def run(tmp_path, name, *overrides):
    return train(compose_train(["logger=csv", *FAST, *SMALL_TASK, *overrides], output_dir=tmp_path / name))


def test_cached_reference_equals_the_frozen_one_and_later_jobs_never_build_it(tmp_path, cache_dir, monkeypatch):
    frozen = run(tmp_path, "frozen", "reference=frozen", f"cache_dir={cache_dir}")
    first = run(tmp_path, "first", f"cache_dir={cache_dir}")
    assert "reference" not in frozen.stages and first.stages["reference"]["status"] == "built"
    assert os.path.dirname(first.stages["reference"]["path"]) == str(cache_dir / "reference_logps")
    # Same numbers, sample evaluation included: the reference built at the end is the same model.
    assert set(first.metrics) == set(frozen.metrics)
    for key, value in frozen.metrics.items():
        assert first.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    # A later job loads the cache: no reference model is built (the policy is built by the config, not this).
    def forbidden(*args, **kwargs):
        raise AssertionError("the reference model was built")

    monkeypatch.setattr(InitialPolicy, "model", forbidden)
    second = run(tmp_path, "second", f"cache_dir={cache_dir}", "~callbacks.sample_evaluation")
    assert second.stages["reference"]["status"] == "loaded"
    for key, value in frozen.metrics.items():
        if not key.startswith("eval/"):
            assert second.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_a_damaged_cache_entry_is_rebuilt_never_used(tmp_path, cache_dir, caplog):
    first = run(tmp_path, "first", f"cache_dir={cache_dir}", "~callbacks.sample_evaluation")
    values = os.path.join(first.stages["reference"]["path"], "logps.pt")
    with open(values, "r+b") as handle:  # a crash mid-write on a filesystem without atomic rename
        handle.truncate(os.path.getsize(values) // 2)
    again = run(tmp_path, "again", f"cache_dir={cache_dir}", "~callbacks.sample_evaluation")
    assert again.stages["reference"]["status"] == "built" and "cannot be read" in caplog.text
    assert again.metrics["val/loss"] == pytest.approx(first.metrics["val/loss"], rel=1e-6)


def _tokenized(rows):
    return Dataset.from_dict({
        "prompt_length": [len(p) for p, _, _ in rows],
        "chosen_input_ids": [p + c for p, c, _ in rows],
        "rejected_input_ids": [p + r for p, _, r in rows],
    })


def test_token_digest_depends_on_every_model_input():
    rows = [([1, 2], [3, 4], [5]), ([1], [6], [7, 8])]
    base = token_digest(_tokenized(rows), MODEL_INPUTS)
    assert token_digest(_tokenized(rows), MODEL_INPUTS) == base
    assert token_digest(_tokenized(rows[::-1]), MODEL_INPUTS) != base  # order matters: rows are aligned by position
    moved = [([1, 2, 3], [4], [5]), rows[1]]  # same tokens, different prompt/response boundary
    assert token_digest(_tokenized(moved), MODEL_INPUTS) != base
    extra = _tokenized(rows).add_column("gold_chosen", [1.0, 2.0])  # not seen by the model: same key
    assert token_digest(extra, MODEL_INPUTS) == base


def test_disk_cache_publishes_whole_entries_and_rebuilds_unreadable_ones(tmp_path):
    cache = DiskCache(tmp_path)
    writes = []

    def write(directory):
        writes.append(directory)
        (directory / "value.json").write_text(json.dumps(41 + len(writes)))

    def read(directory):
        return json.loads((directory / "value.json").read_text())

    value, outcome = cache.get_or_build("kind", "key", read, write, describe={"what": "a number"})
    assert ((value, outcome.status) == (42, "built")
            and writes[0] != cache.path("kind", "key"))  # written elsewhere first
    assert json.loads((cache.path("kind", "key") / "meta.json").read_text()) == {"key": "key", "what": "a number"}
    assert cache.get_or_build("kind", "key", read, write)[1].status == "loaded" and len(writes) == 1
    (cache.path("kind", "key") / "value.json").write_text("{not json")
    value, outcome = cache.get_or_build("kind", "key", read, write)
    assert (value, outcome.status) == (43, "built")
    assert sorted(p.name for p in (tmp_path / "kind").iterdir()) == [".key.lock", "key"]  # no temp directory left

    def failing(directory):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        cache.get_or_build("kind", "other", read, failing)
    assert not cache.path("kind", "other").exists()


def test_an_unwritable_cache_directory_is_a_clear_error(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(InputError, match="is not writable.*set cache_dir="):
        DiskCache(blocked / "cache").get_or_build("kind", "key", lambda d: None, lambda d: None)


RACER = """
import json, sys, time
from gpo.infra.cache import DiskCache

def write(directory):
    time.sleep(1.0)  # long enough for the other job to arrive while this one builds
    (directory / "value").write_text(sys.argv[2])

value, outcome = DiskCache(sys.argv[1]).get_or_build("kind", "key", lambda d: (d / "value").read_text(), write)
print(json.dumps({"value": value, "status": outcome.status}))
"""


def test_concurrent_jobs_build_an_entry_once(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    jobs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), name], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    results = []
    for job in jobs:
        out, err = job.communicate(timeout=120)
        assert job.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["status"] for r in results) == ["built", "loaded"]
    assert results[0]["value"] == results[1]["value"]  # both use the one entry the first job built


def test_reference_logps_survive_a_cache_in_use_by_another_model(tmp_path, cache_dir):
    """The key holds the initial policy: another model never reads this one's entry."""
    first = run(tmp_path, "first", f"cache_dir={cache_dir}", "~callbacks.sample_evaluation", "model.sft.steps=0")
    other = run(tmp_path, "other", f"cache_dir={cache_dir}", "~callbacks.sample_evaluation", "model.sft.steps=0",
                "model.policy.seed=1")
    assert other.stages["reference"]["status"] == "built"
    assert other.stages["reference"]["path"] != first.stages["reference"]["path"]
    assert torch.isfinite(torch.tensor(other.metrics["val/loss"]))
    # Another tokenizer (a smaller character set): other token ids, another entry again.
    retokenized = run(tmp_path, "retokenized", f"cache_dir={cache_dir}", "~callbacks.sample_evaluation",
                      "model.sft.steps=0", "+model.policy.alphabet=abcdefghijklmnop:")
    assert retokenized.stages["reference"]["status"] == "built"
    assert retokenized.stages["reference"]["path"] not in (first.stages["reference"]["path"],
                                                           other.stages["reference"]["path"])


def test_truncated_sft_weights_are_rebuilt_never_used(tmp_path, caplog):
    """A crash while writing the SFT weights on a filesystem without atomic rename, or a damaged disk."""
    args = [f"cache_dir={tmp_path / 'cache'}", "model.sft.steps=5", "reference=frozen", "~callbacks.sample_evaluation"]
    first = run(tmp_path, "first", *args)
    weights = os.path.join(first.stages["sft"]["path"], "model.pt")
    with open(weights, "r+b") as handle:
        handle.truncate(os.path.getsize(weights) // 2)
    again = run(tmp_path, "again", *args)
    assert first.stages["sft"]["status"] == again.stages["sft"]["status"] == "built"
    assert "cannot be read" in caplog.text
    assert again.metrics["val/loss"] == pytest.approx(first.metrics["val/loss"], rel=1e-6)
