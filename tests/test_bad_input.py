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
from hydra.utils import instantiate as hydra_instantiate

from catalogue import in_readme, rows
from conftest import CONF, FAST, ROOT, SMALL_TASK, compose_train
from gpo.data import PreferenceDataModule
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
    in_readme(result.stderr.strip().splitlines()[-1])
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
    with pytest.raises(DataError, match=r"nowhere\.jsonl: data file not found") as error:
        train(_jsonl_cfg(tmp_path, tmp_path / "nowhere.jsonl"))
    in_readme(str(error.value), file=tmp_path / "nowhere.jsonl")


def test_a_missing_data_file_is_named_before_a_hub_model_is_fetched(tmp_path, monkeypatch):
    """A hub model name and a typo in the data path: the file is named at once, nothing is downloaded first."""
    def fetched(*args, **kwargs):
        raise AssertionError("the model was fetched before the data file was checked")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", fetched)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", fetched)
    cfg = compose_train(["model=hf", "model.policy.name_or_path=EleutherAI/pythia-160m", "data=jsonl",
                         f"data.source.train_files={tmp_path / 'pairs.jsonl'}", "logger=csv"], output_dir=tmp_path)
    with pytest.raises(DataError) as error:
        train(cfg)
    assert str(error.value) == f"{tmp_path / 'pairs.jsonl'}: data file not found"


@pytest.mark.parametrize("path", ["/nowhere/my-model", "./checkpoints/sft", "~/models/nowhere"])
def test_a_local_model_path_that_does_not_exist_is_one_line(tmp_path, monkeypatch, path):
    def fetched(*args, **kwargs):
        raise AssertionError("a local path was sent to the hub")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", fetched)
    cfg = compose_train(["model=hf", f"model.policy.name_or_path='{path}'", "logger=csv"], output_dir=tmp_path)
    with pytest.raises(InputError) as error:
        train(cfg)
    assert str(error.value) == (f"model.policy.name_or_path={path}: does not exist (a local path; a hub model is "
                                "named org/name)")
    in_readme(str(error.value), path=path)


def test_malformed_data_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": \n not json at all\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: cannot read as json"):
        train(_jsonl_cfg(tmp_path, bad))


def test_missing_column_is_named(tmp_path):
    data = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"a{i}", "chosen": "b", "loser": "c"} for i in range(16)])
    with pytest.raises(DataError, match=r"pairs\.jsonl( \[train\])?: missing column\(s\) \['rejected'\]") as error:
        train(_jsonl_cfg(tmp_path, data))
    in_readme(str(error.value), file=data)
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
    with pytest.raises(DataError, match=rf"pairs\.jsonl \[train\], row 3: {problem}") as error:
        train(_jsonl_cfg(tmp_path, data, "data.strict=true"))
    if problem == "'chosen' is empty":
        in_readme(str(error.value), file=data)
    summary = train(_jsonl_cfg(tmp_path, data, "data.val_fraction=0.25"))  # default: dropped, counted by reason
    assert summary.status == "finished"
    (reason, count), = summary.data["splits"]["train"]["dropped"].items()
    assert count == 1 and reason.startswith(problem)
    assert summary.data["splits"]["train"]["read"] == 16


def test_every_pair_unusable_is_one_clear_error(tmp_path):
    data = _write_jsonl(tmp_path / "pairs.jsonl", [dict(GOOD_ROW, rejected=GOOD_ROW["chosen"])] * 20)
    with pytest.raises(DataError) as error:
        train(_jsonl_cfg(tmp_path, data))
    assert str(error.value).endswith("all 20 pairs are unusable: chosen is identical to rejected: 20 (rows 0, 1, 2, 3, "
                                     "4, ...)")
    in_readme(str(error.value), file=data)


def test_a_one_row_data_file_is_one_line(tmp_path, no_compute):
    data = _write_jsonl(tmp_path / "pairs.jsonl", [GOOD_ROW])
    with pytest.raises(DataError) as error:
        train(_jsonl_cfg(tmp_path, data))
    assert str(error.value).startswith(f"{data} [train]: 1 usable pair: too few to hold out data.val_fraction=0.1")
    in_readme(str(error.value), file=data)


