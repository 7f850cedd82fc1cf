"""The disk cache (gpo/infra/cache.py) and the cached reference log-probs through train()."""

import hashlib
import json
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys

import pytest
import torch
from datasets import Dataset

from catalogue import in_readme
from conftest import FAST, ROOT, SMALL_TASK, compose_train
from gpo.data.tokenization import token_digest
from gpo.infra.cache import DiskCache, damage, file_digests
from gpo.infra.errors import InputError, RunError
from gpo.infra.summary import RunSummary
from gpo.reference import InitialPolicy
from gpo.reference import initial as initial_module
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


def flip_a_bit(path, offset_from_end: int = 200):
    """One bit of a tensor's bytes (near the end of the zip: the last stored data, before the central directory)."""
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) - offset_from_end)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))


def truncate(path):
    with open(path, "r+b") as handle:  # a crash mid-write on a filesystem without atomic rename
        handle.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize(("damage_it", "why"), [(truncate, "logps.pt changed since it was published"),
                                                 (flip_a_bit, "logps.pt changed since it was published")])
def test_a_damaged_cache_entry_is_rebuilt_never_used(tmp_path, cache_dir, caplog, damage_it, why):
    """Truncated, or one bit flipped (a finite value that loads without complaint: torch.load checks no
    checksum): the digest in meta.json tells, the entry is rebuilt, the run is the undamaged one."""
    first = run(tmp_path, "first", f"cache_dir={cache_dir}", "~callbacks.sample_evaluation")
    entry = first.stages["reference"]["path"]
    damage_it(os.path.join(entry, "logps.pt"))
    again = run(tmp_path, "again", f"cache_dir={cache_dir}", "~callbacks.sample_evaluation")
    assert again.stages["reference"]["status"] == "built"
    (warning,) = [r.getMessage() for r in caplog.records if "rebuilding it" in r.getMessage()]
    assert warning == f"Cache entry {entry} is damaged ({why} (sha256 mismatch)); rebuilding it"
    in_readme(warning, dir=entry)
    assert again.metrics["val/loss"] == pytest.approx(first.metrics["val/loss"], rel=1e-6)
    assert damage(cache_dir / "reference_logps" / os.path.basename(entry)) is None  # whole again


def test_an_entry_without_digests_is_rebuilt(tmp_path):
    """meta.json of an older version records no digests: nothing to check it by, so it is not trusted."""
    cache = DiskCache(tmp_path)
    cache.get_or_build("kind", "key", lambda d: (d / "v").read_text(), lambda d: (d / "v").write_text("1"))
    meta = cache.path("kind", "key") / "meta.json"
    meta.write_text(json.dumps({"key": "key"}))
    assert damage(cache.path("kind", "key")) == "meta.json records no file digests (an entry of an older version)"
    assert cache.get_or_build("kind", "key", lambda d: (d / "v").read_text(),
                              lambda d: (d / "v").write_text("2"))[0] == "2"


def test_a_build_with_non_finite_sft_weights_is_never_cached(tmp_path, monkeypatch):
    """An SFT stage that diverges: one line, and no entry for later runs to start from."""
    def diverged(model, *args, **kwargs):
        with torch.no_grad():
            model.lm_head.weight.fill_(float("nan"))
        return model

    monkeypatch.setattr(initial_module, "supervised_finetune", diverged)
    with pytest.raises(RunError) as error:
        run(tmp_path, "run", f"cache_dir={tmp_path / 'cache'}", "model.sft.steps=5")
    assert str(error.value) == ("SFT stage: 1 weight tensor(s) became NaN or Inf (e.g. lm_head.weight) in 5 steps at "
                                "model.sft.lr=0.003; nothing was cached: lower model.sft.lr")
    in_readme(str(error.value))
    assert not [p for p in (tmp_path / "cache" / "sft").iterdir() if not p.name.startswith(".")]


