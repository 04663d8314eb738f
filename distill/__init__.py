"""distill: knowledge distillation with compression hooks, on PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