def test_messages_without_a_role_are_counted_by_kind_not_quoted(tmp_path, no_compute):
    """Every row's reason is the same kind ("has a message without a 'role'"), so 40 rows make one short reason
    with a count and a few row numbers; no message content reaches the line."""
    rows = [{"prompt": [{"content": f"secret question {i}"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]} for i in range(40)]
    data = _write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(DataError) as error:
        train(_jsonl_cfg(tmp_path, data))
    message = str(error.value)
    assert message == (f"{data} [train]: all 40 pairs are unusable: 'prompt' has a message without a 'role': 40 "
                       "(rows 0, 1, 2, 3, 4, ...)")
    assert "secret" not in message and len(message) < 300
    in_readme(message, file=data)


def test_a_column_mixing_text_and_messages_is_named(tmp_path, no_compute):
    rows = [dict(GOOD_ROW, prompt=f"Q{i}") for i in range(16)]
    rows[5]["chosen"] = [{"role": "assistant", "content": "4"}]
    data = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError) as error:
        train(_jsonl_cfg(tmp_path, data))
    assert str(error.value) == (f"{data} [train]: column 'chosen' mixes text (rows 0, 1, 2, 3, 4, ...) and lists of "
                                "messages (row 5): give every row in one form")
    in_readme(str(error.value), file=data)


def test_duplicated_pairs_are_counted_and_kept_out_of_validation(tmp_path, caplog):
    """40 distinct pairs, each written 3 times: a random held-out share would hold copies of training pairs
    (validation accuracy near 1 from memorisation). They are dropped from validation, counted, warned about."""
    rows = [dict(GOOD_ROW, prompt=f"Q{i}: 2+{i}?", chosen=f" {i + 2}", rejected=f" {i + 3}") for i in range(40)] * 3
    data = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = _jsonl_cfg(tmp_path, data, "data.val_fraction=0.25", "data.batch_size=4")
    datamodule = instantiate_data(cfg)
    splits = datamodule.report
    train_keys = {(r["prompt"], r["chosen"], r["rejected"]) for r in datamodule.text["train"]}
    validation = [(r["prompt"], r["chosen"], r["rejected"]) for r in datamodule.text["validation"]]
    assert not train_keys & set(validation)  # no leak
    assert splits["train"]["repeated"] == len(datamodule.text["train"]) - len(train_keys) > 0
    assert splits["validation"]["dropped"]["also a training pair"] == 30 - len(validation) > 0
    assert "training pairs repeat an earlier one (kept)" in caplog.text

    copies = _write_jsonl(tmp_path / "copies.jsonl", [GOOD_ROW] * 20)  # one pair, 20 times: nothing to validate on
    with pytest.raises(DataError) as error:
        instantiate_data(_jsonl_cfg(tmp_path, copies))
    assert str(error.value).startswith(f"{copies} [validation]: all 2 held-out pairs are also training pairs")
    in_readme(str(error.value), file=copies)


def test_max_length_too_small_for_any_response_token(tmp_path):
    cfg = compose_train(["data.max_length=16", "data.max_prompt_length=16", "logger=csv"], output_dir=tmp_path)
    with pytest.raises(InputError, match="too small to keep any response token"):
        train(cfg)


