"""Data-parallel training of one run through the real CLI: 2 CPU processes
(gloo, Lightning's subprocess launcher re-running src/train.py under Hydra)
against 1 process (in-process, same configs) with the same global batch and data order."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, compose_train
from gpo.run import train
from wandb_records import find_runs, read_run

COMMON = [
    "model.sft.steps=0", "data.source.num_pairs=320", "data.shuffle=false", "reference=frozen",
    "trainer.max_steps=5", "trainer.val_check_interval=5", "+trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "callbacks.sample_evaluation.num_prompts=6", "callbacks.sample_evaluation.max_new_tokens=8",
    "~callbacks.progress_bar", "optimizer.lr=1e-3", "scheduler.num_warmup_steps=0",
]


def cli(run_dir, *overrides, common=COMMON):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "src/train.py", *common, *overrides, f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = find_runs(str(run_dir))  # W&B: one run, written by rank 0 only
    return read_run(run), run


def in_process(run_dir, *overrides, common=COMMON):
    train(compose_train([*common, *overrides], output_dir=run_dir))
    (run,) = find_runs(str(run_dir))
    return read_run(run)


def curve(run, key):
    return [row[key] for row in run["history"] if key in row]


@pytest.mark.slow
def test_ddp_on_two_processes_matches_one_process_with_the_same_global_batch(tmp_path):
    single = in_process(tmp_path / "single", "data.batch_size=8")
    ddp, ddp_dir = cli(tmp_path / "ddp", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                       "trainer.precision=32-true", "data.batch_size=4")
    assert ddp["config"]["trainer"]["strategy"] == "ddp" and ddp["config"]["trainer"]["devices"] == 2
    for key in ("train/loss", "train/rewards/margins", "train/grad_norm"):
        assert len(curve(ddp, key)) == 5, key
        assert curve(ddp, key) == pytest.approx(curve(single, key), rel=1e-4, abs=1e-6), key
    margins = curve(ddp, "train/rewards/margins")
    assert margins[0] == 0 and min(abs(m) for m in margins[1:]) > 1e-4  # policy = reference at first, then it moves
    assert curve(ddp, "val/loss") == pytest.approx(curve(single, "val/loss"), rel=1e-4)

    # Rank 0 ran the sample evaluation and wrote the one summary; the table has the gold reward.
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["status"] == "finished" and "eval/win_rate" in summary["metrics"]
    table_path = ddp["summary"]["eval/samples/path"]
    table = json.loads((Path(ddp_dir) / "files" / table_path).read_text())
    assert table["columns"] == ["prompt", "policy", "reference", "gold_policy", "gold_reference"]
    assert len(table["data"]) == 6


@pytest.mark.slow  # a subprocess or a long training: the full suite runs it, the inner loop does not
def test_ddp_with_packing_and_length_grouping_matches_one_process(tmp_path):
    """Shuffled, length-grouped, packed batches: the same global batches on 1
    and 2 processes (each rank packs its share), so the same training curve."""
    rng = random.Random(0)
    words = lambda n: " ".join(rng.choice(["yes", "no", "maybe", "a", "longer one"]) for _ in range(n))  # noqa: E731
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": words(rng.randint(1, 6)), "chosen": words(rng.randint(1, 10)),
                                         "rejected": words(rng.randint(1, 10))}) + "\n" for _ in range(200)))
    common = [o for o in COMMON if not o.startswith(("data.", "callbacks.sample"))] + [
        "data=jsonl", f"data.source.train_files={pairs}", "data.max_length=96", "data.max_prompt_length=48",
        "~callbacks.sample_evaluation"]
    single = in_process(tmp_path / "single", "data.batch_size=8", common=common)
    ddp, _ = cli(tmp_path / "ddp", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                 "trainer.precision=32-true", "data.batch_size=4", common=common)
    for key in ("train/loss", "train/rewards/margins", "train/grad_norm"):
        assert len(curve(ddp, key)) == 5, key
        assert curve(ddp, key) == pytest.approx(curve(single, key), rel=1e-4, abs=1e-6), key


def test_fsdp_and_multi_node_configs_build_lightning_strategies():
    import hydra
    from pytorch_lightning.strategies import FSDPStrategy

    cfg = compose_train(["trainer=fsdp"])
    strategy = hydra.utils.instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and strategy.kwargs["use_orig_params"]  # LoRA: mixed requires_grad
    assert strategy.kwargs["auto_wrap_policy"].keywords == {"min_num_params": 10_000_000}
    cfg = compose_train(["trainer=ddp", "trainer.num_nodes=2", "trainer.devices=8"])
    assert (cfg.trainer.strategy, cfg.trainer.num_nodes, cfg.trainer.precision) == ("ddp", 2, "bf16-mixed")
