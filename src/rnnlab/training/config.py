"""Training configuration: frozen dataclasses, grouped, each option with its default.

The whole :class:`TrainConfig` is printed at the start of a run and saved in every
checkpoint (``checkpoint.json``).  It can be read from a TOML file whose tables are the
groups (``[data]``, ``[model]``, ``[optim]``, ``[schedule]``, ``[teacher]``,
``[output]``) and whose keys are
the field names below; command-line flags override the file.  A bare name such as
``demo`` picks a preset shipped with the package (``rnnlab/presets/*.toml``).
"""

from __future__ import annotations

import datetime
import math
import numbers
import sys
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache
from importlib import resources
from pathlib import Path

from rnnlab.argtypes import SEED_RANGE, valid_seed
from rnnlab.errors import UserError
from rnnlab.models import ModelConfig
from rnnlab.training.clipping import CLIP_MODES
from rnnlab.training.precision import PRECISIONS
from rnnlab.training.schedules import ScheduleConfig, TeacherForcing

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


@dataclass(frozen=True)
class DataConfig:
    """path: UTF-8 text file (None: the bundled Tiny Shakespeare).
    tokens: ``char`` or ``word``. vocab_size: cap on a word vocabulary (incl. <unk>).
    val_fraction: the last part of the text held out for validation (0 disables).
    val_streams: validation scores the held-out text as this many contiguous streams, each
    from a zero state with its state carried from chunk to chunk (1: one stream, every token
    with all the text before it; each extra stream starts cold once).  Fixed here, not tied
    to the training batch, so the validation loss of a model does not change with the batch
    it was trained with."""

    path: str | None = None
    tokens: str = "char"
    vocab_size: int = 10000
    val_fraction: float = 0.1
    val_streams: int = 8


@dataclass(frozen=True)
class OptimConfig:
    """optimizer: adam, adamw, sgd or rmsprop; lr: learning rate; momentum and nesterov:
    for SGD (momentum also for RMSprop); weight_decay: the optimiser's decay (decoupled for
    AdamW); l1, l2: penalties added to the loss over weight matrices; clip: threshold
    (0 disables); clip_mode: ``norm`` (global norm, Pascanu et al. Algorithm 1) or ``value``
    (element-wise); batch_size: parallel streams B; seq_len: k1, steps run between
    updates; bptt: k2 >= k1, steps the gradient flows back (0: equal to seq_len);
    max_steps / max_time: stop after this many updates / seconds (the first reached);
    max_nonfinite: stop after this many updates in a row with a non-finite loss or gradient;
    pascanu_alpha: weight of the Pascanu regulariser (0: off; single-layer rnn/pascanu);
    pascanu_decay: if > 0, alpha is divided by 1 + step / pascanu_decay (a 1/t decay);
    precision: ``float32``, ``bfloat16`` (the forward pass under ``torch.autocast``; weights,
    gradients and evaluation stay float32) or ``auto`` (bfloat16 on a GPU that supports it,
    or on a CPU with AMX or where a bfloat16 product measures 1.3x faster than float32,
    else float32); see :mod:`rnnlab.training.precision`;
    ema: decay d of an exponential moving average of the weights that is validated, sampled
    and saved as ``best/`` (0: off; 0.99-0.999 typical); see :mod:`rnnlab.training.averaging`."""

    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    clip: float = 1.0
    clip_mode: str = "norm"
    batch_size: int = 64
    seq_len: int = 100
    bptt: int = 0
    max_steps: int | None = None
    max_time: float | None = 300.0
    max_nonfinite: int = 10
    pascanu_alpha: float = 0.0
    pascanu_decay: float = 0.0
    precision: str = "float32"
    ema: float = 0.0

    @property
    def k1(self) -> int:
        return self.seq_len

    @property
    def k2(self) -> int:
        return self.bptt or self.seq_len


@dataclass(frozen=True)
class OutputConfig:
    """out: run directory; eval_interval: updates between validations; checkpoint_interval:
    updates between saves of ``last/`` (0: at validations only); early_stop: stop after this
    many validations without improvement (0: never); sample_length: tokens sampled at each
    validation (0: none); monitor_interval: every this many updates, log gradient flow through
    time and recurrent spectral radii (0: never); seed: seeds data order, initialisation,
    dropout and sampling; progress: show a progress bar; tensorboard: also log to TensorBoard
    when installed."""

    out: str = "runs/latest"
    eval_interval: int = 250
    checkpoint_interval: int = 0
    early_stop: int = 0
    monitor_interval: int = 0
    sample_length: int = 200
    seed: int = 1337
    progress: bool = True
    tensorboard: bool = True


