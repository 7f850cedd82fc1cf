"""The docs say what the code does: every command of the README's "Everyday
commands" runs (shortened), the loss tables are the generated one, the counts
and numbers the README and docs state are the configs' own, `--help` names
keys and sections that exist."""

import gzip
import json
import math
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Glob
from omegaconf import OmegaConf
from transformers import LlamaConfig

import gpo.losses.table as table
from conftest import ROOT, compose_train, run_script
from gpo.infra.config import group_options
from gpo.losses import GPOLoss, PreferenceLoss

README = ROOT / "README.md"
LOSS_NAMES = sorted(group_options("loss"))
PARSER = OverridesParser.create()

# ------------------------------------------------------------------ the loss table


def test_the_loss_tables_of_the_readme_and_docs_are_the_generated_one():
    generated = table.markdown()
    for path in (README, ROOT / "docs" / "losses.md"):
        assert table.written_table(path.read_text()) == generated, (
            f"{path.name}'s loss table differs from conf/loss: python src/losses.py --write {path.relative_to(ROOT)}")


class Cubic(GPOLoss):
    """A family the table has never seen, with no formula written down."""

    def f(self, t):
        return torch.relu(1 - t) ** 3


class Plain(PreferenceLoss):
    needs_reference = False
    formula = "-a_w"

    def forward(self, logps, beta):
        return -logps.policy_chosen


def test_any_new_conf_loss_entry_gets_its_row(monkeypatch):
    extra = {"cubic": OmegaConf.create({"_target_": "test_docs.Cubic"}),
             "plain": OmegaConf.create({"_target_": "test_docs.Plain"})}
    monkeypatch.setattr(table, "group_options", lambda group: {**group_options(group), **extra})
    rows = {line.split(" | ")[0]: line for line in table.markdown().splitlines()}
    # f = max(0, 1 - t)^3: f'(0) = -3, f''(0) = 6; t*(p) = (sqrt p - sqrt(1-p)) / (sqrt p + sqrt(1-p)), 0.101 at 0.6.
    assert rows["| `cubic`"] == ("| `cubic` | `Cubic` | see `test_docs.Cubic` | yes | -3 | 6 | 2 | none (numerical) "
                                 "| 0.101, 0.2679, 0.5 |")
    assert rows["| `plain`"] == "| `plain` | `Plain` | -a_w | **no** | - | - | - | - | - |"


def test_the_cli_rewrites_the_table_between_its_markers(tmp_path, capsys):
    from losses import main  # src/losses.py

    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n\n{table.BEGIN}\n| stale |\n{table.END}\n\nafter\n")
    assert main(["--write", str(doc)]) == 0
    assert doc.read_text() == f"before\n\n{table.block()}\n\nafter\n"
    assert main(["--write", str(doc)]) == 0 and "up to date" in capsys.readouterr().out
    (tmp_path / "none.md").write_text("no table here\n")
    assert main(["--write", str(tmp_path / "none.md")]) == 1
    assert main([]) == 0 and table.markdown() in capsys.readouterr().out


def test_the_readme_names_the_reference_free_losses_the_code_has():
    free = sorted(f"`{name}`" for name, config in group_options("loss").items()
                  if not table.instantiate(table.loss_config(config)).needs_reference)
    named = re.search(r"Reference-free losses \(([^)]*)\)", README.read_text()).group(1)
    assert sorted(named.split(", ")) == free


# ------------------------------------------------------------------ numbers and counts


def axis_size(value: str) -> int:
    """How many values a sweep axis (`glob(*)`, `a,b,c`, a single value) takes."""
    parsed = PARSER.parse_override(f"axis={value}").value()
    if isinstance(parsed, Glob):
        return len(parsed.filter(LOSS_NAMES))
    if isinstance(parsed, ChoiceSweep):
        return len(parsed.list)
    return 1


