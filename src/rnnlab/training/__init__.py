"""Training: configs, the truncated-BPTT loop and checkpoints."""

from rnnlab.training.checkpoint import load_checkpoint, save_checkpoint
from rnnlab.training.config import DataConfig, OptimConfig, OutputConfig, TrainConfig
from rnnlab.training.trainer import TrainResult, evaluate, prepare_data, train

__all__ = [
    "DataConfig",
    "OptimConfig",
    "OutputConfig",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "load_checkpoint",
    "prepare_data",
    "save_checkpoint",
    "train",
]
