"""The Optuna study behind `distill-search`: stored in SQLite inside the search directory, so an
interrupted search continues where it stopped when the same command is given the same
`search.dir`.

Trials over the budget are complete trials like any other, with their budget number recorded
and set as the trial's constraint (`Trial.set_constraint`, which Optuna 5's samplers read), so
the sampler learns where the budget lies instead of never seeing them; failed trials are
recorded with their error. Nothing is dropped: the report lists every trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, cast

import hydra
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from distill.errors import ConfigError
from distill.files import exclusive_lock
from distill.interruption import RunInterrupted
from distill.search.prepare import SearchPlan
from distill.search.space import Dimension
from distill.search.trials import run_trial, trial_command, trial_dir
from distill.trust import SEARCH_SAMPLERS, check_targets

log = logging.getLogger(__name__)

STUDY_FILE = "study.db"
STUDY_NAME = "distill-search"
LOCK_FILE = ".search.lock"
# Trial user attributes (what the report reads back from the study).
# The constraint's name: the budget excess, <= 0 within budget (Optuna's convention).
CONSTRAINT = "budget"
INTERRUPTED = "interrupted"  # the search was killed while this trial ran; it was retried
RETRY_OF = "retry_of"
# Study user attribute: the pick's run on search.confirm_seeds.
CONFIRMATION = "confirmation"


class TrialFailed(Exception):
    """A trial's run failed; Optuna records the trial as FAIL and the search goes on."""