GROUPS = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "teacher": TeacherForcing,
    "output": OutputConfig,
}


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(vocab_size=0))
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    teacher: TeacherForcing = field(default_factory=TeacherForcing)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self):
        o = self.optim
        if o.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {o.optimizer!r}"
            )
        if o.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}; got {o.precision!r}"
            )
        if o.precision == "bfloat16" and self.model.dtype != "float32":
            raise ValueError(
                f"precision bfloat16 needs float32 parameters; got dtype {self.model.dtype!r}"
            )
        if o.clip_mode not in CLIP_MODES:
            raise ValueError(
                f"clip_mode must be one of {', '.join(CLIP_MODES)}; got {o.clip_mode!r}"
            )
        for name in ("batch_size", "seq_len", "max_nonfinite"):
            if getattr(o, name) < 1:
                raise ValueError(f"{name} must be positive; got {getattr(o, name)}")
        if o.bptt and o.bptt < o.seq_len:
            raise ValueError(f"bptt (k2) must be >= seq_len (k1) = {o.seq_len}; got {o.bptt}")
        for name in ("lr",):
            if getattr(o, name) <= 0:
                raise ValueError(f"{name} must be positive; got {getattr(o, name)}")
        for name in (
            "momentum",
            "weight_decay",
            "l1",
            "l2",
            "clip",
            "bptt",
            "pascanu_alpha",
            "pascanu_decay",
        ):
            if getattr(o, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(o, name)}")
        if o.nesterov and (o.optimizer != "sgd" or o.momentum <= 0):
            raise ValueError("nesterov needs the sgd optimizer with momentum > 0")
        if o.max_steps is None and o.max_time is None:
            raise ValueError("set max_steps or max_time, or both")
        if o.max_steps is not None and o.max_steps < 1:
            raise ValueError(f"max_steps must be positive; got {o.max_steps}")
        if o.max_time is not None and o.max_time <= 0:
            raise ValueError(f"max_time must be positive; got {o.max_time}")
        if not 0.0 <= o.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1); got {o.ema}")
        if not 0.0 <= self.data.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1); got {self.data.val_fraction}")
        if self.data.val_streams < 1:
            raise ValueError(f"val_streams must be positive; got {self.data.val_streams}")
        if self.data.vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2; got {self.data.vocab_size}")
        out = self.output
        if not out.out:
            raise ValueError("out must name the run directory; got an empty string")
        if not valid_seed(out.seed):
            raise ValueError(f"seed must be {SEED_RANGE}; got {out.seed}")
        for name in ("eval_interval",):
            if getattr(out, name) < 1:
                raise ValueError(f"{name} must be positive; got {getattr(out, name)}")
        for name in ("checkpoint_interval", "early_stop", "sample_length", "monitor_interval"):
            if getattr(out, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(out, name)}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        """Build from nested dicts (missing groups or keys take their defaults; other keys at
        the top are ignored).  Every problem, unknown names and wrong types included, is a
        :class:`UserError`."""
        if not isinstance(data, dict):
            raise UserError(
                f"invalid configuration: expected a table of settings; got {_describe(data)}"
            )
        present = {g: data[g] for g in GROUPS if g in data}
        check_names(present, "the saved configuration")
        try:
            return cls(**{g: GROUPS[g](**check_types(g, v)) for g, v in present.items()})
        except (TypeError, ValueError) as exc:
            raise _invalid(exc) from None

    def updated(self, changes: dict[str, dict]) -> TrainConfig:
        """A copy with ``{group: {field: value}}`` applied.  Unknown names, values of the
        wrong type (checked against the annotations; ints are taken for floats) and values
        out of range raise :class:`UserError`."""
        check_names(changes, "the changes")
        try:
            groups = {
                g: replace(getattr(self, g), **check_types(g, v)) for g, v in changes.items() if v
            }
            return replace(self, **groups)
        except (TypeError, ValueError) as exc:
            raise _invalid(exc) from None


def _invalid(exc: Exception) -> UserError:
    """``exc`` as a one-line :class:`UserError` (a UserError is returned as it is)."""
    if isinstance(exc, UserError):
        return exc
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return UserError(f"invalid configuration: {first}")


# How a value's type is named in messages: TOML's names (JSON's null as "none").
_TYPE_NAMES = [
    (bool, "boolean"),
    (numbers.Integral, "integer"),
    (numbers.Real, "float"),
    (str, "string"),
    (dict, "table"),
    ((list, tuple), "array"),
    (datetime.datetime, "datetime"),
    (datetime.date, "date"),
    (datetime.time, "time"),
    (type(None), "none"),
]


