"""Compiled backends and the choice between them and the plain PyTorch path.

Generation (:meth:`rnnlab.models.LanguageModel.generate`, ``rnnlab sample``) has two
paths: ``torch``, the plain one (a fused pass over the prime, then one ``layer.step()``
per token), and ``numba``, a compiled loop that primes and samples without returning to
Python per token (:mod:`rnnlab.backends.numba_generate`).  ``auto`` takes ``numba`` when
Numba imports and the loop supports the model (LSTM without options, GRU in both forms,
Elman, Pascanu form; CPU; float32 or float64), else ``torch``.  Both paths draw their
random numbers the same way (:func:`race_noise`), so they give the same tokens for the
same seed.

>>> import torch
>>> from rnnlab.models import LanguageModel, ModelConfig
>>> model = LanguageModel(ModelConfig(vocab_size=5, cell="jordan", num_layers=1))
>>> choose_generate_backend(model, "auto").name
'torch'
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

GENERATE_BACKENDS = ("auto", "numba", "torch")
NOISE_CHUNK = 4096  # tokens of noise drawn at once: CHUNK x V float64 (2 MB for V = 65)
COMPILE_NOTICE_AFTER = 3.0  # seconds of a first compiled call before saying why it is slow


@dataclass(frozen=True)
class BackendChoice:
    """The path a call will take and why, e.g. ``numba (compiled loop, 2 threads)``."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


@functools.lru_cache(maxsize=1)
def numba_import_error() -> str | None:
    """None when Numba imports (and the compiled loops with it), else why not."""
    try:
        import rnnlab.backends.numba_elman  # noqa: F401
        import rnnlab.backends.numba_generate  # noqa: F401
        import rnnlab.backends.numba_gru  # noqa: F401
        import rnnlab.backends.numba_lstm  # noqa: F401
        import rnnlab.backends.numba_pascanu  # noqa: F401
    except Exception as exc:  # ImportError, or a broken llvmlite
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def choose_generate_backend(model, backend: str = "auto") -> BackendChoice:
    """Which generation path ``model.generate(..., backend=backend)`` takes.

    ``auto``: ``numba`` where it is importable and supports the model, else ``torch``
    (silently: the reason is in the returned choice).  ``numba``: raises ValueError, one
    line, where it cannot run.  ``torch``: always the plain path.
    """
    if backend not in GENERATE_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(GENERATE_BACKENDS)}; got {backend!r}")
    if backend == "torch":
        return BackendChoice("torch", "plain path, asked for")
    error = numba_import_error()
    if error is not None:
        if backend == "numba":
            raise ValueError(f"backend 'numba' needs numba, which does not import ({error})")
        return BackendChoice("torch", "numba is not available")
    from rnnlab.backends.numba_generate import loop_threads, unsupported

    why = unsupported(model)
    if why is not None:
        if backend == "numba":
            raise ValueError(f"backend 'numba' cannot generate from this model: {why}")
        return BackendChoice("torch", why)
    threads = loop_threads(model.rnn.hidden_size)
    return BackendChoice("numba", f"compiled loop, {threads} thread{'s' if threads > 1 else ''}")


def race_noise(
    length: int,
    vocab_size: int,
    generator: torch.Generator | None,
    device=None,
    chunk: int | None = None,
) -> Iterator[torch.Tensor]:
    """The random numbers of sampling ``length`` tokens: Exp(1) draws, (n, V) float64 per
    chunk of n <= ``chunk`` (default :data:`NOISE_CHUNK`) tokens, row t for token t.

    The token is ``argmax_v p_v / q_v`` (the exponential race; P(token = i) = p_i).
    ``torch.multinomial(p, 1, generator=g)`` draws one row with ``exponential_`` and takes
    this argmax, so these rows give its samples; both generation paths consume these
    chunks, so they agree for the same generator state whatever torch does inside.
    """
    chunk = chunk or NOISE_CHUNK
    done = 0
    while done < length:
        n = min(chunk, length - done)
        q = torch.empty(n, vocab_size, dtype=torch.float64, device=device)
        yield q.exponential_(1.0, generator=generator)
        done += n


def nonfinite_message(index: int) -> str:
    return (
        f"the model's logits are not finite at generated token {index}; "
        "the weights may have diverged"
    )


def compile_notice(report: Callable[[str], object], what: str) -> threading.Timer | None:
    """A started timer that calls ``report`` with a line saying Numba is compiling the
    kernels for ``what``, unless the caller cancels it within
    :data:`COMPILE_NOTICE_AFTER` seconds.  The first use of a compiled path after an
    install compiles it (up to a minute, then cached on disk): without a word that is a
    silent pause.  Only where stderr is a terminal (logs and tests keep their lines);
    otherwise None.  The caller cancels it once the first compiled call has returned."""
    if not sys.stderr.isatty():
        return None
    message = (
        f"rnnlab: compiling the numba kernels for {what} (the first use after an install "
        "takes up to a minute; they are cached for the next runs) ..."
    )
    timer = threading.Timer(COMPILE_NOTICE_AFTER, report, (message,))
    timer.daemon = True
    timer.start()
    return timer


__all__ = [
    "COMPILE_NOTICE_AFTER",
    "GENERATE_BACKENDS",
    "BackendChoice",
    "choose_generate_backend",
    "compile_notice",
    "nonfinite_message",
    "numba_import_error",
    "race_noise",
]
