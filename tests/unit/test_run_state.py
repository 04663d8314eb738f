"""The pieces of stop-and-resume on their own: signal handling inside and outside a fit, atomic
checkpoint writes, the newest loadable checkpoint, status.json, the W&B run id to continue,
the run directory decided before Hydra, and a resume's comparison of configs."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from distill.checkpoint_io import (
    AtomicCheckpointIO,
    checkpoint_step,
    newest_valid_checkpoint,
    remove_partial_writes,
)
from distill.errors import ConfigError
from distill.interruption import Interruption, RunInterrupted
from distill.loggers import earlier_wandb_run_id
from distill.resume import first_difference
from distill.run_dir_guard import RunDirGuard, single_run
from distill.run_progress import recorded
from distill.run_state import ensure_fresh_run_dir, is_complete, read_state, write_state


def lightning_checkpoint(step: int, epoch: int = 0) -> dict:
    return {
        "state_dict": {"w": torch.ones(2)},
        "optimizer_states": [],
        "global_step": step,
        "epoch": epoch,
    }


class FakeTrainer:
    """What Interruption touches on a trainer."""

    class _Connector:
        received_sigterm = False

    class _Strategy:
        root_device = torch.device("cpu")

    world_size = 1

    def __init__(self) -> None:
        self._signal_connector = self._Connector()
        self.callbacks: list = []
        self.strategy = self._Strategy()


def test_a_signal_outside_the_fit_raises_at_once_and_inside_asks_the_trainer_to_stop():
    with Interruption().installed(slurm_requeue=False):
        with pytest.raises(RunInterrupted) as raised:
            os.kill(os.getpid(), signal.SIGUSR1)  # handled before os.kill returns
        assert raised.value.exit_status == 128 + signal.SIGUSR1

    interruption = Interruption()
    with interruption.installed(slurm_requeue=False):
        trainer = FakeTrainer()
        with pytest.raises(RunInterrupted) as raised, interruption.fitting(trainer):
            os.kill(os.getpid(), signal.SIGTERM)
            # The step in flight goes on; the trainer stops at its next boundary.
            assert trainer._signal_connector.received_sigterm
        assert raised.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_ctrl_c_stops_the_fit_at_the_next_step_and_a_second_one_at_once():
    interruption = Interruption()
    with interruption.installed(slurm_requeue=False):
        trainer = FakeTrainer()
        with pytest.raises(RunInterrupted) as raised, interruption.fitting(trainer):
            os.kill(os.getpid(), signal.SIGINT)  # not a KeyboardInterrupt: the step goes on
            assert trainer._signal_connector.received_sigterm
            os.kill(os.getpid(), signal.SIGINT)  # the user will not wait
            pytest.fail("a second Ctrl+C did not stop the run at once")
        assert raised.value.signum == signal.SIGINT
        assert raised.value.exit_status == 130
        assert raised.value.checkpoint is None  # nothing was saved at a step boundary
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored

    # Outside the fit, the first Ctrl+C stops at once, as SIGTERM does.
    with Interruption().installed(slurm_requeue=False):
        with pytest.raises(RunInterrupted) as raised:
            os.kill(os.getpid(), signal.SIGINT)
        assert raised.value.signum == signal.SIGINT


def test_a_run_started_with_ctrl_c_ignored_keeps_ignoring_it():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup or `cmd &`
    try:
        with Interruption().installed(slurm_requeue=False):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, previous)


def test_under_ddp_a_signal_only_marks_its_rank_until_the_ranks_agree(tmp_path):
    """A rank that stopped alone would leave the others in a collective: the signal waits for
    `agree`, which every rank calls at the same step boundary (one process here, gloo)."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        interruption = Interruption()
        trainer = FakeTrainer()
        trainer.world_size = 2  # as DDP's trainer says; the group itself has this one process
        with interruption.installed(slurm_requeue=False):
            with pytest.raises(RunInterrupted) as raised, interruption.fitting(trainer):
                interruption.agree(trainer)
                assert not trainer._signal_connector.received_sigterm  # nobody was signalled
                os.kill(os.getpid(), signal.SIGUSR1)
                assert not trainer._signal_connector.received_sigterm  # not before agreeing
                interruption.agree(trainer)
                assert trainer._signal_connector.received_sigterm
            assert raised.value.signum == signal.SIGUSR1
    finally:
        torch.distributed.destroy_process_group()


