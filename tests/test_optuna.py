"""The Optuna study behind hparams_search=optuna (gpo.sweeps, the sweeper in
src/hydra_plugins/gpo_sweepers): the search space parsed from Hydra's sweep
grammar, the preset, resuming a study, telling outcomes, and a trial pruned
in a real training run. The sweeper run end to end (killed and resumed,
pruning through the launcher): tests/test_resume.py, tests/test_sweeps.py."""

import functools
import math
from types import SimpleNamespace

import hydra
import optuna
import pytest
import yaml
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import CONF, FAST, SMALL_TASK, compose_train
from gpo.infra.errors import InputError
from gpo.infra.summary import PRUNED, RunSummary
from gpo.run import train
from gpo.sweeps.pruning import OptunaPruning
from gpo.sweeps.study import (
    PRUNED_AT,
    RETRY_OF,
    SearchSpace,
    check_settings,
    open_storage,
    prepare_resume,
    sampler_for,
    study_lock,
    tell_outcome,
    trial_counts,
)
from hydra_plugins.gpo_sweepers.optuna_sweeper import OptunaSweeper

PRESET = ["beta=tag(log, interval(0.01, 2.0))", "optimizer.lr=tag(log, interval(1e-5, 1e-3))",
          "loss=choice(dpo, ipo, slic, exponential, truncated_quadratic, savage)"]


def test_the_search_space_reads_hydras_sweep_grammar():
    space = SearchSpace.parse([
        *PRESET, "x=interval(0, 1)", "n=range(1, 5)", "m=range(2, 11, 3)", "k=tag(log, range(1, 100))",
        "f=range(0.1, 0.5, 0.1)", "order=shuffle(range(3))", "pick=shuffle(choice(c, a, b))",
        "+extra=choice(a, 'b c', true)",
        "seed=3", "~callbacks.progress_bar", "beta=0.5",  # the command line's beta wins over the preset's sweep
    ])
    d = space.distributions
    assert d["optimizer.lr"] == FloatDistribution(1e-5, 1e-3, log=True)
    assert d["loss"] == CategoricalDistribution(["dpo", "ipo", "slic", "exponential", "truncated_quadratic", "savage"])
    assert d["x"] == FloatDistribution(0.0, 1.0)
    assert d["n"] == IntDistribution(1, 4)  # Hydra's range excludes its end
    assert d["m"] == IntDistribution(2, 8, step=3)
    assert d["k"] == IntDistribution(1, 99, log=True)
    assert isinstance(d["f"], FloatDistribution) and d["f"].step == 0.1 and d["f"].high == pytest.approx(0.4)
    assert d["order"] == IntDistribution(0, 2) and d["pick"] == CategoricalDistribution(["c", "a", "b"])
    assert d["extra"] == CategoricalDistribution(["a", "b c", True])
    assert "beta" not in d and space.fixed == ["seed=3", "~callbacks.progress_bar", "beta=0.5"]

    params = {"optimizer.lr": 3e-4, "loss": "ipo", "x": 0.25, "n": 2, "m": 5, "k": 17, "f": 0.2, "order": 1,
              "pick": "a", "extra": "b c"}
    lines = space.overrides(params)
    assert lines[-3:] == space.fixed and "+extra=b\\ c" in lines
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(lines[:-3])}
    assert parsed == params  # what a job receives is exactly what the trial sampled


def test_glob_sweeps_the_options_of_a_config_group():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        space = SearchSpace.parse(["loss=glob(*, exclude=[sft, ipo*])"], GlobalHydra.instance().config_loader())
    choices = space.distributions["loss"].choices
    assert {"dpo", "savage", "simpo"} <= set(choices) and not {"sft", "ipo", "ipo_length_normalised"} & set(choices)


@pytest.mark.parametrize("line, problem", [
    ("beta=tag(cheap, interval(0.1, 1))", "unknown tag cheap"),
    ("loss=tag(log, choice(dpo, ipo))", "`log` applies to interval"),
    ("beta=tag(log, interval(0, 1))", "positive lower end"),
    ("beta=tag(log, range(0.1, 1, 0.1))", "integers with step 1"),
    ("n=range(5, 1)", "range is empty"),
])
def test_the_search_space_rejects_what_optuna_cannot_sample(line, problem):
    with pytest.raises(InputError, match=problem) as error:
        SearchSpace.parse([line])
    assert line in str(error.value)  # names the override


