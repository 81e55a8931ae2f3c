"""Cell families, one file each: equations, reference step and hand-derived fused BPTT."""

from rnnlab.cells.elman import (
    ElmanFunction,
    elman_sequence,
    elman_sequence_reference,
    elman_step,
)
from rnnlab.cells.gru import (
    GRU_FORMS,
    GRUFunction,
    check_gru_form,
    gru_sequence,
    gru_sequence_reference,
    gru_step,
)
from rnnlab.cells.lstm import LSTMFunction, lstm_sequence, lstm_sequence_reference, lstm_step

__all__ = [
    "GRU_FORMS",
    "GRUFunction",
    "check_gru_form",
    "gru_sequence",
    "gru_sequence_reference",
    "gru_step",
    "ElmanFunction",
    "LSTMFunction",
    "elman_sequence",
    "elman_sequence_reference",
    "elman_step",
    "lstm_sequence",
    "lstm_sequence_reference",
    "lstm_step",
]
