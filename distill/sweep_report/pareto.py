"""The Pareto front of (accuracy, cost) points: most accurate for the least bytes or time."""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]


def pareto_front(points: Sequence[Point | None]) -> list[bool]:
    """For each `(accuracy, cost)` point, whether it is on the front (None: never).

    A point is on the front when no other point is at least as accurate and at most as costly
    and strictly better in one of the two. Identical points do not dominate each other, so both
    stay on the front: neither run can be preferred on these two numbers.
    """
    flags = []
    for index, point in enumerate(points):
        if point is None:
            flags.append(False)
            continue
        accuracy, cost = point
        dominated = any(
            other is not None
            and other_index != index
            and other[0] >= accuracy
            and other[1] <= cost
            and (other[0] > accuracy or other[1] < cost)
            for other_index, other in enumerate(points)
        )
        flags.append(not dominated)
    return flags


def front_steps(
    points: Sequence[Point | None], flags: Sequence[bool]
) -> tuple[list[float], list[float]]:
    """The front's points sorted by cost, as (costs, accuracies) for a post-step line.

    Drawn with `where="post"`, the line at cost c is the best accuracy any run reaches for at
    most c: it rises only at a front point.
    """
    front = sorted(
        (point[1], point[0])
        for point, on_front in zip(points, flags, strict=True)
        if on_front and point is not None
    )
    return [cost for cost, _ in front], [accuracy for _, accuracy in front]
