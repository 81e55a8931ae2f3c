"""Reading training text: a user's file or the bundled Tiny Shakespeare corpus."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from rnnlab.errors import UserError

BUNDLED = "tinyshakespeare"


def bundled_corpus_path(name: str = BUNDLED) -> Path:
    """Path of a corpus shipped inside the package (``tinyshakespeare``)."""
    path = resources.files("rnnlab") / "corpora" / f"{name}.txt"
    return Path(str(path))


def load_text(path: str | Path | None = None) -> str:
    """Read a UTF-8 text file (the bundled Tiny Shakespeare when ``path`` is None).

    Raises :class:`UserError` with a one-line reason for a missing, unreadable, empty
    or non-UTF-8 file; for bad UTF-8 the message gives the byte offset.
    """
    path = bundled_corpus_path() if path is None else Path(path)
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.is_dir():
        raise UserError(f"data path is a directory, not a text file: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    if not raw:
        raise UserError(f"data file is empty: {path}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"data file is not valid UTF-8: {path} (byte 0x{raw[exc.start]:02x} at byte offset "
            f"{exc.start}: {exc.reason})"
        ) from None
