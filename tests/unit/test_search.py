"""distill-search's parts without training: the space grammar, the settings, the study's
bookkeeping (resume, interrupted trials, seeds) and the report, on hand-made Optuna trials."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from distill.errors import ConfigError
from distill.interruption import RunInterrupted, stop_process
from distill.search import trials
from distill.search.prepare import SearchPlan, split_overrides
from distill.search.report import (
    FAILED,
    INTERRUPTED_STATUS,
    OVER,
    WITHIN,
    render_markdown,
    search_result,
    write_search_report,
)
from distill.search.settings import Budget, SearchSettings
from distill.search.space import Dimension, parse_space
from distill.search.study import (
    INTERRUPTED,
    RETRY_OF,
    confirm_pick,
    counted_trials,
    make_sampler,
    open_study,
    optimize,
    reclaim_interrupted,
    search_lock,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- the space ----------------------------------------------------------------------------


def test_each_sweep_form_becomes_its_optuna_distribution():
    dimensions = parse_space(
        {
            "loss.kd.temperature": "tag(log, interval(1, 8))",
            "loss.kd.weight": "interval(0.1, 0.9)",
            "pruning.schedule.final_sparsity": "range(0.3, 0.85, 0.05)",
            "trainer.max_epochs": "range(10, 40, 10)",
            "quantization.weight_bits": "choice(7, 8)",
            "pruning": "channel_l1,channel_taylor",
        }
    )
    by_key = {dimension.key: dimension for dimension in dimensions}
    assert by_key["loss.kd.temperature"].distribution == FloatDistribution(1.0, 8.0, log=True)
    assert by_key["loss.kd.weight"].distribution == FloatDistribution(0.1, 0.9)
    # range excludes its stop, as Hydra's (and Python's) does: 0.3 .. 0.8 in steps of 0.05.
    assert by_key["pruning.schedule.final_sparsity"].distribution == FloatDistribution(
        0.3, 0.8, step=0.05
    )
    assert by_key["trainer.max_epochs"].distribution == IntDistribution(10, 30, step=10)
    assert by_key["quantization.weight_bits"].distribution == CategoricalDistribution([7, 8])
    assert by_key["pruning"].distribution == CategoricalDistribution(
        ["channel_l1", "channel_taylor"]
    )
    assert by_key["pruning"].is_group and not by_key["loss.kd.weight"].is_group


def test_a_sampled_float_is_written_with_ten_significant_digits():
    dimension = Dimension("pruning.schedule.final_sparsity", FloatDistribution(0.3, 0.8, step=0.05))
    assert dimension.override(0.30000000000000004) == "pruning.schedule.final_sparsity=0.3"
    assert dimension.override(0.123456789012345) == "pruning.schedule.final_sparsity=0.123456789"
    assert Dimension("x", CategoricalDistribution([7, 8])).override(7) == "x=7"


def test_edges_and_membership():
    sparsity = Dimension("s", FloatDistribution(0.3, 0.8, step=0.05))
    assert sparsity.extremes() == [0.3, 0.8]
    assert sparsity.contains(0.5) and not sparsity.contains(0.52) and not sparsity.contains(0.9)
    assert not sparsity.contains("0.5") and not sparsity.contains(True)
    bits = Dimension("b", CategoricalDistribution([7, 8]))
    assert bits.extremes() == [7, 8] and bits.contains(8) and not bits.contains(6)
    epochs = Dimension("e", IntDistribution(10, 30, step=10))
    assert epochs.contains(20) and not epochs.contains(25) and not epochs.contains(20.5)


@pytest.mark.parametrize(
    ("sweep", "allowed"),
    [
        ("range(5, 5)", "two or more values"),
        ("range(0.5, 0.3, 0.1)", "two or more values"),
        ("range(1, 10, 0)", "a positive step"),
        ("interval(3, 1)", "low is below its high"),
        ("interval(2, 2)", "low is below its high"),
        ("tag(log, interval(0, 8))", "positive bounds for a log scale"),
        ("choice(7)", "two or more choices"),
        ("choice(7, 7)", "distinct choices"),
        ("choice([1,2], [3])", "single values"),
        ("interval(1, ", "Hydra's grammar"),
    ],
)
def test_an_empty_or_malformed_dimension_is_refused_naming_its_key(sweep, allowed):
    with pytest.raises(ConfigError, match=allowed) as error:
        parse_space({"loss.kd.temperature": sweep})
    assert error.value.field.startswith("search.space")
    assert "loss.kd.temperature" in str(error.value)


def test_a_key_searched_twice_is_refused():
    with pytest.raises(ConfigError, match="each key searched once"):
        parse_space(["x=interval(0,1)", "x=choice(1,2)"])


# --- the command line ----------------------------------------------------------------------


def test_overrides_are_sorted_into_search_settings_sweeps_and_fixed_values():
    search, sweeps, fixed = split_overrides(
        [
            "data=digits",
            "loss.kd.temperature=tag(log,interval(1,4))",
            "search.n_trials=3",
            "pruning=channel_l1,channel_taylor",
            "loss.kd.weight=0.5",
        ]
    )
    assert search == ["+search=compress_under_budget", "search.n_trials=3"]
    assert sweeps == [
        "loss.kd.temperature=tag(log,interval(1,4))",
        "pruning=channel_l1,channel_taylor",
    ]
    assert fixed == ["data=digits", "loss.kd.weight=0.5"]
    # Choosing another search config replaces the default one.
    assert split_overrides(["search=mine"])[0] == ["+search=mine"]


# --- the settings --------------------------------------------------------------------------


def settings_node(**changes):
    node = {
        "n_trials": 4,
        "objective": "artifacts.onnx_int8.test_acc",
        "direction": "maximize",
        "budget": {"metric": "artifacts.onnx_int8.bytes", "max": 9000},
        "space": {"loss.kd.temperature": "interval(1, 8)"},
        "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 0},
        "dir": "/tmp/x",
        "start_from_base": True,
    }
    node.update(changes)
    return OmegaConf.create(node)


def test_settings_are_read_once_and_typed():
    settings = SearchSettings.from_config(settings_node())
    assert settings.n_trials == 4 and settings.budget == Budget("artifacts.onnx_int8.bytes", 9000)
    assert settings.budget.excess(9500) == 500 and settings.budget.excess(8000) == -1000
    assert SearchSettings.from_config(settings_node(budget=None)).budget is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"n_trials": 0}, "search.n_trials"),
        ({"n_trials": "many"}, "search.n_trials"),
        ({"direction": "up"}, "search.direction"),
        ({"objective": "accuracy"}, "search.objective"),
        ({"budget": {"metric": "artifacts.onnx_int8.bytes"}}, "search.budget"),
        ({"budget": {"metric": "artifacts.onnx_int8.bytes", "max": "small"}}, "search.budget.max"),
        ({"budget": {"metric": "bytes", "max": 1}}, "search.budget.metric"),
        ({"sampler": {"seed": 0}}, "search.sampler"),
        ({"start_from_base": "yes"}, "search.start_from_base"),
        ({"trials": 3}, "search.trials"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(changes, field):
    with pytest.raises(ConfigError) as error:
        SearchSettings.from_config(settings_node(**changes))
    assert error.value.field == field


# --- the study -----------------------------------------------------------------------------


BUDGET = Budget("b.bytes", 100.0)


def make_plan(tmp_path: Path, budget: Budget | None = BUDGET, **changes):
    node = settings_node(dir=str(tmp_path), **changes)
    settings = SearchSettings.from_config(node)
    settings = SearchSettings(**{**vars(settings), "budget": budget})
    dimensions = [
        Dimension("loss.kd.temperature", FloatDistribution(1.0, 8.0)),
        Dimension("quantization.weight_bits", CategoricalDistribution([7, 8])),
    ]
    base_point = {"loss.kd.temperature": 4.0, "quantization.weight_bits": 8}
    return SearchPlan(settings, dimensions, ["data=digits"], base_point)


def test_a_new_study_starts_from_the_base_config_and_a_changed_search_is_refused(tmp_path):
    plan = make_plan(tmp_path)
    study = open_study(plan)
    (first,) = study.get_trials(states=(TrialState.WAITING,))
    # Optuna keeps an enqueued trial's values as its fixed params until they are suggested.
    assert first.system_attrs["fixed_params"] == {
        "loss.kd.temperature": 4.0,
        "quantization.weight_bits": 8,
    }
    assert first.user_attrs["base"] is True
    # The same search loads the same study and queues nothing more.
    assert len(open_study(plan).trials) == 1
    changed = make_plan(tmp_path, budget=Budget("b.bytes", 50.0))
    with pytest.raises(ConfigError, match="its budget was") as error:
        open_study(changed)
    assert error.value.field == "search.dir"


def test_interrupted_trials_are_failed_marked_and_queued_again(tmp_path):
    plan = make_plan(tmp_path, start_from_base=False)
    study = open_study(plan)
    study.add_trial(finished_trial(0.9, 80.0))
    killed = study.ask()  # a trial whose process died: left RUNNING in the storage
    killed.suggest_float("loss.kd.temperature", 1.0, 8.0)
    killed.suggest_categorical("quantization.weight_bits", [7, 8])
    assert counted_trials(study) == 1

    assert reclaim_interrupted(study) == [killed.number]
    trials = study.get_trials()
    assert trials[killed.number].state == TrialState.FAIL
    assert trials[killed.number].user_attrs[INTERRUPTED] is True
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.system_attrs["fixed_params"] == killed.params
    assert retry.user_attrs[RETRY_OF] == killed.number
    # An interrupted trial does not count towards search.n_trials; its retry will.
    assert counted_trials(study) == 1


def test_ctrl_c_during_a_trial_stops_the_search_and_queues_the_trial_again(tmp_path, monkeypatch):
    plan = make_plan(tmp_path, start_from_base=False)
    study = open_study(plan)
    study.add_trial(finished_trial(0.9, 80.0))

    def interrupted(overrides, run_dir, settings_):
        raise RunInterrupted(signal.SIGINT)  # what Ctrl+C raises in the search

    monkeypatch.setattr(trials, "_run_one", interrupted)
    with pytest.raises(RunInterrupted) as stopped:
        optimize(study, plan, lambda trial: None)
    assert stopped.value.exit_status == 130
    stopped_trial = study.get_trials()[1]
    assert stopped_trial.state == TrialState.FAIL
    assert stopped_trial.user_attrs[INTERRUPTED] is True
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.system_attrs["fixed_params"] == stopped_trial.params
    assert retry.user_attrs[RETRY_OF] == stopped_trial.number
    assert counted_trials(study) == 1  # the stopped trial does not count; its retry will
    assert search_result(study, plan)["trials"][1]["status"] == INTERRUPTED_STATUS


@pytest.mark.parametrize(
    ("stop", "status"),
    [(RunInterrupted(signal.SIGINT), 130), (RunInterrupted(signal.SIGTERM), 143)],
    ids=["ctrl_c", "sigterm"],
)
def test_a_stopped_search_exits_128_plus_the_signal(stop, status, monkeypatch, caplog):
    import distill.search
    from distill.cli import search as cli

    def stopped(overrides):
        raise stop

    monkeypatch.setattr(distill.search, "run_search", stopped)
    assert cli.main(["data=digits"]) == status
    assert "the same command resumes the search" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_a_stopping_search_ends_its_trial_process():
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True
    )
    stop_process(process, 60.0)
    assert process.returncode == -signal.SIGTERM


def test_a_resumed_study_offsets_the_sampler_seed(tmp_path):
    plan = make_plan(tmp_path, start_from_base=False)
    assert make_sampler(plan)._rng.rng.randint(10**9) == make_sampler(plan)._rng.rng.randint(10**9)
    study = open_study(plan)
    study.add_trial(finished_trial(0.9, 80.0))
    study.add_trial(finished_trial(0.8, 70.0))
    resumed = open_study(plan)
    expected = optuna.samplers.TPESampler(seed=2)
    assert resumed.sampler._rng.rng.randint(10**9) == expected._rng.rng.randint(10**9)


def test_one_search_per_directory(tmp_path):
    with (
        search_lock(tmp_path),
        pytest.raises(ConfigError, match="no other distill-search"),
        search_lock(tmp_path),
    ):
        pass


def test_a_sampler_that_is_not_one_is_refused(tmp_path):
    plan = make_plan(tmp_path, sampler={"_target_": "torch.nn.Identity"})
    with pytest.raises(ConfigError, match="an Optuna sampler") as error:
        make_sampler(plan)
    assert error.value.field == "search.sampler._target_"


def test_a_sampler_is_built_only_from_optuna_samplers_or_a_trusted_prefix(tmp_path):
    plan = make_plan(tmp_path, sampler={"_target_": "collections.OrderedDict"})
    with pytest.raises(ConfigError) as error:
        make_sampler(plan)
    assert (error.value.field, error.value.value) == (
        "search.sampler._target_",
        "collections.OrderedDict",
    )
    assert error.value.allowed.endswith(
        "TensorBoardLogger, optuna.samplers (add one on the command line: trusted_targets=[PREFIX])"
    )
    trusted = dataclasses.replace(plan, trusted=("collections",))
    with pytest.raises(ConfigError, match="an Optuna sampler class"):
        make_sampler(trusted)  # allowed now, and refused for what it builds


# --- the report ----------------------------------------------------------------------------


def finished_trial(value, budget_value, **attrs):
    return create_trial(
        value=value,
        params={"loss.kd.temperature": 4.0, "quantization.weight_bits": 8},
        distributions={
            "loss.kd.temperature": FloatDistribution(1.0, 8.0),
            "quantization.weight_bits": CategoricalDistribution([7, 8]),
        },
        user_attrs={
            "budget_value": budget_value,
            "command": f"distill-train data=digits x={value}",
            "run_dir": "trial_x",
            **attrs,
        },
        system_attrs={"constraints:budget": budget_value - 100.0},  # as Trial.set_constraint
    )


def failed_trial(error, **attrs):
    return create_trial(
        state=TrialState.FAIL, user_attrs={"error": error, "run_dir": "trial_f", **attrs}
    )


def report_of(tmp_path, trials, budget=BUDGET):
    study = optuna.create_study(direction="maximize")
    for trial in trials:
        study.add_trial(trial)
    return search_result(study, make_plan(tmp_path, budget=budget))


def test_the_best_trial_within_budget_is_named_with_its_command(tmp_path):
    result = report_of(
        tmp_path,
        [
            finished_trial(0.90, 95.0, base=True),
            finished_trial(0.97, 130.0),  # the most accurate, but over the budget
            finished_trial(0.93, 100.0),  # exactly at the budget: within it
            failed_trial("distill-train exited with status 1: RuntimeError: boom"),
            failed_trial("killed", **{INTERRUPTED: True}),
        ],
    )
    statuses = [row["status"] for row in result["trials"]]
    assert statuses == [WITHIN, OVER, WITHIN, FAILED, INTERRUPTED_STATUS]
    assert result["best"]["number"] == 2 and result["closest"] is None
    assert result["base"]["number"] == 0
    assert result["verdict"] == "best trial 2 within budget"
    text = render_markdown(result)
    assert "distill-train data=digits x=0.93" in text
    assert "0.9 -> 0.93 (+0.03)" in text  # the gain over the starting config
    assert "RuntimeError: boom" in text  # a failed trial is shown with its error
    assert "| 1 | over budget | 4 | 8 | 0.97 | 130 |" in text  # over budget: listed, not dropped


def test_no_trial_within_budget_names_the_closest(tmp_path):
    result = report_of(tmp_path, [finished_trial(0.97, 130.0), finished_trial(0.91, 104.0)])
    assert result["best"] is None and result["closest"]["number"] == 1
    assert result["verdict"] == "no trial met the budget"
    text = render_markdown(result)
    assert "**No trial met the budget**" in text and "Closest: trial 1" in text
    assert "(4 over)" in text and "distill-train data=digits x=0.91" in text


def test_a_search_without_budget_takes_the_best_objective(tmp_path):
    result = report_of(tmp_path, [finished_trial(0.5, 1e9), finished_trial(0.7, 1e9)], budget=None)
    assert result["best"]["number"] == 1 and result["verdict"] == "best trial 1"


def test_every_trial_failed(tmp_path):
    result = report_of(tmp_path, [failed_trial("boom")])
    assert result["best"] is None and result["closest"] is None
    assert result["verdict"] == "no trial finished"
    assert "every trial failed" in render_markdown(result)


def test_the_report_files_and_the_chart_of_objective_against_budget(tmp_path):
    study = optuna.create_study(direction="maximize")
    for trial in (finished_trial(0.90, 95.0), finished_trial(0.97, 130.0), failed_trial("x")):
        study.add_trial(trial)
    result = write_search_report(study, make_plan(tmp_path))
    assert json.loads((tmp_path / "search.json").read_text()) == json.loads(json.dumps(result))
    assert (tmp_path / "search.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "![objective against budget](search.png)" in (tmp_path / "search.md").read_text()
    # Without a budget there is no second axis: no chart, and search.md does not show one.
    unbounded = tmp_path / "unbounded"
    unbounded.mkdir()
    write_search_report(study, make_plan(unbounded, budget=None))
    assert not (unbounded / "search.png").exists()
    assert "search.png" not in (unbounded / "search.md").read_text()


# --- seeds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seeds", [[], [0, 0], [0, "one"], 3])
def test_bad_seeds_are_refused(seeds):
    with pytest.raises(ConfigError) as error:
        SearchSettings.from_config(settings_node(seeds=seeds))
    assert error.value.field == "search.seeds"


def test_a_trial_over_seeds_scores_the_mean_and_budgets_the_largest(tmp_path, monkeypatch):
    settings = SearchSettings.from_config(settings_node(seeds=[0, 1, 2]))
    numbers = {0: (0.80, 120.0), 1: (0.86, 100.0), 2: (0.83, 110.0)}
    runs = []

    def fake_run(overrides, run_dir, settings_):
        seed = int(overrides[-1].removeprefix("seed="))
        runs.append((list(overrides), run_dir))
        return (*numbers[seed], None)

    monkeypatch.setattr(trials, "_run_one", fake_run)
    outcome = trials.run_trial(["data=digits"], tmp_path / "trial_000", settings)
    assert [run_dir.name for _, run_dir in runs] == ["seed_0", "seed_1", "seed_2"]
    assert runs[1][0] == ["data=digits", "seed=1"]
    assert outcome.objective == pytest.approx((0.80 + 0.86 + 0.83) / 3)
    assert outcome.budget_value == 120.0  # the budget must hold for every seed
    assert outcome.per_seed == {
        s: {"objective": o, "budget_value": b} for s, (o, b) in numbers.items()
    }
    command = trials.trial_command(["data=digits"], settings.seeds)
    assert command == "distill-train -m data=digits seed=0,1,2"

    def failing(overrides, run_dir, settings_):
        seed = int(overrides[-1].removeprefix("seed="))
        return (None, None, "boom") if seed == 1 else (*numbers[seed], None)

    monkeypatch.setattr(trials, "_run_one", failing)
    outcome = trials.run_trial(["data=digits"], tmp_path / "trial_001", settings)
    assert not outcome.finished and outcome.error == "seed 1: boom"


def test_the_pick_is_confirmed_once_on_seeds_no_trial_used(tmp_path, monkeypatch):
    plan = make_plan(tmp_path, start_from_base=False, confirm_seeds=[3, 4])
    study = open_study(plan)
    study.add_trial(finished_trial(0.95, 90.0, overrides=["loss.kd.temperature=2"]))
    runs = []

    def fake_run(overrides, run_dir, settings_):
        runs.append((list(overrides), run_dir.relative_to(tmp_path).as_posix()))
        return {"seed=3": 0.90, "seed=4": 0.92}[overrides[-1]], 80.0, None

    monkeypatch.setattr(trials, "_run_one", fake_run)
    pick = search_result(study, plan)["best"]
    confirm_pick(study, plan, pick)
    confirm_pick(study, plan, pick)  # recorded: not run twice
    assert runs == [
        (["data=digits", "loss.kd.temperature=2", "seed=3"], "confirm_trial_000/seed_3"),
        (["data=digits", "loss.kd.temperature=2", "seed=4"], "confirm_trial_000/seed_4"),
    ]
    result = search_result(study, plan)
    confirmation = result["confirmation"]
    assert confirmation["trial"] == 0 and confirmation["objective"] == pytest.approx(0.91)
    assert confirmation["command"] == (
        "distill-train -m data=digits loss.kd.temperature=2 seed=3,4"
    )
    assert (
        "Trial 0 rerun on seeds 3, 4, which no trial used: `artifacts.onnx_int8.test_acc` = 0.91"
        in (render_markdown(result))
    )
    # A later, better trial makes the confirmation stale: it is not shown for the new pick.
    study.add_trial(finished_trial(0.97, 95.0))
    assert search_result(study, plan)["confirmation"] is None


def test_confirm_seeds_are_checked():
    with pytest.raises(ConfigError) as error:
        SearchSettings.from_config(settings_node(confirm_seeds=[1, 1]))
    assert error.value.field == "search.confirm_seeds"
