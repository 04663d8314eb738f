"""The `_target_` allowlist (distill.trust): what a config may build, what it may not, and that
a refused node is refused before anything in it runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn

from distill.config import CONF_DIR, build
from distill.data import ClassificationDataModule
from distill.deploy.compressed import load_compressed, save_compressed
from distill.errors import ConfigError
from distill.models import MLP
from distill.recipe import RECIPES_DIR, recipe_names
from distill.trust import (
    DEFAULT_PREFIXES,
    SEARCH_SAMPLERS,
    check_config_targets,
    check_prefixes,
    check_targets,
    trusted_targets,
    trusting,
)

from ..conftest import config_options

LIST = ", ".join(DEFAULT_PREFIXES)
HINT = "(add one on the command line: trusted_targets=[PREFIX])"


class TrustedNet(MLP):
    """A model of the user's own package (this module), trusted with `trusting`."""


def evil_pickle(folder: Path) -> tuple[Path, Path]:
    """A file that creates `marker` when unpickled whole (torch.load, weights_only=False)."""

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    marker = folder / "pwned"
    path = folder / "evil.pt"
    torch.save(Evil(), path)
    return path, marker


def refusal(node: dict, field: str = "student") -> ConfigError:
    with pytest.raises(ConfigError) as error:
        build(OmegaConf.create(node), field)
    return error.value


# --- what the project itself builds ---------------------------------------------------------


def every_setting() -> list[list[str]]:
    groups = sorted(path.name for path in CONF_DIR.iterdir() if path.is_dir())
    settings = [
        [f"{group}={option}"]
        for group in groups
        if group not in {"hydra", "search"}  # Hydra's own; the search's: below
        for option in config_options(group)
    ]
    settings += [[f"+search={option}"] for option in config_options("search")]
    return settings + [[f"recipe={name}"] for name in recipe_names()]


@pytest.mark.parametrize("overrides", every_setting(), ids=" ".join)
def test_every_config_and_recipe_of_the_project_passes_the_default_allowlist(
    overrides, compose_cfg
):
    cfg = compose_cfg(*overrides)
    OmegaConf.resolve(cfg)  # every interpolated target checked too
    if "search" in cfg:
        check_targets(cfg.search.sampler, "search.sampler", also=SEARCH_SAMPLERS)
        with open_dict(cfg):
            del cfg.search["sampler"]  # the sampler is allowed there only
    check_config_targets(cfg)


def test_every_target_written_in_conf_and_recipes_passes_the_default_allowlist():
    """Also the ones no composition holds: a search space's choices of `_target_`."""
    written = re.compile(r"_target_[:=]\s*(?:choice\()?([\w., ]+)")
    # conf/hydra/ is Hydra's own config, which Hydra builds.
    conf = [path for path in CONF_DIR.rglob("*.yaml") if CONF_DIR / "hydra" not in path.parents]
    targets = {
        name.strip()
        for path in [*conf, *RECIPES_DIR.rglob("*.yaml")]
        for line in path.read_text().splitlines()
        if not line.lstrip().startswith("#")
        for match in written.finditer(line)
        for name in match.group(1).split(",")
    }
    assert "distill.compression.BNGammaScore" in targets  # the search space's choices
    assert "pytorch_lightning.Trainer" in targets
    for target in sorted(targets - {"optuna.samplers.TPESampler"}):
        check_targets(OmegaConf.create({"_target_": target}), "x")


# --- refused targets ------------------------------------------------------------------------


