"""Training: configs, the engine (truncated BPTT, clipping, regularisers, schedules,
checkpoints and resumption)."""

from rnnlab.training.checkpoint import load_checkpoint, save_checkpoint
from rnnlab.training.clipping import clip_gradients
from rnnlab.training.config import (
    DataConfig,
    OptimConfig,
    OutputConfig,
    TrainConfig,
    load_config,
)
from rnnlab.training.regularizers import pascanu_omega
from rnnlab.training.schedules import LRSchedule, ScheduleConfig, TeacherForcing
from rnnlab.training.streams import StreamTask, detach_state
from rnnlab.training.trainer import Trainer, TrainResult, evaluate, prepare_data, train

__all__ = [
    "DataConfig",
    "LRSchedule",
    "OptimConfig",
    "OutputConfig",
    "ScheduleConfig",
    "StreamTask",
    "TeacherForcing",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "clip_gradients",
    "detach_state",
    "evaluate",
    "load_checkpoint",
    "load_config",
    "pascanu_omega",
    "prepare_data",
    "save_checkpoint",
    "train",
]
