"""The slimmed student as a self-contained file: channels removed, then `torch.export`-ed.

A slimmed model no longer matches its config's architecture, so a state_dict alone cannot be
loaded back. `torch.export` stores the graph with the weights (no pickled Python objects, so
nothing runs on load) and keeps the batch dimension dynamic; `load_slim` gives back a module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.export import Dim

from distill.deploy.slim import SlimReport
from distill.files import atomic_write

SLIM_FILE = "student_slim.pt2"


def export_with_dynamic_batch(model: nn.Module, example_inputs: Tensor) -> Any:
    model.eval()
    batch = Dim("batch", min=1)
    return torch.export.export(model, (example_inputs,), dynamic_shapes=({0: batch},))


def save_slim(report: SlimReport, example_inputs: Tensor, run_dir: Path) -> dict[str, Any]:
    """Save the slimmed student of `report` (`remove_zero_channels` of the baked student) and
    describe it; `example_inputs` (a batch of two or more) traces it with a dynamic batch."""
    program = export_with_dynamic_batch(report.model, example_inputs)
    path = atomic_write(run_dir / SLIM_FILE, lambda handle: torch.export.save(program, handle))
    return {
        "path": SLIM_FILE,
        "bytes": path.stat().st_size,
        "params": report.params_after,
        "macs": report.macs_after,
        "params_dense": report.params_before,
        "macs_dense": report.macs_before,
        "channels": report.channels_after,
        "max_abs_diff": report.max_abs_diff,
    }


def load_slim(path: str | Path) -> nn.Module:
    """The slimmed student saved by `save_slim`, ready to run (eval mode)."""
    return torch.export.load(str(path)).module()
