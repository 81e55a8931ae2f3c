"""Cell families, one file each: equations, reference step and hand-derived fused BPTT."""

from rnnlab.cells.elman import (
    ElmanFunction,
    elman_sequence,
    elman_sequence_reference,
    elman_step,
)
from rnnlab.cells.lstm import LSTMFunction, lstm_sequence, lstm_sequence_reference, lstm_step

__all__ = [
    "ElmanFunction",
    "LSTMFunction",
    "elman_sequence",
    "elman_sequence_reference",
    "elman_step",
    "lstm_sequence",
    "lstm_sequence_reference",
    "lstm_step",
]
