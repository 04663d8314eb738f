"""What a search found, read back from its study: `search.json` and `search.md`.

Every trial is listed: within budget, over budget, failed (with its error) or interrupted. The
report names the best trial within the budget with the command that reruns it; when no trial
met the budget it says so and names the closest one, whose run directory (checkpoints and
artifacts) is kept like every other trial's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from distill.files import atomic_write, atomic_write_json
from distill.search.chart import render_search_chart
from distill.search.prepare import SearchPlan
from distill.search.study import CONFIRMATION, INTERRUPTED, RETRY_OF

SEARCH_JSON = "search.json"
SEARCH_MD = "search.md"
SEARCH_PNG = "search.png"

WITHIN = "within budget"
OVER = "over budget"
OK = "ok"  # a finished trial of a search without a budget
FAILED = "failed"
INTERRUPTED_STATUS = "interrupted (retried)"
PENDING = "not run yet"


def search_result(study: optuna.Study, plan: SearchPlan) -> dict[str, Any]:
    """The whole search as data: settings, every trial, the best within budget or the closest."""
    settings = plan.settings
    budget = settings.budget
    trials = [_trial_row(trial, plan) for trial in study.get_trials(deepcopy=False)]
    finished = [row for row in trials if row["status"] in (WITHIN, OVER, OK)]
    feasible = [row for row in finished if row["status"] in (WITHIN, OK)]
    sign = 1.0 if settings.direction == "maximize" else -1.0
    best = max(feasible, key=lambda row: (sign * row["objective"], -row["number"]), default=None)
    closest = None
    if best is None and budget is not None:
        closest = min(finished, key=lambda row: (row["budget_value"], row["number"]), default=None)
    base = next((row for row in trials if row["base"] and row["status"] != PENDING), None)
    pick = best or closest
    confirmation = study.user_attrs.get(CONFIRMATION)
    if pick is None or confirmation is None or confirmation["trial"] != pick["number"]:
        confirmation = None  # none yet, or of an earlier pick
    return {
        "search_dir": str(settings.dir),
        "objective": settings.objective,
        "direction": settings.direction,
        "budget": None if budget is None else {"metric": budget.metric, "max": budget.max},
        "n_trials": settings.n_trials,
        "fixed": plan.fixed,
        "space": {dimension.key: dimension.describe() for dimension in plan.dimensions},
        "verdict": _verdict(best, finished, budget is not None),
        "best": best,
        "closest": closest,
        "base": base,
        "confirmation": confirmation,
        "trials": trials,
    }


def write_search_report(study: optuna.Study, plan: SearchPlan) -> dict[str, Any]:
    result = search_result(study, plan)
    folder = Path(plan.settings.dir)
    atomic_write_json(folder / SEARCH_JSON, result)
    chart = render_search_chart(result)
    if chart is not None:
        atomic_write(folder / SEARCH_PNG, lambda handle: handle.write(chart))
    text = render_markdown(result)
    atomic_write(folder / SEARCH_MD, lambda handle: handle.write(text.encode()))
    return result


def _trial_row(trial: FrozenTrial, plan: SearchPlan) -> dict[str, Any]:
    attrs = trial.user_attrs
    budget = plan.settings.budget
    budget_value = attrs.get("budget_value")
    if trial.state == TrialState.COMPLETE:
        if budget is None:
            status = OK
        else:
            status = WITHIN if budget_value is not None and budget_value <= budget.max else OVER
    elif trial.state == TrialState.FAIL:
        status = INTERRUPTED_STATUS if attrs.get(INTERRUPTED) else FAILED
    else:
        status = PENDING
    return {
        "number": trial.number,
        "status": status,
        "params": dict(trial.params),
        "overrides": attrs.get("overrides", []),
        "objective": trial.value if trial.state == TrialState.COMPLETE else None,
        "budget_value": budget_value,
        "seconds": attrs.get("seconds"),
        "per_seed": attrs.get("per_seed"),
        "command": attrs.get("command"),
        "run_dir": attrs.get("run_dir"),
        "error": attrs.get("error"),
        "base": bool(attrs.get("base")),
        "retry_of": attrs.get(RETRY_OF),
    }


def _verdict(best: dict | None, finished: list[dict], has_budget: bool) -> str:
    if best is not None:
        return f"best trial {best['number']}" + (" within budget" if has_budget else "")
    if not finished:
        return "no trial finished"
    return "no trial met the budget"


def render_markdown(result: dict[str, Any]) -> str:
    objective, budget = result["objective"], result["budget"]
    title = f"# Search: {result['direction']} `{objective}`"
    if budget is not None:
        title += f" with `{budget['metric']}` <= {_number(budget['max'])}"
    lines = [title, "", f"Search directory: `{result['search_dir']}`", ""]
    lines += _headline(result)
    if result["confirmation"] is not None:
        lines += ["", *_confirmation(result["confirmation"], result["objective"])]
    if budget is not None:
        lines += ["", f"![objective against budget]({SEARCH_PNG})"]
    lines += ["", "## Trials", ""]
    lines += _trials_table(result)
    failed = [row for row in result["trials"] if row["error"]]
    if failed:
        lines += ["", "## Failed trials", ""]
        for row in failed:
            lines += [f"**trial {row['number']}** (`{row['run_dir']}`):", "", "```"]
            lines += [*row["error"].splitlines(), "```", ""]
    lines += ["", "## Space", ""]
    lines += [f"- `{key}`: {shown}" for key, shown in result["space"].items()]
    if result["fixed"]:
        lines += ["", "Fixed in every trial: `" + " ".join(result["fixed"]) + "`"]
    return "\n".join(lines).rstrip() + "\n"


def _headline(result: dict[str, Any]) -> list[str]:
    best, closest, base, budget = (
        result["best"],
        result["closest"],
        result["base"],
        result["budget"],
    )
    objective = result["objective"]
    if best is not None:
        lines = [
            f"**{result['verdict'].capitalize()}**: `{objective}` = {_number(best['objective'])}"
            + _budget_part(best, budget),
            "",
            "```bash",
            best["command"],
            "```",
            f"Its run directory (summary.json, checkpoints, artifacts): `{best['run_dir']}`",
        ]
        if base is not None and base["objective"] is not None and base is not best:
            gain = best["objective"] - base["objective"]
            lines += [
                "",
                f"Against the starting config (trial {base['number']}): `{objective}` "
                f"{_number(base['objective'])} -> {_number(best['objective'])} ({gain:+.4g})"
                + _budget_change(base, best, budget),
            ]
        return lines
    if closest is not None:
        over = closest["budget_value"] - budget["max"]
        return [
            f"**No trial met the budget** (`{budget['metric']}` <= {_number(budget['max'])}). "
            f"Closest: trial {closest['number']}, `{budget['metric']}` = "
            f"{_number(closest['budget_value'])} ({_number(over)} over), `{objective}` = "
            f"{_number(closest['objective'])}. Its run directory and artifacts are kept: "
            f"`{closest['run_dir']}`",
            "",
            "```bash",
            closest["command"],
            "```",
        ]
    return [f"**{result['verdict'].capitalize()}**: every trial failed; see below."]


def _confirmation(confirmation: dict[str, Any], objective: str) -> list[str]:
    seeds = ", ".join(map(str, confirmation["seeds"]))
    where = f"Trial {confirmation['trial']} rerun on seeds {seeds}, which no trial used"
    if confirmation["error"]:
        return [f"{where}: failed ({confirmation['error'].splitlines()[-1]})."]
    per_seed = ", ".join(
        f"{seed}: {_number(numbers['objective'])}"
        for seed, numbers in confirmation["per_seed"].items()
    )
    return [
        f"{where}: `{objective}` = {_number(confirmation['objective'])} (mean; {per_seed}), "
        f"in `{confirmation['run_dir']}`. Without the luck of the pick, this is the number to "
        "expect."
    ]


def _budget_part(row: dict[str, Any], budget: dict[str, Any] | None) -> str:
    if budget is None:
        return ""
    return (
        f", `{budget['metric']}` = {_number(row['budget_value'])} (budget {_number(budget['max'])})"
    )


def _budget_change(base: dict, best: dict, budget: dict | None) -> str:
    if budget is None or base["budget_value"] is None:
        return ""
    return (
        f"; `{budget['metric']}` {_number(base['budget_value'])} -> {_number(best['budget_value'])}"
    )


def _trials_table(result: dict[str, Any]) -> list[str]:
    keys = list(result["space"])
    budget = result["budget"]
    seeded = any(row["per_seed"] for row in result["trials"])
    header = ["trial", "status", *keys, result["objective"] + (" (mean)" if seeded else "")]
    if seeded:
        header.append("per seed")
    if budget is not None:
        header.append(budget["metric"])
    header.append("s")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result["trials"]:
        label = str(row["number"]) + (" (start)" if row["base"] else "")
        if row["retry_of"] is not None:
            label += f" (retry of {row['retry_of']})"
        cells = [label, row["status"], *(_value(row["params"].get(key)) for key in keys)]
        cells.append(_number(row["objective"]))
        if seeded:
            per_seed = row["per_seed"] or {}
            cells.append(
                ", ".join(f"{seed}: {_number(n['objective'])}" for seed, n in per_seed.items())
                or "-"
            )
        if budget is not None:
            cells.append(_number(row["budget_value"]))
        cells.append(_number(row["seconds"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).rsplit(".", 1)[-1] if "." in str(value) else str(value)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4g}"
    return f"{int(value):,}"
