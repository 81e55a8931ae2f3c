"""Fixtures shared by the test files."""

import pytest

BATCH_LOOPS = ["region", "steps"]


@pytest.fixture(params=BATCH_LOOPS)
def batch_loop(request, monkeypatch):
    """How the compiled training paths run a batch's time loop, each tested alike:
    ``region``, the whole loop in one compiled call with the BLAS called inside it
    (:mod:`rnnlab.backends.numba_blas`; skipped where PyTorch exports no MKL), and
    ``steps``, a Python loop with ``torch.mm`` between the compiled passes (the path where
    there is no such BLAS)."""
    from rnnlab.backends import numba_blas, numba_elman, numba_gru, numba_lstm, numba_pascanu

    if request.param == "region":
        if numba_blas.blas() is None:
            pytest.skip("PyTorch here exports no BLAS for the compiled loops")
    else:
        for module in (numba_lstm, numba_gru, numba_elman, numba_pascanu):
            monkeypatch.setattr(module, "_region_parts", lambda rows: None)
    return request.param


def split_into(monkeypatch, module, batch_loop: str, parts: int) -> None:
    """Make ``module``'s compiled passes (rows of a batch) split into ``parts`` blocks on
    the path ``batch_loop`` names."""
    monkeypatch.setattr(module, "_parts", lambda rows, least=0, parts=parts: parts)
    if batch_loop == "region":
        monkeypatch.setattr(module, "_region_parts", lambda rows, parts=parts: parts)
