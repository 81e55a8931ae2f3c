"""Which path a recurrent layer's forward and backward take: the choice behind ``backend=``.

The layers of :mod:`rnnlab.layers` (``RNN``, ``LSTM``, ``GRU``, ``PascanuRNN``,
``JordanRNN``) run each layer and direction through one of these paths:

``fused``      the cell's whole-sequence ``torch.autograd.Function`` with hand-derived BPTT
               (:mod:`rnnlab.cells`): every cell family and option; the reference for
               speed work and the fallback.
``reference``  the cell's reference step in a Python loop, differentiated by autograd.
``torch``      PyTorch's own recurrent kernel (``torch._VF.lstm / gru / rnn_tanh /
               rnn_relu``, what ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` call), on the layer's
               own parameters: only where ``torch.nn`` computes the same function (plain
               LSTM, with or without ``proj_size``; GRU in the torch form; Elman with tanh or
               relu).  On the CPU in float32 PyTorch runs the LSTM through oneDNN.

``numba``      the LSTM (any of its options), the GRU (both forms) and
               the Elman layer on the CPU in float32 or float64: each step one product
               and one compiled pass over the step's element-wise work, forward and
               backward, a batch's whole loop in one compiled call with oneDNN's brgemm
               or MKL called inside it (:mod:`rnnlab.backends.numba_lstm`, ``numba_gru``,
               ``numba_elman``, ``numba_blas``), and the Pascanu form (``numba_pascanu``).
               The Jordan network with hidden recurrence: its fused path with the hidden loop
               compiled (``numba_elman.ElmanRecurrence``) wherever that loop is the
               Elman one, under full teacher forcing; a free-running or
               scheduled-sampling call runs as ``fused``.

``auto`` (the default) takes the fastest of these that computes the same function, by
the rule in :func:`choose_training_backend`: ``torch`` for the plain LSTM on every device
(oneDNN on the CPU) and for every counterpart on a GPU (cuDNN); ``numba`` on the CPU for
the projected LSTM and the LSTM with peepholes, layer norm, zoneout or recurrent
dropout, the GRU in both forms, every Elman layer, the Pascanu layer and the Jordan
network with hidden recurrence (faster than ``fused`` for each, and the projected LSTM,
GRU and Elman layers faster than ``torch.nn``'s kernels: the projected LSTM 0.15-0.73 of
PyTorch's time, which has no oneDNN kernel for it; docs/performance.md); ``fused`` for
the Jordan network without hidden recurrence and wherever Numba cannot be imported.  The
compiled plain LSTM measured 0.76-0.92 of oneDNN's time in ordinary processes but
1.08-1.09 where ``malloc`` keeps its freed memory (oneDNN's own time moves with its page
faults), so oneDNN keeps the plain LSTM.  No path
changes results beyond floating-point rounding: the tests hold ``fused``, ``numba`` and
``torch`` to the reference at 1e-10 in float64.
"""

from __future__ import annotations

import torch

from rnnlab.backends import BackendChoice, numba_import_error

TRAINING_BACKENDS = ("auto", "fused", "reference", "torch", "numba")

# Cells whose fused path measured faster than PyTorch's kernel on the CPU, at every issue-8
# shape, at 1 and 2 threads (docs/performance.md, "Choosing the training path"); and those
# whose compiled path (backend "numba") measured faster still (session 8: the GRU 0.18-0.81
# of torch.nn.GRU's time and the Elman layer 0.31-0.86 of torch.nn.RNN's, where fused took
# 0.57-1.06 and 0.58-0.96; docs/performance.md).  The fused path remains where Numba cannot
# be imported or cannot cache its compiled code.
FUSED_WINS_ON_CPU = ("gru", "rnn")
NUMBA_WINS_ON_CPU = ("lstm", "gru", "rnn")  # the LSTM: projected only (below)


def torch_counterpart(layer) -> tuple[str | None, str]:
    """``(kernel, why)``: the ``torch._VF`` kernel computing ``layer``'s function (``"lstm"``,
    ``"gru"``, ``"rnn_tanh"``, ``"rnn_relu"``), or None and the reason there is none."""
    kind = getattr(layer, "cell_kind", None)
    if kind == "lstm":
        if layer.has_options:
            return (
                None,
                "peephole / layer_norm / recurrent_dropout / zoneout have no torch.nn kernel",
            )
        return "lstm", "torch.nn.LSTM's kernel"
    if kind == "gru":
        if layer.form != "torch":
            return None, "the Cho-form GRU has no torch.nn kernel"
        return "gru", "torch.nn.GRU's kernel"
    if kind == "rnn":
        if layer.nonlinearity == "sigmoid":
            return None, "the sigmoid Elman layer has no torch.nn kernel"
        return f"rnn_{layer.nonlinearity}", "torch.nn.RNN's kernel"
    return None, f"{type(layer).__name__} has no torch.nn counterpart"


