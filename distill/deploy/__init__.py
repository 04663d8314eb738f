"""After training: physical channel removal and the slimmed student's file."""

from distill.deploy.export import load_slim, save_slim
from distill.deploy.slim import SlimReport, find_zero_channels, remove_zero_channels

__all__ = ["SlimReport", "find_zero_channels", "load_slim", "remove_zero_channels", "save_slim"]
