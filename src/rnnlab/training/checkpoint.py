"""Checkpoints: weights in safetensors, config and vocabulary in JSON; never pickle.

A checkpoint is a directory::

    model.safetensors   the model's state_dict
    checkpoint.json     format and version, the TrainConfig, step and validation loss
    vocab.json          the vocabulary

and, in ``last/`` (what ``rnnlab train --resume`` needs to continue exactly)::

    training_state.safetensors  optimiser moments, random generator state, carried RNN state
    training_state.json         optimiser hyper-parameters, schedule, data position, counters

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

import torch
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


def write_checkpoint_dir(
    directory: str | Path,
    weights: dict[str, torch.Tensor],
    documents: dict[str, dict],
    training_state: tuple[dict, dict] | None = None,
) -> Path:
    """Write ``model.safetensors``, one JSON file per entry of ``documents`` and, if given,
    the training state, into ``directory``, atomically: a temporary sibling directory is
    filled, flushed and renamed into place (the old copy is kept as ``.NAME.old`` until the
    new one is there)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
    for name, document in documents.items():
        _write_json(tmp / name, document)
    if training_state is not None:
        tensors, meta = training_state
        save_file(tensors, str(tmp / "training_state.safetensors"))
        _write_json(tmp / "training_state.json", meta)
    for f in tmp.iterdir():  # flush file contents before the rename makes them visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def save_checkpoint(
    directory: str | Path,
    model: LanguageModel,
    config: TrainConfig,
    vocab: Vocabulary,
    training_state: tuple[dict, dict] | None = None,
    **info,
) -> Path:
    """Write a language-model checkpoint; ``info`` (step, val_loss, ...) goes to JSON.

    ``training_state`` = (tensors, json) adds the files that resumption needs."""
    meta = {"format": FORMAT, "version": VERSION, "rnnlab_version": __version__}
    documents = {
        "checkpoint.json": {**meta, "config": config.to_json(), **info},
        "vocab.json": vocab.to_json(),
    }
    return write_checkpoint_dir(directory, model.state_dict(), documents, training_state)


def save_model(
    directory: str | Path,
    model,
    kind: str,
    spec: dict,
    training_state: tuple[dict, dict] | None = None,
    **info,
) -> Path:
    """Write any model: weights, and ``checkpoint.json`` holding its ``kind`` and ``spec``
    (everything needed to rebuild it: model config, vocabularies, task options)."""
    meta = {"format": FORMAT, "version": VERSION, "rnnlab_version": __version__, "kind": kind}
    documents = {"checkpoint.json": {**meta, "spec": spec, **info}}
    return write_checkpoint_dir(directory, model.state_dict(), documents, training_state)


