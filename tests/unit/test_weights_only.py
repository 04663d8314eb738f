"""Files distill reads never unpickle code: every `torch.load` and every Lightning fit/test
(which reload a checkpoint) in the package says weights_only=True, and numpy files are read
without pickles. A scan of the source, so a new call that forgets is caught here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "distill"


def calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call of `<something>.name(...)` in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            called = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if called and node.func.attr == name:
                found.append((path, node))
    return found


def keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(
        keyword.arg == name
        and isinstance(keyword.value, ast.Constant)
        and keyword.value.value is True
        for keyword in call.keywords
    )


def test_every_torch_load_and_lightning_fit_or_test_loads_weights_only():
    """A file the package reads (a checkpoint, a teacher, a student state) never unpickles
    code: torch.load and Lightning's fit/test (which load a checkpoint: a resume, the best one,
    an hpc one under SLURM) all say weights_only=True."""
    loads = [
        (path, call)
        for path, call in calls("load")
        if isinstance(call.func.value, ast.Name) and call.func.value.id == "torch"
    ]
    runs = [(path, call) for name in ("fit", "test") for path, call in calls(name)]
    assert len(loads) >= 4 and len(runs) >= 4
    unsafe = [
        f"{path.relative_to(PACKAGE)}:{call.lineno}"
        for path, call in [*loads, *runs]
        if not keyword_is_true(call, "weights_only")
    ]
    assert unsafe == []
    imported = [
        path
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("torch")
        and any(alias.name == "load" for alias in node.names)
    ]
    assert imported == []  # a bare `load(...)` would escape the scan above


def test_numpy_files_are_read_without_pickles():
    unsafe = [
        (path, call.lineno)
        for path, call in calls("load")
        if isinstance(call.func.value, ast.Name)
        and call.func.value.id == "np"
        and any(keyword.arg == "allow_pickle" for keyword in call.keywords)
    ]
    assert unsafe == []
