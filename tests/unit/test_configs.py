"""Every option of every config group composes and instantiates (one settings table)."""

from __future__ import annotations

import hydra
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn

from distill.checks import check_fits_data
from distill.config import build, build_named
from distill.data import ClassificationDataModule, write_cifar_batches
from distill.losses import LossTerm, WeightedSum
from distill.module import DistillationModule
from distill.recipe import recipe_names
from distill.search import plan_search

from ..conftest import CONF_DIR, config_options
from .test_image_folder import CLASSES, write_split

# Groups whose options are plain objects, and how to check what comes out.
GROUPS = [
    "data",
    "teacher",
    "student",
    "loss",
    "optimizer",
    "lr_scheduler",
    "trainer",
    "logger",
    "callbacks",
    "pruning",
    "quantization",
    "paths",
]
# Recipes are a group too, served from recipes/ by hydra_plugins/distill_recipes.
SETTINGS = [(group, option) for group in GROUPS for option in config_options(group)] + [
    ("recipe", name) for name in recipe_names()
]


def test_settings_table_covers_every_config_file():
    # search/ configures distill-search, not a run: tested below.
    groups = {path.name for path in CONF_DIR.iterdir() if path.is_dir()} - {"hydra", "search"}
    assert groups == set(GROUPS)
    assert len(SETTINGS) == sum(len(config_options(group)) for group in groups) + len(
        recipe_names()
    )


def write_tiny_cifar(root, variant):
    classes = 10 if variant == "cifar10" else 100
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * 2, 3, 32, 32), generator=generator).to(torch.uint8)
    labels = list(range(classes)) * 2
    write_cifar_batches(root / "data", variant, images.numpy(), labels, images.numpy(), labels)


