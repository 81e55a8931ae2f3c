"""The examples in the docstrings run, so they cannot drift from the code."""

import doctest
import importlib

import pytest

MODULES = [
    "rnnlab.cells.elman",
    "rnnlab.cells.lstm",
    "rnnlab.cells.gru",
    "rnnlab.cells.pascanu",
    "rnnlab.cells.jordan",
    "rnnlab.analysis.gradients",
    "rnnlab.layers",
    "rnnlab.data.vocab",
    "rnnlab.data.batching",
    "rnnlab.models.language_model",
    "rnnlab.backends",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
