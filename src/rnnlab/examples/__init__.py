"""Worked examples of the four architectures of seed 003, run by ``rnnlab task NAME``.

Each example is a module with ``NAME``, ``ARCHITECTURE``, ``DESCRIPTION``,
``add_arguments(parser)`` and ``run(args) -> int``.  They are imported only when asked
for, so an example whose optional dataset package is missing fails alone, with a message
that names the extra to install.
"""

from __future__ import annotations

from importlib import import_module

from rnnlab.errors import UserError

# name -> module, in the order `rnnlab task --list` shows them
EXAMPLES = {
    "japanese-vowels": "rnnlab.examples.japanese_vowels",
    "digits": "rnnlab.examples.digits",
    "truecase": "rnnlab.examples.truecase",
    "digit-words": "rnnlab.examples.digit_words",
    "addition": "rnnlab.examples.addition",
    "dates": "rnnlab.examples.dates",
}


def available() -> list[str]:
    """Names whose module exists in this installation."""
    names = []
    for name, module in EXAMPLES.items():
        try:
            import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
        names.append(name)
    return names


def get(name: str):
    if name not in EXAMPLES:
        raise UserError(f"unknown task {name!r}; tasks: {', '.join(available())}")
    return import_module(EXAMPLES[name])


def require(package: str, extra: str = "datasets"):
    """Import an optional dependency or explain which extra installs it."""
    try:
        return import_module(package)
    except ImportError:
        raise UserError(
            f"this task needs the {package!r} package: pip install 'rnnlab[{extra}]'"
        ) from None