def test_the_preset_composes_with_its_sweeper_sampler_pruner_and_callback(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    cfg = compose_train(["hparams_search=optuna", f"hydra.sweeper.storage={storage}"])
    sweeper = hydra.utils.instantiate(HydraConfig.get().sweeper)
    assert type(sweeper).__name__ == "OptunaSweeper" and sweeper.storage == storage and sweeper.n_trials == 30
    assert sweeper.sampler.func is optuna.samplers.TPESampler  # made by the sweeper (sampler_for)
    assert isinstance(sweeper.pruner, optuna.pruners.MedianPruner)
    space = SearchSpace.parse([f"{k}={v}" for k, v in sweeper.params.items()])
    assert set(space.distributions) == {"beta", "optimizer.lr", "loss"} and space.distributions["beta"].log
    assert list(cfg.optimized_metric) == ["eval/win_rate", "val/logps/chosen"]  # never ranking accuracy
    assert cfg.callbacks.sample_evaluation.every_n_steps == 50
    callback = hydra.utils.instantiate(cfg.callbacks.optuna_pruning)
    assert isinstance(callback, OptunaPruning) and not callback.active  # no trial: a run outside a study
    assert callback.storage == storage and isinstance(callback.pruner, optuna.pruners.MedianPruner)

    cfg = compose_train(["hparams_search=optuna", f"hydra.sweeper.storage={storage}",
                         "hydra/sweeper/pruner=HyperbandPruner", "hydra/sweeper/sampler=RandomSampler",
                         "trainer.max_steps=120", "++optuna_trial=4"])
    callback = hydra.utils.instantiate(cfg.callbacks.optuna_pruning)
    assert callback.active and callback.number == 4
    assert isinstance(callback.pruner, optuna.pruners.HyperbandPruner) and callback.pruner._max_resource == 120
    assert hydra.utils.instantiate(HydraConfig.get().sweeper).sampler.func is optuna.samplers.RandomSampler
    cfg = compose_train(["hparams_search=optuna", f"hydra.sweeper.storage={storage}", "hydra/sweeper/pruner=NopPruner"])
    assert isinstance(hydra.utils.instantiate(cfg.callbacks.optuna_pruning).pruner, optuna.pruners.NopPruner)


def new_study(tmp_path, **kwargs) -> optuna.Study:
    return optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/db/optuna.db"), study_name="gpo",
                               direction="maximize", **kwargs)


SPACE = {"beta": FloatDistribution(0.01, 2.0, log=True), "loss": CategoricalDistribution(["dpo", "ipo"])}


def test_a_killed_study_resumes_to_its_total_running_interrupted_trials_again_first(tmp_path):
    study = new_study(tmp_path)
    trials = [study.ask(SPACE) for _ in range(4)]
    study.tell(trials[0], 0.6)
    study.tell(trials[1], state=TrialState.FAIL)  # a genuine failure: it counts
    trials[3].set_user_attr(PRUNED_AT, 4)  # pruned, but the sweep died before telling it
    trials[3].report(0.3, 4)
    # trials[2] was running when the sweep was killed
    assert prepare_resume(study, n_trials=6) == 3  # 0, 1 and 3 are done; 2 runs again, and two new ones
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.PRUNED, TrialState.WAITING]
    assert study.trials[3].value == 0.3  # a pruned trial keeps its last reported value
    assert study.trials[4].user_attrs[RETRY_OF] == 2

    assert prepare_resume(study, n_trials=6) == 3  # killed again before the retry ran: nothing enqueued twice
    assert len(study.trials) == 5
    retry = study.ask(SPACE)
    assert retry.number == 4 and retry.params == trials[2].params  # the interrupted trial first
    study.tell(retry, 0.7)
    assert trial_counts(study) == {"complete": 2, "pruned": 1, "fail": 1, "interrupted": 1}  # 2 is not a failure
    assert prepare_resume(study, n_trials=3) == 0  # done: a smaller total runs nothing