def script_defaults(path: Path) -> dict[str, str]:
    """name="${VAR:-default}" assignments of a sweep script."""
    return dict(re.findall(r'^(\w+)="\$\{\w+:-(.*)\}"', path.read_text(), flags=re.M))


def test_the_preset_sweeps_say_how_many_jobs_they_run():
    sizes = {}
    for name in ("families_beta", "overoptimisation", "paper_controlled"):
        text = (ROOT / "conf" / "sweep" / f"{name}.yaml").read_text()
        params = yaml.safe_load(text)["hydra"]["sweeper"]["params"]
        sizes[name] = math.prod(axis_size(str(v)) for v in params.values())
        assert f"= {sizes[name]} jobs" in text, name
    assert f"{len(LOSS_NAMES)} losses x 3 = {sizes['families_beta']} jobs" in (
        ROOT / "conf" / "sweep" / "families_beta.yaml").read_text()

    families = sizes["families_beta"]
    assert f"({len(LOSS_NAMES)} losses x 3 = {families} runs" in (ROOT / "sweeps" / "families_beta.sh").read_text()
    sweeps_md = (ROOT / "docs" / "sweeps.md").read_text()
    assert f"({len(LOSS_NAMES)} losses x 3 = {families} runs)" in sweeps_md
    assert f"the {families}-run grid" in sweeps_md
    assert f"until all {families} are done: {math.ceil(families / 8)} waves" in sweeps_md  # 8 GPUs
    assert f"({sizes['paper_controlled']} runs)" in sweeps_md


def test_the_sweep_scripts_and_the_reproduction_say_how_many_runs_they_run():
    over = ROOT / "sweeps" / "overoptimisation.sh"
    d = script_defaults(over)
    families = axis_size(d["losses"]) * axis_size(d["betas"]) * axis_size(d["seeds"])
    second = re.search(r"loss=(\S+) \"beta=\$temperature_betas\" seed=(\S+) \\\n\s+"
                       r"data.source.reward_temperature=(\S+)", over.read_text())
    temperature = (axis_size(second.group(1)) * axis_size(d["temperature_betas"]) * axis_size(second.group(2))
                   * axis_size(second.group(3)))
    assert f"= {families} runs" in over.read_text() and f"= {temperature} runs" in over.read_text()
    d = script_defaults(ROOT / "sweeps" / "overoptimisation_losses.sh")
    losses = axis_size(d["losses"]) * axis_size(d["betas"]) * axis_size(d["seeds"])
    assert f"= {losses} runs" in (ROOT / "sweeps" / "overoptimisation_losses.sh").read_text()
    d = script_defaults(ROOT / "sweeps" / "paper_controlled.sh")
    controlled = axis_size(d["losses"]) * axis_size(d["betas"]) * axis_size(d["seeds"])
    assert f"# {controlled} runs" in (ROOT / "sweeps" / "paper_controlled.sh").read_text()
    reproduction = (ROOT / "docs" / "reproduction.md").read_text()
    assert f"({families + temperature} runs)" in reproduction and f"({losses} runs)" in reproduction
    assert f"= {controlled} runs" in reproduction and f"{controlled} runs" in (ROOT / "docs" / "sweeps.md").read_text()
    for name in ("wandb_families_beta", "wandb_paper_controlled"):
        text = (ROOT / "sweeps" / f"{name}.yaml").read_text()
        values = [v["values"] for v in yaml.safe_load(text)["parameters"].values() if "values" in v]
        assert f"= {math.prod(map(len, values))} runs" in text, name