def make_sampler(plan: SearchPlan, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """The configured sampler (`search.sampler`). A resumed search offsets its seed by the
    trials already run: the same seed would propose the same start-up points again."""
    config = plan.settings.sampler
    target = config.get("_target_")
    seed = config.get("seed")
    offset = {"seed": seed + trials_so_far} if isinstance(seed, int) and trials_so_far else {}
    check_targets(config, "search.sampler", also=(*SEARCH_SAMPLERS, *plan.trusted))
    try:
        sampler = hydra.utils.instantiate(config, **offset)
    except Exception as error:
        raise ConfigError(
            "search.sampler._target_", target, f"an Optuna sampler ({error})"
        ) from None
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise ConfigError("search.sampler._target_", target, "an Optuna sampler class")
    return sampler


@contextlib.contextmanager
def search_lock(search_dir: Path) -> Iterator[None]:
    """One distill-search per study: a second one on the same directory is refused."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(search_dir / LOCK_FILE, wait=False))
        except BlockingIOError:
            raise ConfigError(
                "search.dir", str(search_dir), "a search no other distill-search is running"
            ) from None
        yield


def open_study(plan: SearchPlan) -> optuna.Study:
    """The study in `search.dir`: created, or loaded when it is the same search."""
    settings = plan.settings
    storage = f"sqlite:///{(settings.dir / STUDY_FILE).resolve()}"
    definition = {
        **settings.definition(),
        "fixed": plan.fixed,
        "space": {dimension.key: dimension.describe() for dimension in plan.dimensions},
    }
    study = optuna.create_study(
        storage=storage,
        study_name=STUDY_NAME,
        direction=cast(Literal["maximize", "minimize"], settings.direction),
        sampler=make_sampler(plan),
        load_if_exists=True,
    )
    if study.trials:
        study.sampler = make_sampler(plan, trials_so_far=len(study.trials))
    stored = study.user_attrs.get("definition")
    if stored is None:
        study.set_user_attr("definition", definition)
        if settings.start_from_base:
            _enqueue_base(study, plan)
    elif stored != definition:
        field = next(name for name in definition if stored.get(name) != definition[name])
        raise ConfigError(
            "search.dir",
            str(settings.dir),
            f"a new directory, or the same search to resume it (its {field} was "
            f"{stored.get(field)!r}, now {definition[field]!r})",
        )
    return study


def reclaim_interrupted(study: optuna.Study) -> list[int]:
    """Trials left running by a killed search: marked failed and interrupted, their points
    queued again so the search evaluates them. Safe because one process holds the lock."""
    reclaimed = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        _queue_again(study, Trial(study, frozen._trial_id), frozen.params)
        study.tell(frozen.number, state=TrialState.FAIL)
        reclaimed.append(frozen.number)
    return reclaimed


def _queue_again(study: optuna.Study, trial: Trial, params: dict[str, Any]) -> None:
    """Mark `trial` interrupted (it does not count) and queue its point as a retry of it."""
    trial.set_user_attr(INTERRUPTED, True)
    study.enqueue_trial(params, user_attrs={RETRY_OF: trial.number})


def counted_trials(study: optuna.Study) -> int:
    """Trials that count towards `search.n_trials`: finished ones, not interrupted ones."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    return sum(1 for trial in done if not trial.user_attrs.get(INTERRUPTED))


def optimize(
    study: optuna.Study,
    plan: SearchPlan,
    after_trial: Callable[[FrozenTrial], None],
) -> None:
    """Run trials until `search.n_trials` of them have finished (ok, over budget or failed)."""

    def objective(trial: Trial) -> float:
        ran.append(trial.number)
        values = {dimension.key: _suggest(trial, dimension) for dimension in plan.dimensions}
        searched = [dimension.override(values[dimension.key]) for dimension in plan.dimensions]
        overrides = [*plan.fixed, *searched]
        run_dir = trial_dir(plan.settings.dir, trial.number)
        trial.set_user_attr("overrides", searched)
        trial.set_user_attr("command", trial_command(overrides, plan.settings.seeds))
        trial.set_user_attr("run_dir", run_dir.name)
        try:
            outcome = run_trial(overrides, run_dir, plan.settings)
        except RunInterrupted:
            # A signal stopped the search (run_search handles them). Optuna records the trial
            # as FAIL; its point runs again first when the search resumes, as after a kill.
            _queue_again(study, trial, trial.params)
            raise
        trial.set_user_attr("seconds", round(outcome.seconds, 2))
        if outcome.per_seed is not None:
            trial.set_user_attr("per_seed", {str(seed): n for seed, n in outcome.per_seed.items()})
        if outcome.error is not None:
            trial.set_user_attr("error", outcome.error)
            raise TrialFailed(outcome.error)
        budget = plan.settings.budget
        if budget is not None and outcome.budget_value is not None:
            trial.set_user_attr("budget_value", outcome.budget_value)
            trial.set_constraint(CONSTRAINT, budget.excess(outcome.budget_value))
        assert outcome.objective is not None
        return outcome.objective

    ran: list[int] = []  # the number of each trial run (a queued retry may not be the last)
    while counted_trials(study) < plan.settings.n_trials:
        study.optimize(objective, n_trials=1, catch=(TrialFailed,))
        after_trial(study.get_trials(deepcopy=False)[ran[-1]])


def _suggest(trial: Trial, dimension: Dimension) -> Any:
    distribution = dimension.distribution
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(dimension.key, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            dimension.key,
            distribution.low,
            distribution.high,
            step=distribution.step,
            log=distribution.log,
        )
    assert isinstance(distribution, FloatDistribution)
    return trial.suggest_float(
        dimension.key,
        distribution.low,
        distribution.high,
        step=distribution.step,
        log=distribution.log,
    )


def _enqueue_base(study: optuna.Study, plan: SearchPlan) -> None:
    point = {key: value for key, value in plan.base_point.items() if value is not None}
    if point:
        # The starting config is trial 0: the search shows what it gained over it.
        study.enqueue_trial(point, user_attrs={"base": True})
    missing = sorted(key for key, value in plan.base_point.items() if value is None)
    if missing:
        log.info("The base config's values of %s are outside the space; sampled instead", missing)


def confirm_pick(study: optuna.Study, plan: SearchPlan, pick: dict[str, Any] | None) -> None:
    """Run the search's pick (a report row: the best trial, or the closest to the budget) again
    on `search.confirm_seeds` and keep its numbers in the study; done once per pick."""
    seeds = plan.settings.confirm_seeds
    if not seeds or pick is None:
        return
    done = study.user_attrs.get(CONFIRMATION)
    if done and done["trial"] == pick["number"] and done["seeds"] == list(seeds):
        return
    run_dir = plan.settings.dir / f"confirm_trial_{pick['number']:03d}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a confirmation killed before it was recorded: start it over
    overrides = [*plan.fixed, *pick["overrides"]]
    log.info("Confirming trial %d on seeds %s", pick["number"], list(seeds))
    outcome = run_trial(overrides, run_dir, dataclasses.replace(plan.settings, seeds=seeds))
    per_seed = outcome.per_seed or {}
    study.set_user_attr(
        CONFIRMATION,
        {
            "trial": pick["number"],
            "seeds": list(seeds),
            "run_dir": run_dir.name,
            "command": trial_command(overrides, seeds),
            "objective": outcome.objective,
            "budget_value": outcome.budget_value,
            "per_seed": {str(seed): numbers for seed, numbers in per_seed.items()},
            "error": outcome.error,
        },
    )
