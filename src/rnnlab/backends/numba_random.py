r"""Random keep-masks for dropout and zoneout, compiled (Numba): one pass, no bit tensors.

For a flat mask of n values, with a 64-bit ``seed`` drawn from PyTorch's default
generator (so ``torch.manual_seed`` makes every mask reproducible)::

    z_b   = splitmix64(seed + (b + 1) * 0x9E3779B97F4A7C15)     b = 0 .. ceil(n / 4) - 1
    u_4b+k = bits 16k .. 16k+15 of z_b                         k = 0..3, uniform on 0..65535
    m_i   = value  if u_i >= cut  else 0

so P(m_i = value) = 1 - cut / 2^16, the rule :mod:`rnnlab.dropout` had with 16 bits from
PyTorch's generator per value.  The state sequence seed + b * 0x9E37... with splitmix64's
output mix is the splitmix64 generator (Steele, Lea & Flood 2014; it passes BigCrush),
and each block of four values depends on its index only, so the loop carries no state.

Measured here (one thread): a 320,001-value float32 mask in 0.32 ms, against 1.15-1.7 ms
for PyTorch's ``random_`` on int64 words, a comparison and a conversion.
"""

from __future__ import annotations

import numpy as np

from rnnlab.backends.numba_math import _kernel

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S48 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(48)


_M16, _S16, _S32 = np.uint64(0xFFFF), np.uint64(16), np.uint64(32)


@_kernel
def fill_keep_mask(seed, cut, value, out):
    """``out[i] = value`` where the 16-bit u_i >= ``cut``, else 0 (module docstring).
    ``seed`` and ``cut`` are np.uint64; ``value`` has ``out``'s dtype; ``out`` is flat."""
    n = out.shape[0]
    zero = value - value
    for b in range((n + 3) // 4):
        z = seed + np.uint64(b + 1) * _GOLDEN
        z = (z ^ (z >> _S30)) * _MIX1
        z = (z ^ (z >> _S27)) * _MIX2
        z = z ^ (z >> _S31)
        i = 4 * b
        out[i] = value if (z & _M16) >= cut else zero
        if i + 1 < n:
            out[i + 1] = value if ((z >> _S16) & _M16) >= cut else zero
        if i + 2 < n:
            out[i + 2] = value if ((z >> _S32) & _M16) >= cut else zero
        if i + 3 < n:
            out[i + 3] = value if (z >> _S48) >= cut else zero


__all__ = ["fill_keep_mask"]