def test_the_readme_numbers_are_the_configs():
    text = " ".join(README.read_text().split())
    tiny, synthetic = OmegaConf.load(ROOT / "conf/model/tiny.yaml"), OmegaConf.load(ROOT / "conf/data/synthetic.yaml")
    testbed = OmegaConf.load(ROOT / "conf/experiment/overoptimisation.yaml").data.source.gold_reward
    cpu = OmegaConf.load(ROOT / "conf/trainer/cpu.yaml")
    source = synthetic.source
    assert f"{tiny.policy.config.num_hidden_layers}-layer Llama" in text
    assert f"Prompts are {source.prompt_length} random letters from a {source.alphabet_size}-letter alphabet" in text
    assert f"responses are {source.response_length} letters" in text
    assert f"the same count up to {testbed.cap} letters" in text
    assert f"each letter beyond costing {testbed.penalty:g}" in text
    assert f"stage ({tiny.sft.steps} steps)" in text and f"responses ({tiny.sft.steps} steps;" in text
    steps, every = cpu.max_steps, cpu.val_check_interval
    crash = int(0.8 * steps)
    resumed = crash // every * every
    assert (f"({steps} steps, a checkpoint every {every}) a crash at 80% (step {crash}) resumes from step {resumed} "
            f"and loses {crash - resumed} steps, {round(100 * (crash - resumed) / steps)}% of the run") in text


def test_the_run_directories_the_readme_names_are_ignored_by_git():
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    text = README.read_text()
    paths = {"outputs/runs/x", "outputs/multirun/x", "outputs/evaluations/x", ".cache/x", "runs/x",
             *(f"{d}/x" for d in re.findall(r"hydra\.run\.dir=([^<\s.]\S*)", text))}
    for path in sorted(paths):
        done = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert done.returncode == 0, f"{path} would show up in git status"


# ------------------------------------------------------------------ --help


def test_help_lists_the_main_keys_with_their_defaults_and_sections_that_exist(monkeypatch, run_in_process):
    done = run_in_process("src/train.py", "--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "loss: alphapo, apo_down, apo_zero" in text  # the config groups, from conf/
    main = text.split("== Main keys")[1].split("== Config groups")[0]
    keys = dict(re.findall(r"^  (\S+?)=(\S+)", main, flags=re.M))
    assert {"beta", "beta_scale", "seed", "resume", "loss", "reference", "data", "model", "trainer", "logger",
            "experiment", "sweep", "hparams_search", "cache_dir", "num_threads", "export.policy"} <= set(keys)
    monkeypatch.delenv("GPO_CACHE_DIR")  # the default, as a user without it set sees it
    cfg = compose_train([])
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices
    for key, value in keys.items():
        if key in choices and choices[key] is not None:
            assert choices[key] == value, key
        elif key in ("experiment", "sweep", "hparams_search"):
            assert value.startswith("<") or (ROOT / "conf" / key / f"{value}.yaml").exists(), key
        else:
            assert str(OmegaConf.select(cfg, key)).lower() == value.lower(), key
    readme_sections = set(re.findall(r"^## (.+)$", README.read_text(), flags=re.M))
    for reference in re.findall(r"\[(README: [^\]]+|docs/[^\]]+)\]", text):
        if reference.startswith("README: "):
            assert reference.removeprefix("README: ") in readme_sections, reference
        else:
            assert (ROOT / reference).exists(), reference


# ------------------------------------------------------------------ every everyday command runs

SHORT = ["trainer.max_steps=2", "trainer.val_check_interval=2", "+trainer.limit_val_batches=2",
         "callbacks.sample_evaluation.num_prompts=8", "++callbacks.sample_evaluation.trajectory_prompts=8",
         "callbacks.sample_evaluation.max_new_tokens=9", "trainer.log_every_n_steps=1",
         "callbacks.throughput.window_size=2"]


def everyday_commands() -> list[list[str]]:
    section = README.read_text().split("## Everyday commands\n\n", 1)[1].split("\n\n", 1)[0]
    return [shlex.split(command, comments=True) for command in section.replace("\\\n", " ").splitlines()]


def shortened(args: list[str], tmp: Path, i: int, made: dict) -> list[str] | None:
    """The command made small (2 steps, 8 prompts, sweeps of 2 losses x 2 betas, CSV logs: W&B has its own
    tests), its outputs in tmp/out<i>, the placeholders and hub names replaced by what the test made (`made`:
    the run and sweep directories of earlier commands); None: it cannot run here."""
    args = [a.replace("outputs/runs/<run>", str(made["run"])).replace("outputs/multirun/<date_time>",
                                                                        str(made["sweep"])) for a in args]
    if args[:2] == ["bash", "sweeps/overoptimisation.sh"]:
        return [*args, *SHORT]
    if args[1] == "src/evaluate.py":
        return [*args, f"hydra.run.dir={tmp / f'out{i}'}"]
    if args[1] != "src/train.py" or "--help" in args or "--cfg" in args:
        return args
    if "trainer=gpu" in args and not torch.cuda.is_available():
        return None
    replaced = {key.lstrip("+") for key in (s.split("=")[0] for s in SHORT)}
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key in replaced:
            continue
        if key == "loss" and ("," in value or value.startswith("glob(")):
            arg = "loss=dpo,slic"
        elif key == "beta" and "," in value:
            arg = f"beta={','.join(value.split(',')[:2])}"
        out.append(arg.replace("EleutherAI/pythia-160m", str(tmp / "tiny-hf")))
    out += [*SHORT, f"hydra.{'sweep' if '-m' in out else 'run'}.dir={tmp / f'out{i}'}"]
    if not any(a.startswith(("data=", "experiment=")) for a in out):
        out.append("data.source.num_pairs=400")
    if "data=jsonl" in out and "model=hf" not in out:
        out.append("model.sft.steps=5")  # your data's SFT stage, made short too
    if not any(a.startswith("logger=") for a in out):
        out.append("logger=csv")
    return out


def tiny_hf_model(path: Path) -> None:
    from gpo.model import tiny_causal_lm

    model, tokenizer = tiny_causal_lm(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                  num_attention_heads=2, num_key_value_heads=2,
                                                  max_position_embeddings=128))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def is_training_run(args: list[str]) -> bool:
    return args[1:2] == ["src/train.py"] and not {"--help", "--cfg"} & set(args)


