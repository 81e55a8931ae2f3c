"""Check the compiled loops' rational tanh on every non-negative float32.

The float32 models' gate nonlinearities in ``rnnlab.backends.numba_generate`` come from
``_tanh_rational`` (float64 arithmetic), those of the compiled LSTM training path
(``rnnlab.backends.numba_lstm``) from ``_tanh_rational32`` (float32 arithmetic, with
``--float32``).  ``rnnlab.backends.numba_math`` states the error bounds this script
measures: the largest absolute error against numpy's float64 ``tanh`` (and of
sigmoid(x) = 1/2 + tanh(x/2)/2 against 1 / (1 + exp(-x)), both signs) over all 2.1e9
non-negative float32 values up to +inf (the function is odd, so the negatives add
nothing).  About 3 minutes on 2 cores.

    python scripts/tanh_error_sweep.py [--float32]
"""

import sys
import time

import numba
import numpy as np

from rnnlab.backends.numba_math import _tanh_rational, _tanh_rational32


@numba.njit(error_model="numpy", parallel=True)
def approximations(xs, tanh, sigmoid):
    for i in numba.prange(xs.shape[0]):
        tanh[i] = _tanh_rational(xs[i])
        sigmoid[i] = 0.5 + 0.5 * _tanh_rational(0.5 * xs[i])


@numba.njit(error_model="numpy", parallel=True)
def approximations32(xs, tanh, sigmoid):
    half = np.float32(0.5)
    for i in numba.prange(xs.shape[0]):
        x = np.float32(xs[i])
        tanh[i] = _tanh_rational32(x)
        sigmoid[i] = half + half * _tanh_rational32(half * x)


def main() -> None:
    float32 = "--float32" in sys.argv[1:]
    approximate = approximations32 if float32 else approximations
    start = time.time()
    top = int(np.array(np.inf, np.float32).view(np.uint32))
    step = 1 << 24
    worst_tanh, worst_at, worst_sigmoid = 0.0, 0.0, 0.0
    for lo in range(0, top + 1, step):
        bits = np.arange(lo, min(lo + step, top + 1), dtype=np.uint32)
        xs = bits.view(np.float32).astype(np.float64)
        tanh, sigmoid = np.empty_like(xs), np.empty_like(xs)
        approximate(xs, tanh, sigmoid)
        with np.errstate(over="ignore"):
            err = np.abs(tanh - np.tanh(xs))
            err_sigmoid = np.maximum(
                np.abs(sigmoid - 1.0 / (1.0 + np.exp(-xs))),
                np.abs((1.0 - sigmoid) - 1.0 / (1.0 + np.exp(xs))),
            )
        i = int(err.argmax())
        if err[i] > worst_tanh:
            worst_tanh, worst_at = float(err[i]), float(xs[i])
        worst_sigmoid = max(worst_sigmoid, float(err_sigmoid.max()))
    print(
        f"{'float32' if float32 else 'float64'} arithmetic, "
        f"{top + 1:,} non-negative float32 values: tanh max abs error {worst_tanh:.4g} "
        f"at x = {worst_at:.7g}; sigmoid (both signs) {worst_sigmoid:.4g}; "
        f"{time.time() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
