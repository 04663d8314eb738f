"""After training: physical channel removal, ONNX fp32/int8 export checked in onnxruntime, the
compressed student, and the measured report (`export_run`, behind `distill-export`)."""

from distill.deploy.compressed import load_compressed, save_compressed
from distill.deploy.slim import SlimReport, find_zero_channels, remove_zero_channels
from distill.deploy.slim_file import load_slim, save_slim

__all__ = [
    "SlimReport",
    "find_zero_channels",
    "load_compressed",
    "load_slim",
    "remove_zero_channels",
    "save_compressed",
    "save_slim",
]