def test_a_resumed_study_samples_new_points_reproducibly(tmp_path):
    """Made again with its seed, the sampler of a resumed study would repeat
    the first run's random points; sampler_for moves the seed on by the
    trials the study holds."""
    factory = functools.partial(optuna.samplers.RandomSampler, seed=0)
    study = new_study(tmp_path, sampler=sampler_for(open_storage(f"sqlite:///{tmp_path}/db/optuna.db"), "gpo",
                                                    factory))
    first = [study.ask(SPACE).params for _ in range(3)]
    storage = open_storage(f"sqlite:///{tmp_path}/db/optuna.db")

    def resumed_points():
        resumed = optuna.load_study(study_name="gpo", storage=storage, sampler=sampler_for(storage, "gpo", factory))
        return [resumed.ask(SPACE).params for _ in range(3)]

    points = resumed_points()
    assert not any(point in first for point in points)
    fresh = optuna.create_study(sampler=factory(seed=3))  # what the resumed study drew: seed 0 + 3 trials
    assert points == [fresh.ask(SPACE).params for _ in range(3)]


def test_a_resumed_study_must_keep_its_settings(tmp_path):
    study = new_study(tmp_path)
    settings = {"objective": ["eval/win_rate"], "overrides": ["beta=interval(0.1, 1)", "trainer.max_steps=100"]}
    check_settings(study, settings)
    check_settings(study, settings)  # the same command again
    changed = {**settings, "overrides": ["beta=interval(0.1, 1)", "trainer.max_steps=300"]}
    with pytest.raises(InputError, match="trainer.max_steps=100.*trainer.max_steps=300"):
        check_settings(study, changed)


def test_one_sweep_at_a_time_on_a_study(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    with study_lock(url), pytest.raises(InputError, match="another sweep is running the study"), study_lock(url):
        pass
    with study_lock(url):  # released when the first sweep ends
        pass


def job_return(value, status=JobStatus.COMPLETED) -> JobReturn:
    job = JobReturn(status=status)
    job.return_value = value
    return job


def test_each_job_outcome_becomes_the_trials_state(tmp_path, caplog):
    study = new_study(tmp_path)
    outcomes = [job_return(0.625), job_return(None), job_return(math.nan), job_return(RuntimeError("boom"),
                                                                                      JobStatus.FAILED)]
    outcomes[1].hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": "sweep/1_dpo-beta0.1"}}})
    trials = [study.ask(SPACE) for _ in outcomes]
    states = [tell_outcome(study, trial, job) for trial, job in zip(trials, outcomes)]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.FAIL]
    assert [t.state for t in study.trials] == states and study.trials[0].value == 0.625
    assert "Trial 1 failed: the job returned None as its objective (sweep/1_dpo-beta0.1" in caplog.text
    assert "Trial 3 failed (?): RuntimeError: boom" in caplog.text


class FakeLauncher:
    """Stands in for a Hydra launcher: records each batch, and returns for
    each job what `objective` makes of its overrides."""

    def __init__(self, objective):
        self.objective, self.batches = objective, []

    def launch(self, batch, initial_job_idx):
        self.batches.append((initial_job_idx, batch))
        return [job_return(self.objective(dict(line.split("=", 1) for line in job))) for job in batch]