def choose_training_backend(layer, backend: str | None = None) -> BackendChoice:
    """The path ``layer`` (an rnnlab layer) runs with ``backend`` (default: its own), and why.

    ``auto``: as the module docstring says.  ``torch`` asked for where there is no
    counterpart raises ValueError (one line).
    """
    backend = layer.backend if backend is None else backend
    if backend not in TRAINING_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(TRAINING_BACKENDS)}; got {backend!r}")
    if backend in ("fused", "reference"):
        return BackendChoice(backend, "asked for")
    if backend == "numba":
        why_not = numba_unsupported(layer)
        if why_not is not None:
            raise ValueError(f"backend 'numba' cannot run this layer: {why_not}")
        return BackendChoice("numba", "asked for")
    kernel, why = torch_counterpart(layer)
    if backend == "torch":
        if kernel is None:
            raise ValueError(f"backend 'torch' cannot run this layer: {why}")
        return BackendChoice("torch", why)
    device = _device(layer)
    if kernel is None:
        if _numba_pays(layer):
            if _is_jordan(layer):
                return BackendChoice(
                    "numba", f"{why}; compiled hidden recurrence under teacher forcing"
                )
            return BackendChoice("numba", f"{why}; compiled steps beat fused on the CPU")
        return BackendChoice("fused", why)
    if device.type != "cpu":
        return BackendChoice("torch", f"{why} on {device.type}")
    if layer.cell_kind == "lstm" and not layer.proj_size:
        return BackendChoice("torch", f"{why}, faster than fused on the CPU")
    if layer.cell_kind in NUMBA_WINS_ON_CPU and _numba_pays(layer):
        return BackendChoice("numba", "compiled steps, faster than torch.nn's kernel on the CPU")
    if layer.cell_kind in FUSED_WINS_ON_CPU:
        return BackendChoice("fused", "faster than torch.nn's kernel on the CPU")
    return BackendChoice("torch", f"{why}, faster than fused on the CPU")


def numba_unsupported(layer) -> str | None:
    """Why the compiled path (``backend="numba"``) cannot run ``layer``, or None."""
    kind = getattr(layer, "cell_kind", None)
    if kind is None and _is_jordan(layer):
        if not layer.hidden_recurrence:
            return (
                "a Jordan network without hidden recurrence has no hidden loop to compile; "
                "use backend='fused'"
            )
    elif kind not in ("lstm", "gru", "rnn") and not _is_pascanu(layer):
        return (
            f"it runs LSTM, GRU, Elman, Pascanu and Jordan layers only, not {type(layer).__name__}"
        )
    device, dtype = _device(layer), _dtype(layer)
    if device.type != "cpu":
        return f"it runs on the CPU; this layer is on {device.type}"
    if dtype not in (torch.float32, torch.float64):
        return f"it runs float32 and float64 layers; this one is {dtype}"
    error = numba_import_error()
    if error is not None:
        return error
    return None


def _numba_pays(layer) -> bool:
    """Whether ``auto`` takes the compiled path: it can run the layer, and its compiled
    code is cached on disk.  Without a writable cache directory every process would
    compile it again (4-17 s), more than it saves in a short job."""
    if numba_unsupported(layer) is not None:
        return False
    from rnnlab.backends import numba_lstm  # the three modules are compiled alike
    from rnnlab.backends.numba_math import is_cached

    return is_cached(numba_lstm._forward_step)


def _is_pascanu(layer) -> bool:
    return hasattr(layer, "sigma")  # rnnlab.layers.PascanuRNN


def _is_jordan(layer) -> bool:
    return hasattr(layer, "hidden_recurrence")  # rnnlab.layers.JordanRNN


def _dtype(layer) -> torch.dtype:
    p = next(layer.parameters(), None)
    return p.dtype if p is not None else torch.get_default_dtype()


def _device(layer) -> torch.device:
    p = next(layer.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


__all__ = [
    "TRAINING_BACKENDS",
    "choose_training_backend",
    "numba_unsupported",
    "torch_counterpart",
]
