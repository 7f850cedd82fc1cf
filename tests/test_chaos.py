"""Chaos: one run killed with SIGKILL at 10 moments drawn at random (seeded)
from its SFT stage, reference log-probs, training, checkpoint writes and
export, and run again after each kill, ends with the uninterrupted run's final
metrics and evaluation trajectory, and a cache with no damaged entry and no
leftover of a killed build.

Tiny settings (30 SFT steps, 400 pairs, 24 training steps, a checkpoint every
4); the attempts are forks of one process that imported the libraries once
(tests/chaos_zygote.py), so the test costs the runs, not 11 interpreter starts."""

import json
import os
import random
import subprocess
import sys
import time

import pytest
from test_resume import assert_same_run

from conftest import ROOT
from gpo.infra.cache import damage
from gpo.infra.summary import RunSummary

ARGS = ["logger=csv", "num_threads=1", "model.sft.steps=30", "data.source.num_pairs=400",
        "data.source.num_demonstrations=1000", "trainer.max_steps=24", "trainer.val_check_interval=4",
        "+trainer.limit_val_batches=2", "callbacks.sample_evaluation.num_prompts=8",
        "callbacks.sample_evaluation.max_new_tokens=9", "callbacks.sample_evaluation.every_n_steps=8",
        "trainer.log_every_n_steps=1", "~callbacks.progress_bar", "~callbacks.throughput"]
SFT_STEPS, MAX_STEPS, EVERY = 30, 24, 4


def moments(seed: int) -> list[tuple[str, int]]:
    """10 moments in the order a run meets them, each reachable whatever the kills before it did: SFT and
    its cache write (nothing cached before them), the reference log-probs and their write, 4 kills in
    training (a step, or a checkpoint write: each moves the last checkpoint 4 steps on at most, so from
    any checkpoint c <= 12 the steps up to 7 and the 2nd write lie ahead), the export."""
    rng = random.Random(seed)
    first = sorted(rng.sample(range(1, SFT_STEPS + 1), 2))
    training = [("training", rng.randint(1, 2 * EVERY - 1)) for _ in range(2)] + \
               [("checkpoint", rng.randint(1, 2)) for _ in range(2)]
    rng.shuffle(training)
    return [("sft", first[0]), ("sft", first[1]), ("sft-write", 1), ("reference", rng.randint(1, 2)),
            ("reference-write", 1), *training, ("export", 1)]


@pytest.mark.slow
def test_a_run_killed_at_ten_random_moments_ends_as_the_uninterrupted_run(tmp_path):
    plan = moments(seed=2026)
    reference = [*ARGS, f"cache_dir={tmp_path / 'cache-uninterrupted'}", f"hydra.run.dir={tmp_path / 'uninterrupted'}"]
    chaos = [*ARGS, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    attempts = [{"args": reference, "moment": None}]
    attempts += [{"args": chaos, "moment": moment, "n": n} for moment, n in plan]
    attempts += [{"args": chaos, "moment": None}]  # the last re-run, left alone
    (tmp_path / "plan.json").write_text(json.dumps({"attempts": attempts}))
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "chaos_zygote.py"), str(tmp_path / "plan.json")],
                          env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}, capture_output=True,
                          text=True, timeout=1200)
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"chaos: {len(plan)} kills {plan}; {wall:.0f} s for {len(attempts)} attempts")
    assert outcomes == ["exit 0"] + ["killed by SIGKILL"] * len(plan) + ["exit 0"], list(zip(attempts, outcomes))

    resumed, uninterrupted = RunSummary.read(tmp_path / "run"), RunSummary.read(tmp_path / "uninterrupted")
    assert resumed.finished and uninterrupted.finished
    assert resumed.resumed_from_step == MAX_STEPS  # killed in the export: the complete checkpoint at the end
    assert_same_run(resumed, uninterrupted)
    assert [p["step"] for p in resumed.trajectory] == [0, 8, 16, 24]

    entries = [entry for kind in (tmp_path / "cache").iterdir() for entry in kind.iterdir()
               if not entry.name.startswith(".")]
    assert sorted(entry.parent.name for entry in entries) == ["reference_logps", "reference_samples", "sft"]
    assert [damage(entry) for entry in entries] == [None] * len(entries)
    assert not list((tmp_path / "cache").glob("*/.*.tmp-*"))  # no leftover of a killed build
    assert not list((tmp_path / "run").rglob("*.partial"))