@pytest.mark.slow  # a subprocess or a long training: the full suite runs it, the inner loop does not
def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
    cfg = compose_train(
        ["loss._target_=test_bad_input.NaNAfter", "+loss.step=3", "logger=csv", *FAST, "trainer.max_steps=10"],
        output_dir=tmp_path,
    )
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 3") as error:
        train(cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()  # saved at step 2
    in_readme(str(error.value))


def test_a_job_with_a_nan_loss_records_it_and_closes_its_wandb_run_as_failed(tmp_path):
    """run_job, what `python src/train.py` runs (in this process: the CLI's own
    path is test_cli_reports_bad_beta...)."""
    cfg = compose_train(["loss._target_=test_bad_input.NaNAfter", "+loss.step=3", *FAST, "trainer.max_steps=10"],
                        output_dir=tmp_path)
    with pytest.raises(SystemExit, match="error: loss is nan at step 3"):  # one line, no traceback
        run_job(cfg)
    summary = RunSummary.read(tmp_path)
    assert summary.status == "failed" and "step 3" in summary.error
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    (run,) = [r for r in find_runs(str(tmp_path)) if os.path.isdir(r)]
    record = read_run(run)
    assert record["exit_code"] == 1
    assert any("train/loss" in step for step in record["history"])


def instantiate_data(cfg):
    _, tokenizer = hydra_instantiate(cfg.model.policy)
    datamodule = hydra_instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup("fit")
    return datamodule


@pytest.fixture
def no_compute(monkeypatch):
    """Bad input must fail before the SFT stage and before training."""
    def forbidden(*args, **kwargs):
        raise AssertionError("compute started before the bad input was caught")

    monkeypatch.setattr(InitialPolicy, "prepare", forbidden)
    monkeypatch.setattr(pl.Trainer, "fit", forbidden)


BAD_SETTINGS = [
    (["optimizer.lr=-1e-4"], "optimizer.lr must be a number >= 0, got -0.0001"),
    (["optimizer.lr=0"], "optimizer.lr=0 trains nothing (the policy stays where it starts); set allow_zero_lr=true "
                         "if that is what you want"),
    (["seed=-1"], "seed must be an integer in [0, 4294967295], got -1"),
    (["trainer.max_steps=-1"], "trainer.max_steps=-1 trains by epochs, but trainer.max_epochs is not set (Lightning "
                               "would train 1000 epochs): add +trainer.max_epochs=<n>, or set trainer.max_steps"),
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
    in_readme(str(error.value), data="synthetic task (seed 0, pairs seed 0)")


def test_lr_zero_runs_when_allowed(tmp_path):
    summary = train(compose_train(["optimizer.lr=0", "allow_zero_lr=true", "logger=csv", *FAST, *SMALL_TASK,
                                   "~callbacks.sample_evaluation"], output_dir=tmp_path))
    assert summary.finished and summary.metrics["train/rewards/margins"] == 0  # the policy never moved


def test_max_steps_minus_one_trains_by_epochs_when_they_are_given(tmp_path):
    summary = train(compose_train([*FAST, *SMALL_TASK, "trainer.max_steps=-1", "+trainer.max_epochs=1", "logger=csv",
                                   "~callbacks.sample_evaluation", "trainer.val_check_interval=6"],
                                  output_dir=tmp_path))
    assert summary.finished and summary.resumed_from_step is None
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12  # 360 / 32


def test_a_gpu_trainer_without_a_gpu_is_refused_before_data_preparation(tmp_path, no_compute, monkeypatch):
    def prepared(*args, **kwargs):
        raise AssertionError("data was prepared before the missing GPU was noticed")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine's truth, also on a GPU machine
    monkeypatch.setattr(PreferenceDataModule, "setup", prepared)
    with pytest.raises(InputError) as error:
        train(compose_train(["trainer=gpu", "logger=csv"], output_dir=tmp_path))
    assert str(error.value).startswith("trainer.accelerator=gpu (trainer=gpu, ddp, fsdp), but this machine has no GPU")
    in_readme(str(error.value))


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
                                         r"\(Not a directory\); set hydra.run.dir=<a writable directory>") as error:
        CheckOutputDir().on_run_start(cfg)
    in_readme(str(error.value.code), dir=f"{blocked}/run")


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
    with pytest.raises(DataError, match=message) as error:
        train(_jsonl_cfg(tmp_path, path))
    if name != "latin1.csv.gz":  # the README shows the .jsonl one
        in_readme(str(error.value), file=path)


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


def test_the_readme_catalogue_has_a_row_for_every_case():
    """At least 45 rows; the messages themselves are checked where they are made (catalogue.in_readme)."""
    assert len(rows()) >= 45
    assert all(row.count(" | ") >= 1 and row.endswith("|") for row in rows())