def _describe(value) -> str:
    """``8.7 (float)``, ``'big' (string)``: the value (shortened) and its type's name."""
    kind = next((n for t, n in _TYPE_NAMES if isinstance(value, t)), type(value).__name__)
    if isinstance(value, bool):
        shown = "true" if value else "false"
    elif value is None:
        return "none"
    elif isinstance(value, (datetime.date, datetime.time)):
        shown = value.isoformat()
    else:
        try:
            shown = repr(value)
        except ValueError:  # an integer with too many digits to print
            shown = "a huge number"
        if len(shown) > 60:
            shown = shown[:57] + "..."
    return f"{shown} ({kind})"


@cache
def _field_types(cls: type) -> dict[str, object]:
    """The resolved annotation of each field of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, object) for f in fields(cls)}


def _expected(hint) -> str:
    """The type ``hint`` in words, for messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        words = [_expected(a) for a in args if a is not type(None)]
        if type(None) in args:
            words.append("none")
        return " or ".join(words)
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "none",
    }.get(hint, getattr(hint, "__name__", str(hint)))


class _WrongType(Exception):
    pass


def _convert(hint, value):
    """``value`` as the type ``hint`` (the scalar types and ``X | None`` the config groups
    declare; ints become floats) or _WrongType."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is not type(None):
                try:
                    return _convert(option, value)
                except _WrongType:
                    pass
        raise _WrongType
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _WrongType
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise _WrongType
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # an integer too large for a float
                raise _WrongType from None
            if not math.isfinite(value):  # nan or inf, as the flags refuse them
                raise _WrongType
            return value
        raise _WrongType
    if hint is str:
        if isinstance(value, str):
            return value
        raise _WrongType
    if hint is type(None):
        if value is None:
            return None
        raise _WrongType
    return value  # an annotation not checked here (Any, object, ...)


def check_types(group: str, values: dict) -> dict:
    """``values`` of ``[group]`` checked against its dataclass's annotations and converted
    (an int given for a float becomes a float); a wrong type is a :class:`UserError` that
    names the group, the key, the type expected and the value given."""
    hints = _field_types(GROUPS[group])
    checked = {}
    for key, value in values.items():
        hint = hints.get(key, object)
        try:
            checked[key] = _convert(hint, value)
        except _WrongType:
            if isinstance(value, float) and not math.isfinite(value):
                expected = f"{_expected(hint)}, not {value}"
            else:
                expected = f"{_expected(hint)}; got {_describe(value)}"
            raise UserError(f"invalid configuration: [{group}] {key} must be {expected}") from None
    return checked


def check_names(data: dict, where: str) -> None:
    """Every group and key must exist; say which do not and what would."""
    for group, values in data.items():
        if group not in GROUPS:
            raise UserError(f"unknown section [{group}] in {where}; sections: {', '.join(GROUPS)}")
        if not isinstance(values, dict):
            raise UserError(f"[{group}] in {where} must be a table of settings")
        known = [f.name for f in fields(GROUPS[group])]
        for key in values:
            if key not in known:
                raise UserError(
                    f"unknown setting {key!r} in [{group}] of {where}; settings: {', '.join(known)}"
                )


def preset_path(name: str) -> Path:
    return Path(str(resources.files("rnnlab") / "presets" / f"{name}.toml"))


def preset_names() -> list[str]:
    folder = Path(str(resources.files("rnnlab") / "presets"))
    return sorted(p.stem for p in folder.glob("*.toml"))


def read_config_file(spec: str) -> dict[str, dict]:
    """Settings from a TOML file, or from the preset of that name."""
    path = Path(spec)
    if not path.exists() and not spec.endswith(".toml") and preset_path(spec).exists():
        path = preset_path(spec)
    if not path.exists():
        raise UserError(
            f"config file not found: {spec} (presets: {', '.join(preset_names()) or 'none'})"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"cannot parse config file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer with too many digits
        raise UserError(f"cannot parse config file {path}: {exc}") from None
    check_names(data, str(path))
    return data


def load_config(spec: str | None = None, overrides: dict[str, dict] | None = None) -> TrainConfig:
    """Defaults, then the TOML file or preset ``spec``, then ``overrides``."""
    config = TrainConfig()
    try:
        if spec is not None:
            config = config.updated(read_config_file(spec))
        if overrides:
            config = config.updated(overrides)
    except (TypeError, ValueError) as exc:
        raise _invalid(exc) from None
    return config
