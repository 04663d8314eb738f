"""Keys only a command line may set (distill.trust.is_command_line_only): Hydra's own config,
which Hydra builds before distill checks any `_target_`, and `trusted_targets`. A recipe, a
recipe's quick overrides and a search space may not set them."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.plugins.config_source import ConfigSource
from omegaconf import OmegaConf

from distill.config import CONF_DIR
from distill.errors import ConfigError
from distill.recipe import read_recipe
from distill.search.space import parse_space
from hydra_plugins.distill_recipes.distill_recipes import sets_hydra


@pytest.mark.parametrize(
    ("text", "sets"),
    [
        ("# @package _global_\nstudent:\n  hidden_sizes: [8]\n", False),
        ("# @package _global_\ndefaults:\n  - override /student: mlp\n  - _self_\n", False),
        ("# @package _global_\nhydra:\n  callbacks: {}\n", True),
        ("# @package hydra.callbacks\nx:\n  _target_: os.system\n", True),
        ("# @package _global_.hydra\nx: 1\n", True),
        ("# @package _global_\ndefaults:\n  - override /hydra/launcher: slurm\n", True),
        ("# @package _global_\ndefaults:\n  - /recipe/other@hydra.callbacks.x\n", True),
        ("# @package _global_\ndefaults:\n  - /recipe/other@_global_.hydra: x\n", True),
    ],
)
def test_a_recipe_that_would_change_hydras_own_config_is_told_apart(text, sets):
    header = ConfigSource._get_header_dict(text)
    assert sets_hydra(OmegaConf.create(text), header) is sets


def test_hydra_refuses_to_load_a_recipe_that_sets_hydra(tmp_path):
    (tmp_path / "evil.yaml").write_text(
        "# @package _global_\nhydra:\n  callbacks:\n    evil:\n      _target_: builtins.print\n"
    )
    with (
        initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"),
        pytest.raises(HydraException, match="a recipe may not set hydra"),
    ):
        compose(
            "train",
            overrides=[f"hydra.searchpath=[distill-recipes://{tmp_path}]", "recipe=evil"],
            return_hydra_config=True,
        )


@pytest.mark.parametrize(
    "override",
    ["trusted_targets=[os]", "+hydra.callbacks.x._target_=os.system", "hydra/launcher=slurm"],
)
def test_a_recipes_quick_overrides_and_a_search_space_may_not_trust_code(override, compose_cfg):
    cfg = compose_cfg("recipe=default")
    cfg.recipe.quick.overrides = [override]
    with pytest.raises(ConfigError) as error:
        read_recipe(cfg, "default")
    assert (error.value.field, error.value.value) == ("recipe.quick.overrides", override)
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as searched:
        parse_space({key: "choice([os],[subprocess])"})
    assert searched.value.field == f"search.space.{key.lstrip('+')}"
    assert searched.value.allowed == "a run setting other than trusted_targets or hydra.*"