@pytest.mark.slow
def test_every_everyday_command_runs(tmp_path, monkeypatch):
    """Each command of the README's "Everyday commands", shortened, in a copy of
    the repository (its outputs stay there), exits 0: the Python ones in this
    process, the shell script in its own."""
    repo = tmp_path / "repo"
    for part in ("src", "conf", "sweeps"):
        shutil.copytree(ROOT / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    with gzip.open(repo / "pairs.jsonl.gz", "wt") as f:
        for i in range(64):
            row = {"prompt": f"q{i % 7}:", "chosen": "abcd"[i % 4] * 5, "rejected": "wxyz"[i % 4] * 5}
            f.write(json.dumps(row) + "\n")
    tiny_hf_model(tmp_path / "tiny-hf")
    monkeypatch.chdir(repo)
    commands = everyday_commands()
    made = {"run": tmp_path / f"out{next(i for i, a in enumerate(commands) if is_training_run(a) and '-m' not in a)}",
            "sweep": tmp_path / f"out{next(i for i, a in enumerate(commands) if is_training_run(a) and '-m' in a)}"}
    skipped = []
    for i, args in enumerate(commands):
        command = shortened(args, tmp_path, i, made)
        if command is None:
            skipped.append(shlex.join(args))
            continue
        if command[0] == "python":
            status = run_script(repo / command[1], command[2:], monkeypatch)
            assert status == 0, shlex.join(command)
        else:  # the smoke-test grid its comment gives, one job at a time
            env = {**os.environ, "PYTHONPATH": str(repo / "src"), "LOSSES": "dpo", "BETAS": "1", "SEEDS": "1",
                   "TEMPERATURE_BETAS": "1", "JOBS": "1"}
            done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"{shlex.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert all("trainer=gpu" in command for command in skipped) and len(skipped) <= 1
