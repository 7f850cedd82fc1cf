"""Bad input fails early with a clear message naming the problem and where."""

import json
import os
import subprocess
import sys

import pytest
import torch
from hydra.errors import MissingConfigException

from conftest import FAST, ROOT, compose_train
from gpo.errors import DataError, InputError
from gpo.losses import Logistic
from gpo.module import NonFiniteLossError
from gpo.summary import RunSummary
from gpo.wandb_offline import find_runs, read_run
from gpo.run import train


class NaNAfter(Logistic):
    """DPO whose loss turns NaN from training step `step` on (validation runs without grad and is not counted)."""

    def __init__(self, step: int):
        super().__init__()
        self.step, self.calls = step, 0

    def f(self, t):
        self.calls += torch.is_grad_enabled()
        return super().f(t) * (torch.nan if self.calls > self.step else 1.0)


def cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT / 'src'}"}
    return subprocess.run([sys.executable, "src/train.py", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("beta", ["0", "-0.5", "nan", "abc"])
def test_beta_must_be_a_positive_number(tmp_path, beta):
    cfg = compose_train([f"beta={beta}", "logger=csv"], output_dir=tmp_path)
    with pytest.raises(InputError, match="beta must be a positive number"):
        train(cfg)


def test_cli_reports_bad_beta_in_one_line(tmp_path):
    result = cli("beta=abc", "logger=csv", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "error: beta must be a positive number, got 'abc'" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_unknown_loss_lists_the_choices():
    with pytest.raises(MissingConfigException) as error:
        compose_train(["loss=dpoo"])
    message = str(error.value)
    assert "loss/dpoo" in message and all(name in message for name in ["dpo", "ipo", "savage", "slic"])


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


GOOD_ROW = {"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5"}


def _jsonl_cfg(tmp_path, train_file, *extra):
    return compose_train(
        ["data=jsonl", f"data.source.train_files={train_file}", "logger=csv", "model.sft.steps=0", *FAST, *extra],
        output_dir=tmp_path,
    )


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.jsonl: data file not found"):
        train(_jsonl_cfg(tmp_path, tmp_path / "nowhere.jsonl"))


def test_malformed_data_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": \n not json at all\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: cannot read as json"):
        train(_jsonl_cfg(tmp_path, bad))


def test_missing_column_is_named(tmp_path):
    data = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"a{i}", "chosen": "b", "loser": "c"} for i in range(16)])
    with pytest.raises(DataError, match=r"pairs\.jsonl( \[train\])?: missing column\(s\) \['rejected'\]"):
        train(_jsonl_cfg(tmp_path, data))
    # ...and a column mapping fixes it.
    summary = train(_jsonl_cfg(tmp_path, data, "data.source.rejected_column=loser", "data.val_fraction=0.5"))
    assert summary.status == "finished"


@pytest.mark.parametrize(("field", "value", "problem"), [("chosen", "", "'chosen' is empty"),
                                                         ("rejected", "  ", "'rejected' is empty"),
                                                         ("prompt", 3, "'prompt' is not text"),
                                                         ("chosen", None, "'chosen' is not text"),
                                                         ("rejected", GOOD_ROW["chosen"], "chosen is identical to rejected")])
def test_unusable_row_is_dropped_and_counted_or_named_with_strict(tmp_path, field, value, problem):
    rows = [dict(GOOD_ROW, prompt=f"Q{i}: 2+2?") for i in range(16)]
    rows[3][field] = value
    data = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError, match=rf"pairs\.jsonl \[train\], row 3: {problem}"):
        train(_jsonl_cfg(tmp_path, data, "data.strict=true"))
    summary = train(_jsonl_cfg(tmp_path, data, "data.val_fraction=0.25"))  # default: dropped, counted by reason
    assert summary.status == "finished"
    (reason, count), = summary.data["splits"]["train"]["dropped"].items()
    assert count == 1 and reason.startswith(problem)
    assert summary.data["splits"]["train"]["read"] == 16


def test_every_pair_unusable_is_one_clear_error(tmp_path):
    data = _write_jsonl(tmp_path / "pairs.jsonl", [dict(GOOD_ROW, rejected=GOOD_ROW["chosen"])] * 20)
    with pytest.raises(DataError, match=r"all 20 pairs are unusable: \{'chosen is identical to rejected': 20\}"):
        train(_jsonl_cfg(tmp_path, data))


def test_max_length_too_small_for_any_response_token(tmp_path):
    cfg = compose_train(["data.max_length=16", "data.max_prompt_length=16", "logger=csv"], output_dir=tmp_path)
    with pytest.raises(InputError, match="too small to keep any response token"):
        train(cfg)


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
    cfg = compose_train(
        ["loss._target_=test_bad_input.NaNAfter", "+loss.step=3", "logger=csv", *FAST, "trainer.max_steps=10"],
        output_dir=tmp_path,
    )
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 3"):
        train(cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()  # saved at step 2


def test_cli_nan_loss_closes_wandb_run_as_failed(tmp_path):
    result = cli("loss._target_=test_bad_input.NaNAfter", "+loss.step=3", *FAST, "trainer.max_steps=10",
                 f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0 and "loss is nan at step 3" in result.stderr
    summary = RunSummary.read(tmp_path)
    assert summary.status == "failed" and "step 3" in summary.error
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    (run,) = [r for r in find_runs(str(tmp_path)) if os.path.isdir(r)]
    record = read_run(run)
    assert record["exit_code"] == 1
    assert any("train/loss" in step for step in record["history"])