def test_under_slurm_auto_requeue_sigusr1_is_left_to_lightning():
    before = signal.getsignal(signal.SIGUSR1)
    with Interruption().installed(slurm_requeue=True):
        assert signal.getsignal(signal.SIGUSR1) is before
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL


def test_a_fit_that_ends_by_another_exit_is_not_called_an_interruption():
    interruption = Interruption()
    with pytest.raises(SystemExit) as exited, interruption.fitting(FakeTrainer()):
        raise SystemExit(1)  # an exit no signal asked for (user code, a Lightning error)
    assert exited.value.code == 1


def test_checkpoints_are_written_whole_and_the_newest_loadable_one_is_chosen(tmp_path):
    folder = tmp_path / "checkpoints"
    io = AtomicCheckpointIO()
    io.save_checkpoint(lightning_checkpoint(5), folder / "step0000005.ckpt")
    io.save_checkpoint(lightning_checkpoint(21, 1), folder / "last.ckpt")
    assert checkpoint_step(folder / "last.ckpt") == (21, 1)
    assert not list(folder.glob(".*.tmp"))  # the temporary file was renamed over the target
    assert oct((folder / "last.ckpt").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert newest_valid_checkpoint(tmp_path) == folder / "last.ckpt"

    # Further along, but damaged: skipped. A bare state_dict holds no training state.
    (folder / "step0000030.ckpt").write_bytes(b"PK\x03\x04" + os.urandom(64))
    torch.save({"w": torch.ones(2)}, folder / "weights.ckpt")
    assert newest_valid_checkpoint(tmp_path) == folder / "last.ckpt"
    (folder / ".step0000030.ckpt.abc.tmp").write_bytes(b"half")
    assert remove_partial_writes(tmp_path) == [folder / ".step0000030.ckpt.abc.tmp"]
    assert newest_valid_checkpoint(tmp_path / "elsewhere") is None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_status_records_each_stage_and_how_the_run_ended(tmp_path):
    with recorded(tmp_path) as progress:
        assert read_state(tmp_path)["state"] == "running"
        progress.stage("fit")
        assert read_state(tmp_path)["stage"] == "fit"
    assert (read_state(tmp_path)["state"], read_state(tmp_path)["stage"]) == ("complete", "done")
    assert is_complete(tmp_path)

    with pytest.raises(RunInterrupted), recorded(tmp_path) as progress:
        progress.stage("test")
        raise RunInterrupted(signal.SIGTERM, tmp_path / "checkpoints" / "interrupted.ckpt")
    state = read_state(tmp_path)
    assert state["state"] == "interrupted" and state["stage"] == "test"
    assert state["signal"] == "SIGTERM" and state["checkpoint"] == "checkpoints/interrupted.ckpt"
    assert state["resume"] == f"distill-train resume={tmp_path}"
    assert not is_complete(tmp_path)

    with pytest.raises(ZeroDivisionError), recorded(tmp_path):
        1 / 0  # noqa: B018
    assert read_state(tmp_path)["error"] == "ZeroDivisionError: division by zero"

    with pytest.raises(ValueError):
        write_state(tmp_path, "paused", "fit")


def test_a_run_from_before_status_json_is_complete_when_it_has_a_summary(tmp_path):
    assert not is_complete(tmp_path)
    (tmp_path / "summary.json").write_text("{}")
    assert is_complete(tmp_path)
    (tmp_path / "status.json").write_text("not json")  # unreadable: falls back the same way
    assert is_complete(tmp_path)


def test_a_directory_with_an_unfinished_run_names_the_resume_command(tmp_path):
    write_state(tmp_path, "interrupted", "fit")
    with pytest.raises(ConfigError, match=f"continue it with distill-train resume={tmp_path}"):
        ensure_fresh_run_dir(tmp_path, {})
    write_state(tmp_path, "complete", "done")
    with pytest.raises(ConfigError, match="this one holds a finished run"):
        ensure_fresh_run_dir(tmp_path, {})
    ensure_fresh_run_dir(tmp_path / "new", {})


def test_the_wandb_run_of_a_directory_is_found_by_its_folder_name(tmp_path):
    assert earlier_wandb_run_id(tmp_path) is None
    wandb = tmp_path / "wandb"
    (wandb / "offline-run-20261204_101010-abc123").mkdir(parents=True)
    (wandb / "run-20261204_111111-zz9").mkdir()
    (wandb / "latest-run").symlink_to(wandb / "run-20261204_111111-zz9")
    (wandb / "debug.log").write_text("")
    assert earlier_wandb_run_id(tmp_path) == "zz9"  # the newest by its timestamp


@pytest.mark.parametrize(
    ("arguments", "single"),
    [
        (["data=digits"], True),
        ([], True),
        (["-m", "seed=0,1"], False),
        (["seed=0,1"], False),
        (["--cfg", "job"], False),
        (["loss.kd.temperature=interval(1,4)"], False),
    ],
)
def test_only_a_single_run_gets_its_directory_decided_before_hydra(arguments, single):
    assert single_run(arguments) is single


def test_the_run_directory_is_resolved_and_pinned_and_removed_only_if_hydra_alone_wrote(
    tmp_path,
):
    guard = RunDirGuard.plan([f"paths.log_dir={tmp_path}"])
    assert guard is not None and guard.path.parent.parent == tmp_path
    assert not guard.existed and guard.pinned == f"hydra.run.dir={guard.path}"
    assert guard.path.is_dir()  # claimed: no other job can make it now
    (guard.path / ".hydra").mkdir(parents=True)
    (guard.path / "train.log").write_text("refused")
    assert guard.discard_if_untouched() and not guard.path.exists()

    kept = RunDirGuard.plan([f"hydra.run.dir={tmp_path / 'run'}"])
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)  # work was done: never removed
    assert not kept.discard_if_untouched() and (tmp_path / "run").exists()
    (tmp_path / "mine").mkdir()
    existing = RunDirGuard.plan([f"hydra.run.dir={tmp_path / 'mine'}"])
    assert existing.existed and not existing.discard_if_untouched()


