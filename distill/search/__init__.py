"""`distill-search`: the best compressed student under a budget, found by Optuna.

A search is a set of distill-train runs (trials) whose settings an Optuna sampler picks from a
space (conf/search/*.yaml and sweeps on the command line), to maximize one number of each run's
summary.json (the int8 artifact's accuracy, by default) while another stays within a budget
(its bytes or latency). The study is a SQLite file in the search directory: the same command
with the same `search.dir` resumes an interrupted search. `search.md` / `search.json` name the
best trial within budget and the command that reruns it, or, when none met the budget, the
closest one; distill-report's table and charts of the trials are written beside them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from distill.interruption import Interruption, RunInterrupted
from distill.search.prepare import SearchPlan, plan_search
from distill.search.report import SEARCH_JSON, SEARCH_MD, search_result, write_search_report
from distill.search.study import (
    confirm_pick,
    make_sampler,
    open_study,
    optimize,
    reclaim_interrupted,
    search_lock,
)
from distill.sweep_report import write_sweep_report

__all__ = ["SEARCH_JSON", "SEARCH_MD", "SearchPlan", "plan_search", "run_search", "search_result"]

log = logging.getLogger("distill")


def run_search(overrides: Sequence[str]) -> dict[str, Any]:
    """Plan and check the search (refusing bad input before anything is written), then run
    trials until `search.n_trials` have finished; the result search.json holds."""
    plan = plan_search(overrides)
    make_sampler(plan)  # a bad sampler is refused before the directory exists
    search_dir = plan.settings.dir
    search_dir.mkdir(parents=True, exist_ok=True)
    # One line per trial is ours; Optuna would repeat a failed trial's whole error as a warning.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # Ctrl+C, SIGTERM, SIGUSR1: RunInterrupted, which ends the running trial and queues it again.
    with Interruption().installed(slurm_requeue=False), search_lock(search_dir):
        study = open_study(plan)
        reclaimed = reclaim_interrupted(study)
        if reclaimed:
            log.info("Resuming: trials %s were interrupted and are queued again", reclaimed)
        log.info("Search in %s: %d trials, %s", search_dir, plan.settings.n_trials, _space(plan))

        def after_trial(trial: FrozenTrial) -> None:
            log.info("%s", _trial_line(trial, plan))
            _write_reports(study, plan)

        try:
            optimize(study, plan, after_trial)
        except RunInterrupted:
            _write_reports(study, plan)  # the trials so far, the stopped one as interrupted
            raise
        result = _write_reports(study, plan)
        if plan.settings.confirm_seeds:
            confirm_pick(study, plan, result["best"] or result["closest"])
            result = _write_reports(study, plan)
        return result


def _write_reports(study: optuna.Study, plan: SearchPlan) -> dict[str, Any]:
    result = write_search_report(study, plan)
    if any(
        row["run_dir"] and (plan.settings.dir / row["run_dir"]).is_dir() for row in result["trials"]
    ):
        write_sweep_report(plan.settings.dir, artifact=_artifact(plan))
    return result


def _artifact(plan: SearchPlan) -> str | None:
    """The artifact the objective or the budget is about, for distill-report's columns."""
    budget = plan.settings.budget
    for key in (plan.settings.objective, budget.metric if budget else ""):
        parts = key.split(".")
        if parts[0] == "artifacts" and len(parts) == 3 and parts[1] not in ("slim",):
            return parts[1]
    return None


def _space(plan: SearchPlan) -> str:
    return ", ".join(f"{d.key} {d.describe()}" for d in plan.dimensions)


def _trial_line(trial: FrozenTrial, plan: SearchPlan) -> str:
    attrs = trial.user_attrs
    settings = plan.settings
    overrides = " ".join(attrs.get("overrides", []))
    if attrs.get("error"):
        outcome = "failed: " + attrs["error"].splitlines()[-1]
    else:
        outcome = f"{settings.objective}={trial.value:.4g}"
        if settings.budget is not None:
            value = attrs.get("budget_value")
            verdict = "within" if value is not None and value <= settings.budget.max else "OVER"
            outcome += f", {settings.budget.metric}={value:.6g} ({verdict} budget)"
    return f"trial {trial.number}: {overrides} -> {outcome} [{attrs.get('seconds', 0):.0f} s]"