def sweeper_with(launcher, tmp_path, **settings) -> OptunaSweeper:
    sweeper = OptunaSweeper(**{
        "sampler": functools.partial(optuna.samplers.RandomSampler, seed=0), "pruner": None,
        "direction": "maximize", "storage": f"sqlite:///{tmp_path}/optuna.db", "study_name": "gpo",
        "params": {"beta": "tag(log, interval(0.01, 2.0))"}, **settings})
    sweeper.config = OmegaConf.create({"optimized_metric": "eval/win_rate", "hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweeper.hydra_context, sweeper.launcher = SimpleNamespace(config_loader=None), launcher
    sweeper.validate_batch_is_legal = lambda batch: None  # no Hydra config to compose against here
    return sweeper


def test_the_sweeper_hands_batches_of_trials_to_the_launcher_and_tells_their_values(tmp_path):
    launcher = FakeLauncher(lambda job: -abs(math.log(float(job["beta"]) / 0.1)))
    sweeper_with(launcher, tmp_path, n_trials=5, n_jobs=2)._sweep(["seed=1"])
    assert [(first, len(batch)) for first, batch in launcher.batches] == [(0, 2), (2, 2), (4, 1)]
    jobs = [job for _, batch in launcher.batches for job in batch]
    assert [job[-1] for job in jobs] == [f"++optuna_trial={n}" for n in range(5)]  # job number = trial number
    assert all(job[1] == "seed=1" for job in jobs)
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    values = [launcher.objective(dict(line.split("=", 1) for line in job)) for job in jobs]
    assert results["best_value"] == max(values) and results["trials"]["complete"] == 5


def test_the_sweeper_stops_once_too_many_trials_failed(tmp_path):
    launcher = FakeLauncher(lambda job: None)  # e.g. none of optimized_metric measured
    with pytest.raises(RuntimeError, match="4 of its 8 trials failed"):
        sweeper_with(launcher, tmp_path, n_trials=8, n_jobs=2, max_failure_rate=0.25)._sweep([])
    assert len(launcher.batches) == 2  # 2 failures are allowed (0.25 x 8), the third stops it


def test_a_pruned_trial_stops_training_early_and_is_recorded_as_pruned(tmp_path):
    """A real run of the preset as trial 0 of a study whose pruner stops any
    trial below a win rate of 1.01 (so, at its first report): training stops
    at step 2 of 8, the summary says pruned, and the sweeper's tell records
    PRUNED with the reported value."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(storage=storage, study_name="gpo", direction="maximize")
    trial = study.ask(SPACE)
    cfg = compose_train([
        "hparams_search=optuna", *FAST, *SMALL_TASK, "logger=csv", "trainer.max_steps=8",
        "callbacks.sample_evaluation.every_n_steps=2", f"hydra.sweeper.storage={storage}",
        f"beta={trial.params['beta']}", f"loss={trial.params['loss']}", f"++optuna_trial={trial.number}",
        "callbacks.optuna_pruning.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 1.01}",
    ], output_dir=tmp_path / "run")
    summary = train(cfg)
    assert summary.status == PRUNED and RunSummary.read(tmp_path / "run").status == PRUNED
    assert summary.stages["optuna"]["pruned_at_step"] == 2 and summary.stages["optuna"]["metric"] == "eval/win_rate"
    assert max(point["step"] for point in summary.trajectory) == 2  # stopped at step 2, not 8
    reported = study.trials[0]
    assert reported.state == TrialState.RUNNING and reported.user_attrs[PRUNED_AT] == 2
    assert reported.intermediate_values == {2: summary.trajectory[1]["eval/win_rate"]}

    assert tell_outcome(study, trial, job_return(summary.objective(cfg.optimized_metric))) == TrialState.PRUNED
    assert study.trials[0].state == TrialState.PRUNED and study.trials[0].value == reported.intermediate_values[2]


def test_a_run_whose_study_is_gone_trains_to_the_end_unpruned(tmp_path):
    cfg = compose_train(["hparams_search=optuna", *FAST, *SMALL_TASK, "logger=csv",
                         "callbacks.sample_evaluation.every_n_steps=2",
                         f"hydra.sweeper.storage=sqlite:///{tmp_path}/missing.db", "++optuna_trial=0"],
                        output_dir=tmp_path / "run")
    summary = train(cfg)
    assert summary.finished and summary.stages["optuna"]["reported"] == []
    assert max(point["step"] for point in summary.trajectory) == 4


def test_the_objective_is_the_first_listed_metric_the_run_measured():
    summary = RunSummary("dpo", 0.1, 0, metrics={"val/logps/chosen": -9.5, "val/loss": 0.6})
    assert summary.objective(["eval/win_rate", "val/logps/chosen"]) == -9.5
    assert summary.objective("val/loss") == 0.6
    assert summary.objective("eval/win_rate") is None and summary.objective(None) is None
