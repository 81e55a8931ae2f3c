"""Training configuration: frozen dataclasses, grouped, each option with its default.

The whole :class:`TrainConfig` is printed at the start of a run and saved in every
checkpoint (``checkpoint.json``), so a run can be read back and repeated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from rnnlab.models import ModelConfig

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class DataConfig:
    """path: UTF-8 text file (None: the bundled Tiny Shakespeare).
    tokens: ``char`` or ``word``. vocab_size: cap on a word vocabulary (incl. <unk>).
    val_fraction: the last part of the text held out for validation (0 disables)."""

    path: str | None = None
    tokens: str = "char"
    vocab_size: int = 10000
    val_fraction: float = 0.1


@dataclass(frozen=True)
class OptimConfig:
    """optimizer: ``adam`` or ``sgd``; lr: learning rate; momentum: SGD momentum;
    weight_decay: L2 weight decay; clip: global gradient-norm threshold (0 disables);
    batch_size: parallel streams B; seq_len: steps per chunk T (gradients flow back at
    most T steps); max_steps / max_time: stop after this many updates / seconds
    (whichever comes first; at least one must be set)."""

    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip: float = 1.0
    batch_size: int = 64
    seq_len: int = 100
    max_steps: int | None = None
    max_time: float | None = 300.0


@dataclass(frozen=True)
class OutputConfig:
    """out: run directory; eval_interval: updates between validations; sample_length:
    tokens sampled at each validation (0: none); seed: seeds initialisation, dropout and
    sampling; progress: show a progress bar."""

    out: str = "runs/latest"
    eval_interval: int = 250
    sample_length: int = 200
    seed: int = 1337
    progress: bool = True


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(vocab_size=0))
    optim: OptimConfig = field(default_factory=OptimConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self):
        o = self.optim
        if o.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        for name in ("batch_size", "seq_len"):
            if getattr(o, name) < 1:
                raise ValueError(f"{name} must be positive; got {getattr(o, name)}")
        if o.lr <= 0:
            raise ValueError(f"lr must be positive; got {o.lr}")
        if o.clip < 0:
            raise ValueError(f"clip must be >= 0 (0 disables clipping); got {o.clip}")
        if o.max_steps is None and o.max_time is None:
            raise ValueError("set max_steps or max_time, or both")
        if o.max_steps is not None and o.max_steps < 1:
            raise ValueError(f"max_steps must be positive; got {o.max_steps}")
        if o.max_time is not None and o.max_time <= 0:
            raise ValueError(f"max_time must be positive; got {o.max_time}")
        if not 0.0 <= self.data.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1); got {self.data.val_fraction}")
        if self.data.vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2; got {self.data.vocab_size}")
        if self.output.eval_interval < 1:
            raise ValueError(f"eval_interval must be positive; got {self.output.eval_interval}")
        if self.output.sample_length < 0:
            raise ValueError(f"sample_length must be >= 0; got {self.output.sample_length}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        return cls(
            data=DataConfig(**data["data"]),
            model=ModelConfig(**data["model"]),
            optim=OptimConfig(**data["optim"]),
            output=OutputConfig(**data["output"]),
        )
