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
from rnnlab.cells.jordan import (
    JordanFunction,
    fed_output,
    jordan_sequence,
    jordan_sequence_reference,
    jordan_step,
)
from rnnlab.cells.lstm import (
    LN_EPS,
    LSTMExtFunction,
    LSTMFunction,
    LSTMLayerNorm,
    init_forget_bias,
    lstm_ext_sequence,
    lstm_ext_sequence_reference,
    lstm_ext_step,
    lstm_sequence,
    lstm_sequence_reference,
    lstm_step,
)
from rnnlab.cells.pascanu import (
    PascanuFunction,
    pascanu_sequence,
    pascanu_sequence_reference,
    pascanu_step,
)

__all__ = [
    "LN_EPS",
    "LSTMExtFunction",
    "LSTMLayerNorm",
    "init_forget_bias",
    "lstm_ext_sequence",
    "lstm_ext_sequence_reference",
    "lstm_ext_step",
    "JordanFunction",
    "PascanuFunction",
    "fed_output",
    "jordan_sequence",
    "jordan_sequence_reference",
    "jordan_step",
    "pascanu_sequence",
    "pascanu_sequence_reference",
    "pascanu_step",
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