def test_a_timestamped_name_another_job_took_is_not_shared(tmp_path, monkeypatch):
    import distill.run_dir_guard as guard_module

    taken, free = tmp_path / "10-00-00-000001", tmp_path / "10-00-00-000002"
    taken.mkdir()
    names = iter([taken, free])
    monkeypatch.setattr(guard_module, "_resolve_run_dir", lambda arguments: next(names))
    guard = RunDirGuard.plan([])
    assert guard.path == free and not guard.existed

    monkeypatch.setattr(guard_module, "_resolve_run_dir", lambda arguments: taken)
    with pytest.raises(ConfigError, match="20 names in a row were taken"):
        RunDirGuard.plan([])


def test_a_resume_names_the_first_setting_that_changed():
    before = {"optimizer": {"lr": 0.1, "betas": [0.9, 0.99]}, "seed": 0}
    assert first_difference(before, json.loads(json.dumps(before))) is None
    now = {"optimizer": {"lr": 0.1, "betas": [0.9, 0.9]}, "seed": 0}
    assert first_difference(before, now) == ("optimizer.betas", [0.9, 0.99], [0.9, 0.9])
    assert first_difference(before, {"optimizer": before["optimizer"]}) == ("seed", 0, "<absent>")
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == ("b", "<absent>", 2)


def test_interrupted_runs_are_listed_with_their_resume_command(tmp_path):
    from distill.sweep_report import INTERRUPTED, find_runs

    run = tmp_path / "0"
    (run / ".hydra").mkdir(parents=True)
    write_state(run, "interrupted", "fit", signal="SIGTERM")
    (found,) = find_runs(tmp_path)
    assert found.status == INTERRUPTED
    assert found.error == f"interrupted by SIGTERM during fit; distill-train resume={run}"
    # A trained run whose export failed is not counted as finished.
    other = tmp_path / "1"
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({"status": "export_failed"}))
    assert find_runs(tmp_path)[1].status == "failed"


def test_a_resume_never_takes_trust_from_the_run_directory(tmp_path):
    from distill.resume import resume_arguments

    hydra = tmp_path / ".hydra"
    hydra.mkdir()
    (hydra / "overrides.yaml").write_text("- seed=3\n- trusted_targets=[evil]\n- resume=/old\n")
    (hydra / "config.yaml").write_text("seed: 3\n")
    write_state(tmp_path, "interrupted", "fit")
    run = tmp_path.resolve()
    assert resume_arguments([f"resume={tmp_path}"]) == [
        "seed=3",
        f"resume={run}",
        f"hydra.run.dir={run}",
    ]
    # The person resuming may trust a module again, on their own command line.
    assert resume_arguments([f"resume={tmp_path}", "trusted_targets=[mine]"]) == [
        "seed=3",
        "trusted_targets=[mine]",
        f"resume={run}",
        f"hydra.run.dir={run}",
    ]
