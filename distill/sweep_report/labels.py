"""A run's label: the Hydra overrides that tell it apart from the other runs of its sweep."""

from __future__ import annotations

from collections.abc import Sequence


def override_key(override: str) -> str:
    """`loss.kd.temperature` of `loss.kd.temperature=2` (and of `+x=1`, `++x=1`, `~x`)."""
    return override.split("=", 1)[0].lstrip("+~")


def varying_keys(overrides: Sequence[Sequence[str]]) -> set[str]:
    """The override keys whose value is not the same in every run (absent counts as a value)."""
    values: dict[str, set[str | None]] = {}
    per_run = [{override_key(item): item for item in run} for run in overrides]
    for key in {key for run in per_run for key in run}:
        values[key] = {run.get(key) for run in per_run}
    return {key for key, seen in values.items() if len(seen) > 1}


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key as its shortest tail that no other key ends with.

    `loss.kd.temperature` -> `temperature`, but `trainer.max_epochs` and
    `teacher.train.max_epochs` -> `trainer.max_epochs` and `train.max_epochs`.
    """
    unique = sorted(set(keys))
    short = {}
    for key in unique:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            tail = ".".join(parts[-size:])
            others = (other for other in unique if other != key)
            if not any(other == tail or other.endswith("." + tail) for other in others):
                break
        short[key] = tail
    return short


def labels(
    overrides: Sequence[Sequence[str]], fallbacks: Sequence[str]
) -> tuple[list[str], list[str]]:
    """(full labels, short labels), one of each per run.

    A label is the run's overrides that differ across the runs (absent counts as different),
    in the order given on the command line; when none differ (one run, or repeats) it is all of
    them; a run left with none (not a Hydra run, or one on the defaults) is labeled by its
    fallback (its directory).
    """
    varying = varying_keys(overrides)
    short = short_keys(sorted(varying))
    full_labels, short_labels = [], []
    for run, fallback in zip(overrides, fallbacks, strict=True):
        shown = [item for item in run if override_key(item) in varying] if varying else list(run)
        full_labels.append(" ".join(shown) or fallback)
        short_labels.append(
            " ".join(_shorten(item, short) for item in shown) if shown else fallback
        )
    return full_labels, short_labels


def common_overrides(overrides: Sequence[Sequence[str]]) -> list[str]:
    """The overrides every run shares (in the first run's order), when there are several runs."""
    if len(overrides) < 2:
        return []
    varying = varying_keys(overrides)
    return [item for item in overrides[0] if override_key(item) not in varying]


def _shorten(override: str, short: dict[str, str]) -> str:
    key = override_key(override)
    if key not in short or "=" not in override:
        return override
    return f"{short[key]}={override.split('=', 1)[1]}"