def test_a_refusal_names_the_field_the_target_and_how_to_add_a_prefix():
    error = refusal({"_target_": "os.system", "_args_": ["true"]})
    assert str(error) == (
        "student._target_='os.system' is not allowed: a class or function under an allowed "
        f"prefix: {LIST} {HINT}"
    )


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("os.system", "a class or function under an allowed prefix: "),
        ("builtins.eval", "a class or function under an allowed prefix: "),
        ("builtins.exec", "a class or function under an allowed prefix: "),
        ("subprocess.run", "a class or function under an allowed prefix: "),
        ("pickle.loads", "a class or function under an allowed prefix: "),
        ("torch.load", "a class or function under an allowed prefix: "),
        ("torch.hub.load", "a class or function under an allowed prefix: "),
        ("hydra.utils.get_method", "a class or function under an allowed prefix: "),
        ("hydra.utils.instantiate", "a class or function under an allowed prefix: "),
        # Under `distill`, but not one of the parts a config builds: it runs a subprocess.
        ("distill.search.trials.run_trial", "a class or function under an allowed prefix: "),
        # Under pytorch_lightning, but not its trainer, callbacks or file loggers: it builds
        # any class a string names.
        ("pytorch_lightning.cli.instantiate_class", "a class or function under an allowed "),
        # A prefix matches whole module names only.
        ("distill.modelsx.Net", "a class or function under an allowed prefix: "),
        ("torch.nn_extra.Linear", "a class or function under an allowed prefix: "),
        # Names that only pass through an allowed module.
        (
            "torch.nn.functional.torch.load",
            "a class or function defined (this is torch.serialization.load) under an allowed ",
        ),
        (
            "distill.models.mlp.torch.load",
            "a class or function defined (this is torch.serialization.load) under an allowed ",
        ),
        # Methods, whatever they are bound to: loaders of checkpoints among them.
        (
            "torch.nn.Module.load_state_dict",
            "a class or module-level function (this is a method) under an allowed prefix: ",
        ),
        (
            "distill.data.MNIST1DDataModule.load_from_checkpoint",
            "a class or module-level function (this is a method) under an allowed prefix: ",
        ),
        (
            "distill.models",
            "a class or module-level function (this is a module) under an allowed prefix: ",
        ),
        (
            "torch.nn.attention._fa3.register_flash_attention_fa3",
            "a public name (no part starting with _) under an allowed prefix: ",
        ),
        ("torch.nn.Module.__init__", "a public name (no part starting with _) under an "),
    ],
)
def test_targets_outside_the_allowlist_are_refused(target, why):
    error = refusal({"_target_": target})
    assert (error.field, error.value) == ("student._target_", target)
    assert error.allowed.startswith(why)
    assert error.allowed.endswith(f"{LIST} {HINT}")


@pytest.mark.parametrize("target", [None, 3, "", "os system", "x..y", ".x", "${oc.env:HOME}"])
def test_a_target_that_is_no_dotted_name_is_refused(target):
    error = refusal({"_target_": target})
    assert (error.field, error.allowed) == (
        "student._target_",
        "a dotted name of a class or function: distill.models.MLP",
    )


@pytest.mark.parametrize(
    ("node", "field"),
    [
        ({"evil": {"_target_": "os.system"}}, "student.evil._target_"),
        ({"_args_": [{"_target_": "os.system"}]}, "student._args_[0]._target_"),
        (
            {"layers": [1, {"deep": [{"_target_": "os.system"}]}]},
            "student.layers[1].deep[0]._target_",
        ),
        ({"act": {"_target_": "os.system", "_partial_": True}}, "student.act._target_"),
        # Not built by Hydra (`_recursive_: false`), but the built target could build it.
        ({"_recursive_": False, "act": {"_target_": "os.system"}}, "student.act._target_"),
        ({"_convert_": "all", "act": {"_target_": "os.system"}}, "student.act._target_"),
    ],
)
def test_a_nested_target_is_refused_by_its_field_path(node, field):
    error = refusal(
        {"_target_": "distill.models.MLP", "input_shape": [4], "num_classes": 2, **node}
    )
    assert (error.field, error.value) == (field, "os.system")


def test_nothing_in_a_refused_node_runs(tmp_path):
    evil, marker = evil_pickle(tmp_path)
    node = {
        "_target_": "distill.models.MLP",
        "input_shape": [4],
        "num_classes": 2,
        "first": {"_target_": "builtins.open", "file": str(tmp_path / "opened"), "mode": "w"},
        "then": {"_target_": "torch.load", "f": str(evil), "weights_only": False},
    }
    assert refusal(node).field == "student.first._target_"
    assert list(tmp_path.iterdir()) == [evil]
    # The control: the file does what it says when unpickled whole.
    torch.load(evil, weights_only=False)
    assert marker.is_file()


def test_an_interpolated_target_is_checked_resolved(monkeypatch):
    monkeypatch.setenv("DISTILL_TEST_TARGET", "os.system")
    cfg = OmegaConf.create(
        {
            "evil": {"_target_": "os.system"},
            "student": {"_target_": "${oc.env:DISTILL_TEST_TARGET}"},
        }
    )
    error = refusal({"_target_": "${oc.env:DISTILL_TEST_TARGET}"})
    assert (error.field, error.value) == ("student._target_", "os.system")
    # The whole config: literal targets at once, interpolated ones when their node is built.
    with pytest.raises(ConfigError) as whole:
        check_config_targets(cfg)
    assert whole.value.field == "evil._target_"
    del cfg["evil"]
    check_config_targets(cfg)
    with pytest.raises(ConfigError, match=r"^student._target_='os.system'"):
        build(cfg.student, "student")


