"""`distill-train`: compose conf/train.yaml with the command line's overrides and run it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from distill.errors import ConfigError

# Configs live at the repository's top level (conf/), next to the package of an editable install.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

log = logging.getLogger("distill")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _train(cfg: DictConfig) -> None:
    # Imported here so that `--help` and `--cfg job` answer without loading torch.
    from distill.errors import ExportError
    from distill.pipeline import train

    try:
        train(cfg)
    except ConfigError as error:
        log.error("Configuration error: %s", error)
        sys.exit(2)
    except ExportError as error:
        # Training finished and its outputs are kept; only the export is missing.
        log.error("Export failed, no deployment artifact was kept: %s", error)
        sys.exit(1)


def main() -> None:
    if not CONF_DIR.is_dir():
        sys.exit(
            f"distill-train: no configs at {CONF_DIR}; install from a clone with pip install -e ."
        )
    _train()


if __name__ == "__main__":
    main()
