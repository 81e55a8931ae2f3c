"""Checkpoints: weights in safetensors, config and vocabulary in JSON; never pickle.

A checkpoint is a directory::

    model.safetensors   the model's state_dict
    checkpoint.json     format and version, the TrainConfig, step and validation loss
    vocab.json          the vocabulary

It is written into a temporary sibling directory and moved into place with renames, so
a crash while writing leaves the previous checkpoint readable (the old copy is kept as
``.NAME.old`` until the new one is in place, and :func:`resolve` falls back to it).
A run directory holds ``best/`` (lowest validation loss) and ``last/``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rnnlab import __version__
from rnnlab.data import Vocabulary
from rnnlab.errors import UserError
from rnnlab.models import LanguageModel
from rnnlab.training.config import TrainConfig

FORMAT = "rnnlab-checkpoint"
VERSION = 1
FILES = ("model.safetensors", "checkpoint.json", "vocab.json")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_checkpoint(
    directory: str | Path, model: LanguageModel, config: TrainConfig, vocab: Vocabulary, **info
) -> Path:
    """Write a checkpoint directory atomically; ``info`` (step, val_loss, ...) goes to JSON."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "version": VERSION, "rnnlab_version": __version__}
    _write_json(tmp / "checkpoint.json", {**meta, "config": config.to_json(), **info})
    _write_json(tmp / "vocab.json", vocab.to_json())
    for f in tmp.iterdir():  # flush file contents before the rename makes them visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def resolve(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint path or a run directory (prefers best/)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise UserError(f"checkpoint must be a directory (a run or best/, last/): {path}")
    if (path / "checkpoint.json").exists():
        return path
    for name in ("best", "last", ".best.old", ".last.old"):
        if (path / name / "checkpoint.json").exists():
            return path / name
    raise UserError(f"not an rnnlab checkpoint or run directory (no checkpoint.json): {path}")


def load_checkpoint(path: str | Path, map_location: str = "cpu"):
    """Load ``(model, vocab, config, info)``; :class:`UserError` explains any problem."""
    directory = resolve(path)
    missing = [f for f in FILES if not (directory / f).exists()]
    if missing:
        raise UserError(f"incomplete checkpoint {directory}: missing {', '.join(missing)}")
    try:
        info = json.loads((directory / "checkpoint.json").read_text(encoding="utf-8"))
        vocab_json = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"corrupt checkpoint JSON in {directory}: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise UserError(f"not an rnnlab checkpoint: {directory}/checkpoint.json")
    if info.get("version") != VERSION:
        raise UserError(
            f"checkpoint {directory} has format version {info.get('version')!r}; this rnnlab "
            f"({__version__}) reads version {VERSION}"
        )
    try:
        config = TrainConfig.from_json(info["config"])
        vocab = Vocabulary.from_json(vocab_json)
        model = LanguageModel(replace(config.model, vocab_size=len(vocab)))
        state = load_file(str(directory / "model.safetensors"), device=map_location)
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {directory} is damaged or inconsistent: {first}") from None
    model.eval()
    return model, vocab, config, info


__all__ = ["load_checkpoint", "resolve", "save_checkpoint"]