def _shape(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(str(n) for n in tensor.shape) + ")"


def _load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state)``; a mismatch is a ValueError naming the first tensor
    that differs, with both shapes (torch's own message puts them on lines that a one-line
    error would drop)."""
    expected = model.state_dict()
    problems = [
        f"{name} is missing from the file"
        if name not in state
        else f"{name} is {_shape(state[name])} in the file, {_shape(tensor)} in the model"
        for name, tensor in expected.items()
        if name not in state or state[name].shape != tensor.shape
    ]
    problems += [
        f"the file holds {name}, which the model has not" for name in state if name not in expected
    ]
    if problems:
        more = f" ({len(problems)} tensors differ)" if len(problems) > 1 else ""
        raise ValueError(
            f"model.safetensors does not match the model checkpoint.json describes: "
            f"{problems[0]}{more}"
        )
    model.load_state_dict(state)


def load_model(path: str | Path, build, kind: str | None = None):
    """Load a checkpoint written by :func:`save_model`: ``(model, spec, info)``.

    ``build(spec) -> nn.Module`` makes the empty model; ``kind``, if given, must match."""
    directory = resolve(path)
    for name in ("model.safetensors", "checkpoint.json"):
        if not (directory / name).exists():
            raise UserError(f"incomplete checkpoint {directory}: missing {name}")
    try:
        info = json.loads((directory / "checkpoint.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"corrupt checkpoint JSON in {directory}: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise UserError(f"not an rnnlab checkpoint: {directory}/checkpoint.json")
    if info.get("version") != VERSION:
        raise UserError(
            f"checkpoint {directory} has format version {info.get('version')!r}; this rnnlab "
            f"({__version__}) reads version {VERSION}"
        )
    if kind is not None and info.get("kind") != kind:
        raise UserError(f"checkpoint {directory} holds a {info.get('kind')!r}, not a {kind!r}")
    try:
        model = build(info["spec"])
        _load_weights(model, load_file(str(directory / "model.safetensors")))
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {directory} is damaged or inconsistent: {first}") from None
    model.eval()
    return model, info["spec"], info


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
    inside = sorted(
        sub.name for sub in path.iterdir() if sub.is_dir() and any(sub.glob("*/checkpoint.json"))
    )
    if inside:  # e.g. a task run with several models, one run directory each
        listed = ", ".join(f"{path / name}" for name in inside[:4]) + (", ..." * (len(inside) > 4))
        raise UserError(f"{path} holds run directories, not a checkpoint: name one ({listed})")
    raise UserError(f"not an rnnlab checkpoint or run directory (no checkpoint.json): {path}")


def _refuse_task_models(directory: Path) -> None:
    """A checkpoint of ``rnnlab task`` (it names its ``kind``) is not a language model: say
    so, rather than that its language-model files are missing."""
    try:
        info = json.loads((directory / "checkpoint.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # load_checkpoint reports it
    if isinstance(info, dict) and info.get("kind"):
        raise UserError(
            f"{directory} holds a {info['kind']!r} model from 'rnnlab task'; sample, eval, "
            "diagnose and train --resume take a language model from 'rnnlab train'"
        )


def load_checkpoint(path: str | Path, map_location: str = "cpu"):
    """Load ``(model, vocab, config, info)``; :class:`UserError` explains any problem."""
    directory = resolve(path)
    _refuse_task_models(directory)
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
        _load_weights(model, state)
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {directory} is damaged or inconsistent: {first}") from None
    model.eval()
    return model, vocab, config, info


def load_training_state(path: str | Path) -> tuple[dict, dict]:
    """The (tensors, json) saved for resumption in a run's ``last/`` checkpoint."""
    directory = resolve_last(path)
    try:
        meta = json.loads((directory / "training_state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(directory / "training_state.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError) as exc:
        raise UserError(f"cannot read the training state in {directory}: {exc}") from None
    return tensors, meta


def resolve_last(path: str | Path) -> Path:
    """The resumable checkpoint of a run directory (``last/``, or its copy mid-rename)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path}")
    for name in ("last", ".last.old", "."):
        candidate = path / name
        if (candidate / "training_state.json").exists():
            return candidate if name != "." else path
    raise UserError(f"nothing to resume in {path}: no last/ checkpoint with a training state")


def resolve_run(path: str | Path) -> Path:
    """The run directory that ``--resume path`` continues: ``path`` itself, or the run that
    holds it when ``path`` is that run's ``last/`` (a run's ``best/``, or a checkpoint
    outside a run, is refused: the run would be written inside it)."""
    path = Path(path)
    if (path / "checkpoint.json").exists():
        run = path.parent
        if (run / "config.json").is_file() and path.name in ("last", ".last.old"):
            return run
        if (run / "config.json").is_file() and path.name in ("best", ".best.old"):
            raise UserError(
                f"{path} is the best checkpoint of the run {run}; --resume continues a run "
                f"from its last/: give the run directory, {run}"
            )
        raise UserError(
            f"{path} is a checkpoint, not a run directory; --resume takes the directory of "
            "a run (the one that holds config.json and last/)"
        )
    return path


def is_run_directory(path: str | Path) -> bool:
    """Whether ``path`` holds a run (its config.json names the optim and output settings,
    or it holds metrics.jsonl or a best/ or last/ checkpoint): a directory that training
    may fill again, unlike a folder that merely holds some other config.json."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict) and {"optim", "output"} <= config.keys():
        return True
    checkpoints = ("best", "last", ".best.old", ".last.old")
    return (path / "metrics.jsonl").is_file() or any(
        (path / name / "checkpoint.json").is_file() for name in checkpoints
    )


def optimizer_state(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (safetensors) and the rest (JSON)."""
    sd = optimizer.state_dict()
    tensors, states = {}, {}
    for index, state in sd["state"].items():
        plain = {}
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                plain[key] = value
        states[str(index)] = plain
    return tensors, {"param_groups": sd["param_groups"], "state": states}


def restore_optimizer(optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state = {int(i): dict(v) for i, v in meta["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


__all__ = [
    "load_model",
    "save_model",
    "write_checkpoint_dir",
    "load_checkpoint",
    "load_training_state",
    "optimizer_state",
    "resolve",
    "is_run_directory",
    "resolve_last",
    "resolve_run",
    "restore_optimizer",
    "save_checkpoint",
]