def test_reference_log_probs_from_a_damaged_parent_are_never_cached_and_name_it(tmp_path):
    """SFT weights that are whole (their digests match: an older version wrote them, or they were damaged before
    publishing) but blow up in a forward pass: the reference log-probs built from them are NaN, are not
    published (every later run would read them), and the line names the SFT entry, not the log-probs."""
    args = [f"cache_dir={tmp_path / 'cache'}", "model.sft.steps=5", "~callbacks.sample_evaluation"]
    first = run(tmp_path, "first", *args)
    sft = pathlib.Path(first.stages["sft"]["path"])
    weights = torch.load(sft / "model.pt", weights_only=True)
    weights["lm_head.weight"] *= 1e38  # finite, but the logits overflow to inf
    torch.save(weights, sft / "model.pt")
    meta = json.loads((sft / "meta.json").read_text())
    (sft / "meta.json").write_text(json.dumps({**meta, "files": file_digests(sft)}))
    shutil.rmtree(first.stages["reference"]["path"])
    with pytest.raises(RunError) as error:
        run(tmp_path, "again", *args)
    bad, total = re.match(r"reference log-probs: (\d+) of (\d+) values", str(error.value)).groups()
    assert str(error.value) == (f"reference log-probs: {bad} of {total} values are NaN or Inf, computed from the "
                                f"SFT weights in {sft}; nothing was cached: if that is a cache entry, it is damaged "
                                "(delete it to rebuild it)")
    in_readme(str(error.value).replace(f"{bad} of {total}", "<n> of <total>"), dir=sft)
    assert not [p for p in (tmp_path / "cache" / "reference_logps").iterdir() if not p.name.startswith(".")]


def test_leftovers_of_killed_builds_are_removed_but_not_a_live_builders(tmp_path):
    """A build killed midway leaves its temporary directory. The next builder of any entry of that kind removes
    those whose entry no live builder holds (their lock is free), and leaves one being built now."""
    cache = DiskCache(tmp_path)
    kind = tmp_path / "kind"
    kind.mkdir()
    dead = kind / ".gone.tmp-abc123"
    dead.mkdir()
    (dead / "half.pt").write_bytes(b"12")
    live = kind / ".busy.tmp-def456"
    live.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(kind / ".busy.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        cache.get_or_build("kind", "key", lambda d: (d / "v").read_text(), lambda d: (d / "v").write_text("1"))
        assert not dead.exists() and live.exists()
    finally:
        holder.kill()
        holder.wait()


HOLDER = """
import fcntl, sys, time
handle = open(sys.argv[1], "a")
fcntl.flock(handle, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_cache_entries_and_the_summary_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        DiskCache(tmp_path).get_or_build("kind", "key", lambda d: None, lambda d: (d / "v").write_text("1"))
        RunSummary(loss="dpo", beta=0.1, seed=0).write(tmp_path / "run")
    finally:
        os.umask(old)
    entry = tmp_path / "kind" / "key"
    assert stat.S_IMODE(entry.stat().st_mode) == 0o777 & ~mask
    assert {stat.S_IMODE(p.stat().st_mode) for p in entry.iterdir()} == {0o666 & ~mask}
    assert stat.S_IMODE((tmp_path / "run" / "summary.json").stat().st_mode) == 0o666 & ~mask


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
    assert json.loads((cache.path("kind", "key") / "meta.json").read_text()) == {
        "key": "key", "what": "a number", "files": {"value.json": hashlib.sha256(b"42").hexdigest()}}
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
    with pytest.raises(InputError, match="is not writable.*set cache_dir=") as error:
        DiskCache(blocked / "cache").get_or_build("kind", "key", lambda d: None, lambda d: None)
    in_readme(str(error.value), dir=blocked / "cache" / "kind")


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
    assert "model.pt changed since it was published" in caplog.text
    assert again.metrics["val/loss"] == pytest.approx(first.metrics["val/loss"], rel=1e-6)
