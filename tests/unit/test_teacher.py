"""Teacher checkpoints and the teacher cache."""

import multiprocessing
import time

import pytest
import torch
from torch import nn

from distill.errors import ConfigError
from distill.teachers import TeacherCache, cache_key, load_weights


def small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_plain_state_dict_and_cache_format_both_load(tmp_path):
    source = small_model()
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": source.state_dict()}, tmp_path / "wrapped.pt")
    for name in ("plain.pt", "wrapped.pt"):
        model = load_weights(small_model(), tmp_path / name, field="teacher.checkpoint")
        for a, b in zip(source.parameters(), model.parameters(), strict=True):
            assert torch.equal(a, b)


def test_a_distill_run_checkpoint_gives_its_student_as_teacher(tmp_path):
    source = small_model()
    state = {f"student.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "last.ckpt")
    model = load_weights(small_model(), tmp_path / "last.ckpt", field="teacher.checkpoint")
    assert torch.equal(model[0].weight, source[0].weight)


def test_missing_checkpoint_names_field_and_path(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_weights(small_model(), tmp_path / "nope.pt", field="teacher.checkpoint")
    assert error.value.field == "teacher.checkpoint"
    assert "nope.pt" in str(error.value)


def test_corrupt_checkpoint_is_refused(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ConfigError, match=r"a torch checkpoint \(torch cannot read it: "):
        load_weights(small_model(), path, field="teacher.checkpoint")


def test_checkpoint_of_another_model_lists_what_differs(tmp_path):
    other = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3), nn.Linear(3, 3))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ConfigError) as error:
        load_weights(small_model(), tmp_path / "other.pt", field="teacher.checkpoint")
    message = str(error.value)
    assert "unexpected keys [3.bias, 3.weight]" in message
    assert "0.weight: checkpoint (16, 4) vs model (8, 4)" in message


def test_arbitrary_pickles_are_refused_by_weights_only(tmp_path):
    path = tmp_path / "pickle.pt"
    torch.save({"state_dict": {"0.weight": torch.zeros(1)}, "obj": object()}, path)
    with pytest.raises(ConfigError) as error:
        load_weights(small_model(), path, field="teacher.checkpoint")
    # The reason, without torch's advice to load with weights_only=False.
    assert "(torch cannot read it: UnpicklingError: Unsupported global: GLOBAL object" in str(
        error.value
    )
    assert "weights_only" not in str(error.value)


def trainer_that_counts(calls: list[int]):
    def train(model: nn.Module) -> dict:
        calls.append(1)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(0.5)
        return {"test_acc": 0.9}

    return train


def test_cache_trains_once_then_reuses(tmp_path):
    calls: list[int] = []
    material = {"model": "small", "seed": 0}
    first = TeacherCache(tmp_path).get_or_train(small_model(), material, trainer_that_counts(calls))
    reused_model = small_model()
    second = TeacherCache(tmp_path).get_or_train(reused_model, material, trainer_that_counts(calls))
    assert (first.origin, second.origin) == ("trained", "cache")
    assert len(calls) == 1
    assert second.meta["test_acc"] == 0.9
    assert all(torch.all(p == 0.5) for p in reused_model.parameters())


def test_cache_key_changes_with_any_setting():
    base = {"model": {"channels": [8]}, "seed": 0}
    assert cache_key(base) == cache_key({"seed": 0, "model": {"channels": [8]}})
    assert cache_key(base) != cache_key({**base, "seed": 1})
    assert cache_key(base) != cache_key({**base, "model": {"channels": [9]}})


def test_a_corrupt_cache_entry_is_retrained(tmp_path):
    calls: list[int] = []
    material = {"model": "small"}
    cache = TeacherCache(tmp_path)
    cache.get_or_train(small_model(), material, trainer_that_counts(calls))
    (cache.entry_dir(cache_key(material)) / "teacher.pt").write_bytes(b"garbage")
    again = cache.get_or_train(small_model(), material, trainer_that_counts(calls))
    assert again.origin == "trained"
    assert len(calls) == 2


def _race(directory: str, log_path: str) -> None:
    def slow_train(model: nn.Module) -> dict:
        with open(log_path, "a") as log:
            log.write("trained\n")
        time.sleep(0.5)
        return {}

    TeacherCache(directory).get_or_train(small_model(), {"model": "race"}, slow_train)


def test_two_concurrent_runs_train_the_teacher_once(tmp_path):
    log_path = tmp_path / "log.txt"
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_race, args=(str(tmp_path / "cache"), str(log_path)))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert log_path.read_text().count("trained") == 1
    entry = next((tmp_path / "cache").iterdir())
    assert sorted(p.name for p in entry.iterdir() if not p.name.startswith(".")) == [
        "meta.json",
        "teacher.pt",
    ]


def test_a_half_write_of_a_killed_job_is_removed_and_the_teacher_trained(tmp_path):
    # What atomic_write leaves when its process is killed before the rename.
    calls: list[int] = []
    material = {"model": "small"}
    cache = TeacherCache(tmp_path)
    entry = cache.entry_dir(cache_key(material))
    entry.mkdir(parents=True)
    (entry / ".teacher.pt.k1ll3d00.tmp").write_bytes(b"half a teacher")
    (entry / ".meta.json.k1ll3d00.tmp").write_bytes(b'{"key": ')
    trained = cache.get_or_train(small_model(), material, trainer_that_counts(calls))
    assert trained.origin == "trained" and len(calls) == 1
    assert sorted(p.name for p in entry.iterdir()) == [".lock", "meta.json", "teacher.pt"]


def test_meta_without_weights_is_an_unfinished_entry_that_trains_again(tmp_path):
    # A job killed between the two writes: meta.json is written first, the weights last.
    calls: list[int] = []
    material = {"model": "small"}
    cache = TeacherCache(tmp_path)
    cache.get_or_train(small_model(), material, trainer_that_counts(calls))
    cache.weights_path(cache_key(material)).unlink()
    assert not cache.has(cache_key(material))
    again = cache.get_or_train(small_model(), material, trainer_that_counts(calls))
    assert again.origin == "trained" and len(calls) == 2
    assert again.meta["test_acc"] == 0.9
