"""Learning-rate schedules and teacher-forcing schedules.

Learning rate (``LRSchedule``): an optional linear warm-up over ``warmup`` updates, then

``constant``  the base rate;
``step``      multiplied by ``gamma`` every ``step_size`` updates (char-rnn decays by a factor
              every few epochs: set ``step_size`` to a multiple of the epoch length);
``cosine``    from the base rate down to ``min_lr`` along half a cosine over the run's
              budget (the fraction of ``max_steps`` or ``max_time`` used, whichever is larger);
``plateau``   multiplied by ``gamma`` when the validation loss has not improved for
              ``patience`` evaluations, never below ``min_lr``.

Teacher forcing (``TeacherForcing``, Bengio et al. 2015, scheduled sampling): the
probability of feeding the true previous token at update i is

``always``           1 (teacher forcing)          ``never``     0 (free running)
``linear``           max(min_p, k - c i)          ``exponential``  max(min_p, k^i), k < 1
``inverse_sigmoid``  max(min_p, k / (k + exp(i / k))), k >= 1
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LR_SCHEDULES = ("constant", "step", "cosine", "plateau")
TEACHER_SCHEDULES = ("always", "never", "linear", "exponential", "inverse_sigmoid")
# k where none is given: start at 1 (linear), decay 0.1% per update (exponential), or stay
# near 1 for about 1,000 updates and fall to 0.5 at about 3,100 (inverse_sigmoid)
TF_K_DEFAULTS = {"linear": 1.0, "exponential": 0.999, "inverse_sigmoid": 500.0}


@dataclass(frozen=True)
class ScheduleConfig:
    """schedule: one of constant, step, cosine, plateau; warmup: updates of linear warm-up;
    step_size: updates between decays (step); gamma: decay factor (step, plateau);
    patience: evaluations without improvement before a decay (plateau);
    min_lr: floor of the rate (cosine, plateau)."""

    schedule: str = "constant"
    warmup: int = 0
    step_size: int = 1000
    gamma: float = 0.5
    patience: int = 2
    min_lr: float = 0.0

    def __post_init__(self):
        if self.schedule not in LR_SCHEDULES:
            raise ValueError(
                f"schedule must be one of {', '.join(LR_SCHEDULES)}; got {self.schedule!r}"
            )
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0; got {self.warmup}")
        if self.step_size < 1:
            raise ValueError(f"step_size must be positive; got {self.step_size}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1]; got {self.gamma}")
        if self.patience < 1:
            raise ValueError(f"patience must be positive; got {self.patience}")
        if self.min_lr < 0:
            raise ValueError(f"min_lr must be >= 0; got {self.min_lr}")


class LRSchedule:
    """The learning rate as a function of progress; its state is JSON (for resumption)."""

    def __init__(self, config: ScheduleConfig, base_lr: float):
        self.config, self.base_lr = config, base_lr
        self.plateau_factor, self.best, self.bad_evals = 1.0, math.inf, 0

    def lr(self, step: int, progress: float) -> float:
        """Rate for update number ``step`` (0-based); ``progress`` in [0, 1] of the budget."""
        c = self.config
        if c.schedule == "step":
            lr = self.base_lr * c.gamma ** (step // c.step_size)
        elif c.schedule == "cosine":
            p = min(max(progress, 0.0), 1.0)
            lr = c.min_lr + 0.5 * (self.base_lr - c.min_lr) * (1 + math.cos(math.pi * p))
        elif c.schedule == "plateau":
            lr = max(self.base_lr * self.plateau_factor, c.min_lr)
        else:
            lr = self.base_lr
        if step < c.warmup:
            lr *= (step + 1) / c.warmup
        return lr

    def observe(self, val_loss: float) -> bool:
        """Record a validation loss; returns True when the plateau schedule decays."""
        if val_loss < self.best:
            self.best, self.bad_evals = val_loss, 0
            return False
        self.bad_evals += 1
        if self.config.schedule == "plateau" and self.bad_evals >= self.config.patience:
            self.plateau_factor *= self.config.gamma
            self.bad_evals = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {
            "plateau_factor": self.plateau_factor,
            "best": self.best,
            "bad_evals": self.bad_evals,
        }

    def load_state_dict(self, state: dict) -> None:
        self.plateau_factor = state["plateau_factor"]
        self.best, self.bad_evals = state["best"], state["bad_evals"]


@dataclass(frozen=True)
class TeacherForcing:
    """Probability of feeding the true previous token, by update number (see module doc)."""

    schedule: str = "always"
    k: float | None = None  # None: the schedule's own default (TF_K_DEFAULTS)
    c: float = 1e-4
    min_p: float = 0.0

    def __post_init__(self):
        if self.schedule not in TEACHER_SCHEDULES:
            raise ValueError(
                f"teacher forcing schedule must be one of {', '.join(TEACHER_SCHEDULES)}; "
                f"got {self.schedule!r}"
            )

        if self.schedule == "exponential" and not 0 < self.k_in_effect < 1:
            raise ValueError(f"the exponential schedule needs 0 < k < 1; got {self.k}")
        if self.schedule == "inverse_sigmoid" and self.k_in_effect < 1:
            raise ValueError(f"the inverse_sigmoid schedule needs k >= 1; got {self.k}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1]; got {self.min_p}")

    @property
    def k_in_effect(self) -> float:
        """``k``, or the schedule's default (:data:`TF_K_DEFAULTS`) where it is None."""
        return TF_K_DEFAULTS.get(self.schedule, 1.0) if self.k is None else self.k

    def probability(self, step: int) -> float:
        s, k = self.schedule, self.k_in_effect
        if s == "always":
            return 1.0
        if s == "never":
            return 0.0
        if s == "linear":
            p = k - self.c * step
        elif s == "exponential":
            p = k**step
        else:
            p = k / (k + math.exp(min(step / k, 700.0)))
        return min(1.0, max(self.min_p, p))

    def mask(self, step: int, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        """Bernoulli draws (1 = feed the truth) with this update's probability."""
        p = self.probability(step)
        if p >= 1.0:
            return torch.ones(shape)
        if p <= 0.0:
            return torch.zeros(shape)
        return (torch.rand(shape, generator=generator) < p).to(torch.float32)