def test_weights_only_false_is_refused_even_under_a_trusted_prefix(tmp_path):
    evil, marker = evil_pickle(tmp_path)
    node = {"_target_": "torch.load", "f": str(evil), "weights_only": False}
    with trusting(["torch"]), pytest.raises(ConfigError) as error:
        build(OmegaConf.create(node), "data")
    assert str(error.value) == (
        "data.weights_only=False is not allowed: true (a file loaded with weights_only=false "
        "can run any code it holds)"
    )
    assert not marker.exists()
    torch.save(torch.ones(2), tmp_path / "tensor.pt")
    node = {"_target_": "torch.load", "f": str(tmp_path / "tensor.pt"), "weights_only": True}
    with trusting(["torch"]):
        assert torch.equal(build(OmegaConf.create(node), "data"), torch.ones(2))


# --- extending it ---------------------------------------------------------------------------


def test_a_trusted_prefix_allows_its_targets_for_the_block_only():
    node = OmegaConf.create(
        {"_target_": f"{__name__}.TrustedNet", "input_shape": [4], "num_classes": 2}
    )
    with trusting([__name__]):
        assert isinstance(build(node, "student"), TrustedNet)
    with pytest.raises(ConfigError) as error:
        build(node, "student")
    assert error.value.allowed == f"a class or function under an allowed prefix: {LIST} {HINT}"


def test_a_prefix_naming_one_object_allows_it_wherever_it_is_defined():
    # pytorch_lightning.Trainer is defined in pytorch_lightning.trainer.trainer, not allowed.
    check_targets(OmegaConf.create({"_target_": "pytorch_lightning.Trainer"}), "trainer")
    error = refusal({"_target_": "pytorch_lightning.trainer.trainer.Trainer"}, "trainer")
    assert error.field == "trainer._target_"


def test_prefixes_are_dotted_module_names():
    assert check_prefixes("--trust-targets", ["my_pkg.models", "timm"]) == ("my_pkg.models", "timm")
    for bad in (["my pkg"], [""], [".x"], ["x."], "timm", [3]):
        with pytest.raises(ConfigError) as error:
            check_prefixes("--trust-targets", bad)
        assert error.value.allowed == "a list of module prefixes, e.g. [my_pkg.models]"


def test_trusted_targets_come_from_the_command_line_only(compose_cfg):
    given = ["trusted_targets=[my_pkg.models,timm]"]
    cfg = compose_cfg(*given)
    assert trusted_targets(cfg, given) == ("my_pkg.models", "timm")
    # The same value, but no command line set it: a file did.
    with pytest.raises(ConfigError) as error:
        trusted_targets(cfg, ["data=digits"])
    assert str(error.value) == (
        "trusted_targets=['my_pkg.models', 'timm'] is not allowed: set on the command line "
        "only (trusted_targets=[PREFIX]): a recipe or config file cannot trust code for itself"
    )
    assert trusted_targets(compose_cfg(), []) == ()
    with pytest.raises(ConfigError, match="a list of module prefixes"):
        trusted_targets(compose_cfg("trusted_targets=timm"), ["trusted_targets=timm"])


# --- where configs come from files ----------------------------------------------------------


def test_a_compressed_file_builds_only_allowed_targets(tmp_path):
    student = MLP(input_shape=[4], num_classes=2, hidden_sizes=[3])
    marker = tmp_path / "pwned"
    config = {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w')"]}
    save_compressed(student, tmp_path / "student.dcmp", model_config=config)
    with pytest.raises(ConfigError) as error:
        load_compressed(tmp_path / "student.dcmp")
    assert (error.value.field, error.value.value) == ("student._target_", "builtins.exec")
    assert not marker.exists()
    # A model given by the caller needs no config at all.
    assert isinstance(load_compressed(tmp_path / "student.dcmp", MLP([4], 2, [3])), MLP)


def test_a_model_built_by_an_allowed_target_is_a_plain_module():
    # The control for the refusals above: the allowlist lets the project's own models through.
    node = OmegaConf.create({"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 1})
    assert isinstance(build(node, "student", nn.Module), nn.Linear)


def test_an_allowed_target_is_still_refused_for_what_it_builds():
    # collections.OrderedDict used to show this; it is refused by the allowlist now.
    node = OmegaConf.create(
        {"_target_": "distill.models.MLP", "input_shape": [4], "num_classes": 2}
    )
    with pytest.raises(ConfigError) as error:
        build(node, "data", ClassificationDataModule)
    assert str(error.value) == (
        "data._target_='distill.models.MLP' is not allowed: a target that builds a "
        "distill.data.ClassificationDataModule (this one builds a distill.models.MLP)"
    )