@pytest.mark.parametrize(("group", "option"), SETTINGS, ids=[f"{g}={o}" for g, o in SETTINGS])
def test_config_option_composes_and_instantiates(group, option, compose_cfg, tmp_path):
    overrides = [f"{group}={option}"]
    # Image models are paired with digits, an image dataset that needs no files.
    one_d = {"cnn1d_small", "mlp", "gru", "transformer"}
    if group == "student" and option not in one_d and not option.endswith("_1d"):
        overrides += ["data=digits", "teacher=cnn2d_digits"]
    if group == "teacher" and not option.endswith("mnist1d"):
        overrides += ["data=digits", "student=cnn2d_small"]
    cfg = compose_cfg(*overrides)
    OmegaConf.resolve(cfg)  # every interpolation resolves

    if group == "data":
        if option.startswith("cifar"):
            write_tiny_cifar(tmp_path, option)
        if option == "image_folder":
            write_split(tmp_path / "data" / "images")  # where paths.data_dir puts data.root
            cfg.data.num_classes = len(CLASSES)  # null in the file: the user's to give
        datamodule = build(cfg.data, "data")
        assert isinstance(datamodule, ClassificationDataModule)
        datamodule.setup("fit")
        assert datamodule.num_classes == cfg.data.num_classes
        assert tuple(datamodule.input_shape) == tuple(cfg.data.input_shape)
    elif group in {"student", "teacher", "recipe"}:
        if cfg.data.get("variant", "").startswith("cifar"):
            write_tiny_cifar(tmp_path, cfg.data.variant)
        datamodule = build(cfg.data, "data")
        datamodule.setup("fit")
        models = {}
        for field, node in (("student", cfg.student), ("teacher.model", cfg.teacher.model)):
            models[field] = model = build(node, field)
            assert isinstance(model, nn.Module)
            check_fits_data(model, datamodule, field)
        if group == "recipe":
            # Every tap the recipe's loss names exists, and adapters/heads size themselves.
            loss = WeightedSum(build_named(cfg.loss, "loss"))
            DistillationModule(
                models["student"],
                loss,
                optimizer=build(cfg.optimizer, "optimizer"),
                num_classes=datamodule.num_classes,
                teacher=models["teacher.model"],
                example_inputs=datamodule.example_input_batch(2),
                num_train_samples=len(datamodule.train_dataset),
            )
        optimizer = build(cfg.teacher.train.optimizer, "teacher.train.optimizer")
        torch_optimizer = optimizer(model.parameters())
        build(cfg.teacher.train.lr_scheduler, "teacher.train.lr_scheduler")(torch_optimizer)
    elif group == "loss":
        terms = build_named(cfg.loss, "loss")
        assert terms and all(isinstance(term, LossTerm) for term in terms.values())
    elif group in {"optimizer", "lr_scheduler"}:
        optimizer = build(cfg.optimizer, "optimizer")([nn.Parameter(torch.zeros(2))])
        assert isinstance(optimizer, torch.optim.Optimizer)
        if cfg.lr_scheduler is not None:
            build(cfg.lr_scheduler, "lr_scheduler")(optimizer)
    elif group == "trainer":
        if option == "gpu" and not torch.cuda.is_available():
            assert cfg.trainer.accelerator == "gpu"  # composes; building needs a GPU
            return
        trainer = build(cfg.trainer, "trainer", logger=False, enable_checkpointing=False)
        assert isinstance(trainer, pl.Trainer)
    elif group == "logger":
        loggers = build_named(cfg.logger, "logger")
        assert (option == "none") == (not loggers)
    elif group == "callbacks":
        callbacks = build_named(cfg.callbacks, "callbacks")
        assert (option == "none") == (not callbacks)
        assert all(isinstance(callback, pl.Callback) for callback in callbacks.values())
    elif group == "pruning":
        pruning = build(cfg.pruning, "pruning") if cfg.pruning is not None else None
        assert (option == "none") == (pruning is None)
        if pruning is not None:
            datamodule = build(cfg.data, "data")
            student = build(cfg.student, "student")
            pruning.attach(student, datamodule.example_input_batch(2))
            assert pruning.layers
    elif group == "quantization":
        quantization = build(cfg.quantization, "quantization") if cfg.quantization else None
        assert (option == "none") == (quantization is None)
        if quantization is not None:
            datamodule = build(cfg.data, "data")
            student = build(cfg.student, "student")
            quantization.attach(student, datamodule.example_input_batch(2))
            assert quantization.layers and quantization.sites.names
            quantization.check_exportable()  # every shipped setting exports to int8 ONNX
    elif group == "paths":
        assert cfg.paths.output_dir.endswith("run")


def test_default_recipe_composes_to_mnist1d_kd():
    from ..conftest import compose_train

    cfg = compose_train([], root=CONF_DIR.parent / "unused")
    assert cfg.data._target_ == "distill.data.MNIST1DDataModule"
    assert set(cfg.loss) == {"ce", "kd"}
    assert cfg.logger.wandb.mode == "auto"
    assert cfg.teacher.checkpoint is None


@pytest.mark.parametrize("option", config_options("search"))
def test_every_search_config_plans_on_the_default_recipe(option, tmp_path):
    # The plan reads the settings, parses the space and assembles a run at each of its edges.
    plan = plan_search([f"search={option}", f"paths.log_dir={tmp_path}", "logger=none"])
    assert plan.dimensions and plan.settings.n_trials >= 1
    assert str(plan.settings.dir).startswith(str(tmp_path / "search"))
    assert not (tmp_path / "search").exists()  # planning writes nothing


@pytest.mark.parametrize("option", ["channel_l1", "agp_unstructured"])
def test_the_readme_layer_sparsity_example_works_as_written(option, compose_cfg):
    # README: `pruning.layer_sparsity={features.3: 0.5}`. An empty {} default was a struct
    # node that refused the new key; null takes the mapping.
    cfg = compose_cfg(f"pruning={option}", "pruning.layer_sparsity={features.3: 0.5}")
    callback = hydra.utils.instantiate(cfg.pruning)
    assert callback.layer_sparsity == {"features.3": 0.5}
