"""Bad input fails early with a clear message naming the problem and where."""

import bz2
import gzip
import json
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException

from conftest import CONF, FAST, ROOT, SMALL_TASK, compose_train
from gpo.data.sources import Preferences
from gpo.infra.errors import DataError, InputError
from gpo.infra.hydra_callbacks import CheckOutputDir
from gpo.infra.summary import RunSummary
from gpo.losses import Logistic
from gpo.reference import InitialPolicy
from gpo.run import run_job, train
from gpo.training import NonFiniteLossError
from wandb_records import find_runs, read_run


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


@pytest.mark.parametrize("beta", ["0", "-0.5", "nan", "inf", "abc"])
def test_beta_must_be_a_positive_number(tmp_path, beta):
    cfg = compose_train([f"beta={beta}", "logger=csv"], output_dir=tmp_path)
    with pytest.raises(InputError, match="beta must be a positive number"):
        train(cfg)


@pytest.mark.slow
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


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("chosen", "", "'chosen' is empty"),
    ("rejected", "  ", "'rejected' is empty"),
    ("prompt", 3, "'prompt' is not text"),
    ("chosen", None, "'chosen' is not text"),
    ("rejected", GOOD_ROW["chosen"], "chosen is identical to rejected"),
])
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


def test_a_job_with_a_nan_loss_records_it_and_closes_its_wandb_run_as_failed(tmp_path):
    """run_job, what `python src/train.py` runs (in this process: the CLI's own
    path is test_cli_reports_bad_beta...)."""
    cfg = compose_train(["loss._target_=test_bad_input.NaNAfter", "+loss.step=3", *FAST, "trainer.max_steps=10"],
                        output_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 3"):
        run_job(cfg)
    summary = RunSummary.read(tmp_path)
    assert summary.status == "failed" and "step 3" in summary.error
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    (run,) = [r for r in find_runs(str(tmp_path)) if os.path.isdir(r)]
    record = read_run(run)
    assert record["exit_code"] == 1
    assert any("train/loss" in step for step in record["history"])


@pytest.fixture
def no_compute(monkeypatch):
    """Bad input must fail before the SFT stage and before training."""
    def forbidden(*args, **kwargs):
        raise AssertionError("compute started before the bad input was caught")

    monkeypatch.setattr(InitialPolicy, "prepare", forbidden)
    monkeypatch.setattr(pl.Trainer, "fit", forbidden)


BAD_SETTINGS = [
    (["optimizer.lr=-1e-4"], "optimizer.lr must be a number >= 0, got -0.0001"),
    (["trainer.max_steps=0"], "trainer.max_steps must be a positive integer (or -1: train by epochs), got 0"),
    (["beta_scale=tayler"], "beta_scale must be one of none, taylor, link, got 'tayler'"),
    (["reference=none"], "loss=dpo needs reference log-probs; reference=none gives none"),
    (["reference=adapters"], "reference=adapters needs a policy with LoRA adapters (model/lora=default)"),
    (["data.val_fraction=1.5"], "data.val_fraction must be in (0, 1), got 1.5"),
    (["data.batch_size=0"], "data.batch_size must be >= 1, got 0"),
    (["data.batch_size=512", *SMALL_TASK], "360 training pairs, fewer than one batch (data.batch_size=512)"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_SETTINGS)
def test_bad_settings_fail_before_any_compute(tmp_path, no_compute, overrides, message):
    with pytest.raises(InputError) as error:
        train(compose_train([*overrides, "logger=csv"], output_dir=tmp_path))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_unknown_key_is_hydras_struct_error():
    with pytest.raises(ConfigCompositionException) as error:
        compose_train(["trainer.max_stepz=3"])
    assert "Key 'max_stepz' is not in struct" in str(error.value.__cause__ or error.value)


def test_an_unwritable_output_directory_is_one_line_before_the_job(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.run.dir={blocked}/run"], return_hydra_config=True)
    with pytest.raises(SystemExit, match=r"error: hydra.run.dir=.*a-file/run is not a writable directory "
                                         r"\(Not a directory\); set hydra.run.dir=<a writable directory>"):
        CheckOutputDir().on_run_start(cfg)


ROWS = [dict(GOOD_ROW, prompt=f"Q{i}: 2+2?") for i in range(16)]


def _write(path, text: bytes, opener=open):
    with opener(path, "wb") as handle:
        handle.write(text)
    return path


@pytest.mark.parametrize(("name", "content", "message"), [
    ("empty.jsonl", b"", r"empty\.jsonl: the file is empty"),
    ("empty.jsonl.gz", b"", r"empty\.jsonl\.gz: the file is empty \(after decompression\)"),
    ("latin1.jsonl", '{"prompt": "caf\u00e9", "chosen": "a", "rejected": "b"}\n'.encode("latin-1"),
     r"latin1\.jsonl: not UTF-8 text \(byte 0xe9 at offset 15\); convert it"),
    ("latin1.csv.gz", 'prompt,chosen,rejected\ncaf\u00e9,a,b\n'.encode("latin-1"),
     r"latin1\.csv\.gz: not UTF-8 text \(byte 0xe9 at offset 26\)"),
    ("pairs.txt", b"prompt chosen rejected\n", r"pairs\.txt: unsupported file type"),
])
def test_unreadable_data_files_are_named(tmp_path, no_compute, name, content, message):
    path = _write(tmp_path / name, content, gzip.open if name.endswith(".gz") else open)
    with pytest.raises(DataError, match=message):
        train(_jsonl_cfg(tmp_path, path))


def test_compressed_data_files_are_read_as_they_are(tmp_path):
    rows = [dict(row, chosen=" four", rejected=" five") for row in ROWS]  # words: CSV would read " 4" as a number
    jsonl = "".join(json.dumps(row) + "\n" for row in rows).encode()
    csv = ("prompt,chosen,rejected\n"
           + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\n" for r in rows)).encode()
    files = [_write(tmp_path / "pairs.jsonl.gz", jsonl, gzip.open),
             _write(tmp_path / "pairs.json.gz", jsonl, gzip.open),
             _write(tmp_path / "pairs.csv.gz", csv, gzip.open),
             _write(tmp_path / "pairs.jsonl.bz2", jsonl, bz2.open)]
    for path in files:
        read = Preferences(train_files=str(path)).preferences()
        assert len(read) == 16 and read[3]["prompt"] == "Q3: 2+2?" and read[3]["chosen"].strip() == "four", path.name
    summary = train(_jsonl_cfg(tmp_path, files[0], "data.val_fraction=0.25"))  # end to end, compressed
    assert summary.finished and summary.data["splits"]["train"]["kept"] == 12


def test_the_readme_table_has_a_row_for_every_case():
    section = (ROOT / "README.md").read_text().split("## Bad input")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| input")]
    assert len(rows) >= 20
    for _, message in BAD_SETTINGS:
        assert message in section, message
    for words in ["not UTF-8 text (byte 0xe9 at offset 15)", "the file is empty", "unsupported file type",
                  "Key 'max_stepz' is not in struct", "is not a writable directory", "cannot be read",
                  "no checkpoint to resume from", "chosen is identical to rejected", "loss is nan at step 3"]:
        assert words in section, words
