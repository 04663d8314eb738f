"""Same command, same numbers: a teacher is a function of its cache key, and a recipe run
twice with the same seed gives the same summary and masks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from distill.config import build
from distill.pipeline import train
from distill.teachers import (
    build_teachers,
    data_fingerprint,
    provide_teachers,
    teacher_compute,
    teacher_specs,
    teacher_trainer_factory,
)
from tests.conftest import compose_train

from .test_fast_dev_run import QUIET

ROOT = Path(__file__).resolve().parents[2]
# A small teacher that still trains long enough (BatchNorm, shuffling, Adam) for any hidden
# dependency to show in its weights.
TEACHER = [
    "data.num_samples=1200",
    "teacher.model.channels=[16,16]",
    "teacher.train.max_epochs=2",
    *QUIET,
]


def train_teacher_key(root: Path, threads: int, before: str = "") -> dict[str, torch.Tensor]:
    """Train (or load) the teacher of TEACHER under `root`; its weights. `before` makes the
    process draw from the global RNG first ("rng"), or fit another teacher first ("fit")."""
    torch.set_num_threads(threads)
    pl.seed_everything(0)
    if before == "rng":
        torch.randn(1000)
        build(compose_train(TEACHER, root).student, "student")
    if before == "fit":
        other = [*TEACHER, "teacher.model.channels=[8,8]"]
        _provide(compose_train(other, root / "other"))
    model = _provide(compose_train(TEACHER, root))
    return {name: value.clone() for name, value in model.state_dict().items()}


def _provide(cfg) -> torch.nn.Module:
    datamodule = build(cfg.data, "data")
    datamodule.prepare_data()
    datamodule.setup("fit")
    specs = teacher_specs(cfg)
    teacher = build_teachers(specs, datamodule)
    facts = provide_teachers(
        teacher,
        specs,
        data_fingerprint(cfg.data),
        seed=cfg.seed,
        compute=teacher_compute(cfg.trainer),
        trainer_factory=teacher_trainer_factory(cfg.trainer),
        datamodule=datamodule,
        run_dir=Path(cfg.paths.output_dir),
    )
    assert facts["teacher"]["origin"] == "trained"
    return teacher.member_models()["teacher"]


def test_a_teacher_is_a_function_of_its_cache_key(tmp_path):
    threads = torch.get_num_threads()
    # A fresh process that draws nothing else...
    code = (
        "import torch, sys; from pathlib import Path;"
        "from tests.integration.test_reproducibility import train_teacher_key;"
        "torch.save(train_teacher_key(Path(sys.argv[1]), 1), sys.argv[2])"
    )
    fresh = tmp_path / "fresh.pt"
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "a"), str(fresh)], cwd=ROOT, check=True
    )
    reference = torch.load(fresh, weights_only=True)
    try:
        # ... this process after drawing from the global RNG, and after another teacher's fit.
        after_rng = train_teacher_key(tmp_path / "b", 1, before="rng")
        after_fit = train_teacher_key(tmp_path / "c", 1, before="fit")
        two_threads = train_teacher_key(tmp_path / "d", 2)
    finally:
        torch.set_num_threads(threads)
    for weights in (after_rng, after_fit):
        assert weights.keys() == reference.keys()
        for name, value in reference.items():
            assert torch.equal(weights[name], value), name
    # The thread count changes CPU sums, so it is part of the key: 2 threads trained (and
    # cached) a teacher of their own instead of reusing the 1-thread one.
    (meta_1,) = (tmp_path / "b" / "cache" / "teachers").glob("*/meta.json")
    (meta_2,) = (tmp_path / "d" / "cache" / "teachers").glob("*/meta.json")
    compute_1 = json.loads(meta_1.read_text())["material"]["compute"]
    compute_2 = json.loads(meta_2.read_text())["material"]["compute"]
    assert compute_1 == {"accelerator": "cpu", "precision": "32-true", "threads": 1}
    assert compute_2 == {**compute_1, "threads": 2}
    assert meta_1.parent.name != meta_2.parent.name
    assert not all(torch.equal(two_threads[n], v) for n, v in reference.items())


DIGITS = [
    "data=digits",
    "teacher=cnn2d_digits",
    "student=mlp",
    "teacher.train.max_epochs=3",
    "trainer.max_epochs=4",
    "pruning=agp_unstructured",
    "pruning.schedule.start=1",
    "pruning.schedule.num_updates=2",
    "export=false",
    *QUIET,
]


def comparable(summary: dict) -> dict:
    """A summary without what may differ between identical runs: times and paths."""
    summary = json.loads(json.dumps(summary))
    summary.pop("timing")
    summary.pop("output_dir")
    summary["teacher"].pop("checkpoint")
    return summary


def test_two_runs_of_one_recipe_and_seed_give_the_same_summary_and_masks(tmp_path):
    # The second run trains its teacher again (its own cache) after the first run's fits.
    first = train(compose_train(DIGITS, tmp_path / "first"))
    second = train(compose_train(DIGITS, tmp_path / "second"))
    assert first["teacher"]["origin"] == second["teacher"]["origin"] == "trained"
    assert 0 < first["sparsity"]["global"] < 1
    assert comparable(first) == comparable(second)
    states = [
        torch.load(root / "run" / "student_state.pt", weights_only=True)
        for root in (tmp_path / "first", tmp_path / "second")
    ]
    masks = [name for name in states[0] if "mask" in name]
    assert masks
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name
