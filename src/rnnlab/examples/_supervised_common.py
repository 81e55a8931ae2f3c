"""What the classification and tagging examples share: flags, batching, splits, the
training run with its checkpoints, metrics, and the loop over seeds.

Every example follows the same protocol: the test split is touched once, at the end, by
the checkpoint that scored the lowest loss on a validation split carved from the training
data (with ``--val-fraction 0``: by the last weights, or their average with
``--average``); nothing about the test set (not even normalisation statistics) feeds
training or model selection.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from rnnlab.argtypes import (
    fraction,
    nonnegative_float,
    positive_float,
    positive_int,
    random_seed,
)
from rnnlab.errors import UserError
from rnnlab.examples._shared import (
    add_optim_options,
    add_output_options,
    add_stack_options,
    number,
    write_results,
)
from rnnlab.models.classifier import (
    ENCODER_CELLS,
    POOLINGS,
    ClassifierConfig,
    SequenceClassifier,
)
from rnnlab.training.checkpoint import load_model, save_model
from rnnlab.training.config import OptimConfig, OutputConfig, TrainConfig
from rnnlab.training.schedules import ScheduleConfig
from rnnlab.training.supervised import SupervisedTask
from rnnlab.training.trainer import Trainer, TrainResult

CLASSIFIER_KIND = "sequence-classifier"
TAGGER_KIND = "sequence-tagger"

# -- flags ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Defaults:
    """An example's default flags; ``bidirectional=None`` means the example decides (the
    truecase example then trains both kinds); ``pooling=None`` and ``noise=None`` hide
    ``--pooling`` and ``--noise``."""

    out: str
    cell: str = "lstm"
    hidden: int = 64
    layers: int = 1
    bidirectional: bool | None = False
    dropout: float = 0.0
    zoneout: float = 0.0
    pooling: str | None = None
    noise: float | None = None
    lr: float = 3e-3
    schedule: str = "cosine"
    batch_size: int = 32
    max_steps: int | str = 1000  # a string: the help text of an example-specific default
    eval_interval: int = 50
    val_fraction: float | None = 0.1  # None hides --val-fraction (a task's own fixed split)
    weight_decay: float = 0.0
    average: float | None = None  # None hides --average
    label_smoothing: float | None = None  # None hides --label-smoothing
    time_warp: float | None = None  # None hides --time-warp
    feature_dropout: float | None = None  # None hides --feature-dropout


def add_arguments(p: argparse.ArgumentParser, d: Defaults) -> None:
    """The flags every classification/tagging example takes, with its defaults shown."""
    m = p.add_argument_group("model")
    add_stack_options(
        m, ENCODER_CELLS, d.cell, d.hidden, d.layers, d.dropout, "units per layer and direction"
    )
    shown = "both, one after the other" if d.bidirectional is None else d.bidirectional
    m.add_argument(
        "--bidirectional",
        action=argparse.BooleanOptionalAction,
        default=d.bidirectional,
        help=f"read the sequence both ways (default: {shown})",
    )
    m.add_argument(
        "--zoneout",
        type=fraction,
        default=None,
        metavar="X",
        help=f"lstm only: probability that a unit keeps its previous state at a step, in "
        f"training (default: {d.zoneout} for lstm)",
    )
    p.set_defaults(zoneout_default=d.zoneout)
    if d.pooling is not None:
        m.add_argument(
            "--pooling",
            choices=POOLINGS,
            default=d.pooling,
            help=f"summary the decision reads: the final state (last), the mean or maximum "
            f"over time, both concatenated (mean-max), or a mean weighted by a learned "
            f"softmax over time (attention) (default: {d.pooling})",
        )
    o = p.add_argument_group("optimisation")
    augmentations = (  # shown only for examples that set a default
        (
            "--noise",
            nonnegative_float,
            d.noise,
            "standard deviation of Gaussian noise added to the standardised inputs of each "
            "training batch, a data augmentation",
        ),
        (
            "--time-warp",
            fraction,
            d.time_warp,
            "stretch or squeeze each training sequence in time by a random factor in "
            "[1 - X, 1 + X] (linear interpolation), a data augmentation; 0: off",
        ),
        (
            "--feature-dropout",
            fraction,
            d.feature_dropout,
            "zero each input feature of each training sequence, at every step, with "
            "probability X (the rest scaled by 1 / (1 - X)), a data augmentation; 0: off",
        ),
        (
            "--label-smoothing",
            fraction,
            d.label_smoothing,
            "train towards 1 - X on the true class and X spread evenly over all classes, a "
            "regulariser; validation and test losses stay plain cross entropy",
        ),
    )
    for flag, kind, default, text in augmentations:
        if default is not None:
            number(o, flag, kind, default, text, "X")
    add_optim_options(o, d.lr, d.schedule, d.batch_size)
    number(o, "--weight-decay", nonnegative_float, d.weight_decay, "Adam's L2 weight decay", "X")
    o.add_argument(
        "--max-steps",
        type=positive_int,
        default=None if isinstance(d.max_steps, str) else d.max_steps,
        metavar="N",
        help=f"updates per run (default: {d.max_steps})",
    )
    if d.average is not None:
        o.add_argument(
            "--average",
            type=fraction,
            default=d.average,
            metavar="X",
            help=f"evaluate the average of the weights after each of the last X of the "
            f"updates (stochastic weight averaging) instead of a checkpoint; 0: off "
            f"(default: {d.average})",
        )
    o.add_argument(
        "--max-time",
        type=positive_float,
        default=None,
        metavar="S",
        help="also stop a run after S seconds (default: no limit)",
    )
    r = p.add_argument_group("evaluation and output")
    if d.val_fraction is not None:
        r.add_argument(
            "--val-fraction",
            type=fraction,
            default=d.val_fraction,
            metavar="X",
            help="part of the training data held out to pick the best checkpoint"
            + (" (with --average: only to report on)" if d.average is not None else "")
            + f"; 0: train on all of it and keep the last weights (default: {d.val_fraction})",
        )
    r.add_argument(
        "--seed", type=random_seed, default=1, metavar="N", help="first seed (default: 1)"
    )
    r.add_argument(
        "--seeds",
        type=positive_int,
        default=1,
        metavar="K",
        help="train K runs, seeds N..N+K-1, and report mean and spread (default: 1)",
    )
    add_output_options(
        r,
        d.out,
        d.eval_interval,
        "CPU threads for torch; these models are small, and more threads than free cores "
        "slow them down many times over",
    )


@dataclass(frozen=True)
class ExampleConfig(TrainConfig):
    """A :class:`TrainConfig` whose ``config.json`` shows the example's model and data
    settings (``example``) with the optimisation, schedule and output groups, instead of the
    language model's groups, which an example does not use."""

    example: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "example": self.example,
            "optim": asdict(self.optim),
            "schedule": asdict(self.schedule),
            "output": asdict(self.output),
        }


def train_config(args, seed: int, out: Path, example: dict) -> ExampleConfig:
    """The engine's configuration from the flags, for one seed's run directory."""
    return ExampleConfig(
        optim=OptimConfig(
            lr=args.lr,
            weight_decay=args.weight_decay,
            batch_size=args.batch_size,
            max_steps=args.max_steps,
            max_time=args.max_time,
        ),
        schedule=ScheduleConfig(schedule=args.schedule),
        output=OutputConfig(
            out=str(out),
            eval_interval=args.eval_interval,
            sample_length=0,
            seed=seed,
            progress=not args.no_progress,
            tensorboard=False,
        ),
        example=example,
    )


# -- data -------------------------------------------------------------------------------------


class Batch(NamedTuple):
    x: Tensor  # (N, T, F) features or (N, T) ids, zero-padded
    lengths: Tensor  # (N,)
    y: Tensor  # (N,) labels or (N, T) tags


def collate(examples: Sequence[tuple[Tensor, Tensor | int]]) -> Batch:
    """Pad ``(x (T_i, ...), y)`` pairs into a :class:`Batch`; per-step targets are padded
    with -100, per-sequence labels stacked."""
    xs = [x for x, _ in examples]
    lengths = torch.tensor([len(x) for x in xs])
    x = pad_sequence(xs, batch_first=True)
    ys = [y for _, y in examples]
    if torch.is_tensor(ys[0]) and ys[0].dim() == 1:
        y = pad_sequence(ys, batch_first=True, padding_value=-100)
    else:
        y = torch.as_tensor(ys)
    return Batch(x, lengths, y)


def batches(examples: Sequence, size: int = 256):
    for start in range(0, len(examples), size):
        yield collate(examples[start : start + size])


def stratified_split(labels: Sequence, val_fraction: float, seed: int):
    """Indices (train, val): ``val_fraction`` of every class, drawn with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        order = torch.randperm(len(members), generator=generator).tolist()
        k = round(len(members) * val_fraction)
        val += [members[i] for i in order[:k]]
        train += [members[i] for i in order[k:]]
    return sorted(train), sorted(val)


def check_split(val_fraction: float, n_train: int, n_val: int) -> None:
    """Refuse a ``--val-fraction`` that leaves one side of the split empty."""
    if n_train == 0:
        raise UserError(
            f"--val-fraction {val_fraction} leaves no training examples (all {n_val} go to "
            "validation); lower it"
        )
    if val_fraction > 0 and n_val == 0:
        raise UserError(
            f"--val-fraction {val_fraction} leaves no validation examples (it rounds to none "
            "of each class); raise it, or give 0 to train on all of them"
        )


@dataclass(frozen=True)
class Standardizer:
    """Per-feature (x - mean) / std, the statistics taken from training sequences only."""

    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, sequences: Sequence[Tensor]) -> Standardizer:
        steps = torch.cat(list(sequences)).double()  # every real step of every sequence
        std = steps.std(0).clamp_min(1e-8)
        return cls(steps.mean(0).tolist(), std.tolist())

    def __call__(self, x: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype)
        std = torch.tensor(self.std, dtype=x.dtype)
        return (x - mean) / std


# -- metrics ----------------------------------------------------------------------------------


@torch.no_grad()
def classification_metrics(model, examples: Sequence) -> dict[str, float]:
    """Mean cross entropy (``val_loss``) and accuracy of ``model`` on ``examples``."""
    total_loss, correct = 0.0, 0
    for b in batches(examples):
        logits = model(b.x, b.lengths)
        total_loss += torch.nn.functional.cross_entropy(logits, b.y, reduction="sum").item()
        correct += int((logits.argmax(-1) == b.y).sum())
    return {"val_loss": total_loss / len(examples), "accuracy": correct / len(examples)}


@torch.no_grad()
def tagging_metrics(model, examples: Sequence, positive: int = 1) -> dict[str, float]:
    """Per-step cross entropy (``val_loss``), accuracy, and precision, recall and F1 of the
    tag ``positive``, over the real steps of ``examples``."""
    total_loss, steps, correct, tp, fp, fn = 0.0, 0, 0, 0, 0, 0
    for b in batches(examples):
        logits = model(b.x, b.lengths)
        real = b.y != -100
        logits, y = logits[real], b.y[real]
        total_loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        guess = logits.argmax(-1)
        steps += len(y)
        correct += int((guess == y).sum())
        tp += int(((guess == positive) & (y == positive)).sum())
        fp += int(((guess == positive) & (y != positive)).sum())
        fn += int(((guess != positive) & (y == positive)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "val_loss": total_loss / steps,
        "accuracy": correct / steps,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


# -- one run ----------------------------------------------------------------------------------


def train_model(
    model,
    build: Callable,
    kind: str,
    spec: dict,
    train: Sequence,
    val: Sequence,
    metrics_fn: Callable,
    config: ExampleConfig,
    log=print,
    loss_fn: Callable | None = None,
    average: float = 0.0,
    loss_unit: str = "sequence",
) -> tuple[torch.nn.Module, TrainResult]:
    """Train ``model`` on ``train`` through the engine, validating on ``val``; return the
    best checkpoint (lowest validation loss; the last weights without ``val``), reloaded
    from disk, and the engine's result.  ``average`` > 0: return instead the average of the
    weights over the last ``average`` of the updates (:class:`AveragingTask`), saved as
    ``best/``.

    ``spec`` (model config and whatever else rebuilds and feeds the model: normalisation,
    vocabulary, class names) is saved in every checkpoint; ``build(spec)`` rebuilds it.
    ``loss_fn(model, batch)`` defaults to ``model.loss(batch.x, batch.y, batch.lengths)``;
    ``loss_unit`` is what it averages over, for the log lines (nats per ...)."""
    task_args = (
        train,
        val,
        config.optim.batch_size,
        collate,
        loss_fn or (lambda m, b: m.loss(b.x, b.y, b.lengths)),
        metrics_fn,
    )
    if average:
        start = round((1 - average) * config.optim.max_steps)
        task = AveragingTask(model, start, *task_args, seed=config.output.seed, loss_unit=loss_unit)
    else:
        task = SupervisedTask(*task_args, seed=config.output.seed, loss_unit=loss_unit)

    def checkpointer(directory, training_state, **info):
        save_model(directory, model, kind, spec, training_state, **info)

    result = Trainer(model, task, config, checkpointer, log=log, handle_signals=True).run()
    if result.steps == 0:
        return model.eval(), result
    if average:
        averaged = task.finish()
        save_model(result.out / "best", model, kind, spec, step=result.steps, averaged=averaged)
        log(f"evaluating the average of the weights after the last {averaged} updates")
    best, _, _ = load_model(result.out, build, kind)  # best/, or last/ if never validated
    return best, result


class AveragingTask(SupervisedTask):
    """A :class:`SupervisedTask` that also averages ``model``'s weights, uniformly, over
    the states after each update from ``start`` + 1 on (stochastic weight averaging,
    Izmailov et al. 2018): the trainer asks for each update's loss just before making it,
    so that is when the weights left by the previous update are added.  :meth:`finish`
    adds the final weights, copies the average into ``model`` and returns how many states
    it holds.  The model has no buffers (no batch norm), so the average needs no repair."""

    def __init__(self, model: torch.nn.Module, start: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model, self.start, self.updates = model, start, 0
        self.average = torch.optim.swa_utils.AveragedModel(model)

    def training_loss(self, model) -> Tensor:
        if self.updates > self.start:
            self.average.update_parameters(self.model)
        self.updates += 1
        return super().training_loss(model)

    def finish(self) -> int:
        self.average.update_parameters(self.model)
        with torch.no_grad():
            for p, mean in zip(
                self.model.parameters(), self.average.module.parameters(), strict=True
            ):
                p.copy_(mean)
        return int(self.average.n_averaged)


# -- seeds ------------------------------------------------------------------------------------


def run_directory(args, seed: int, suffix: str = "") -> Path:
    """``--out`` for a single run, ``--out/seed-N`` (``--out/NAME-seed-N``) for several."""
    out = Path(args.out)
    if args.seeds == 1:
        return out / suffix if suffix else out
    return out / (f"{suffix}-seed-{seed}" if suffix else f"seed-{seed}")


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), minimum and maximum."""
    values = list(values)
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def percent(s: dict[str, float]) -> str:
    """'98.38% ± 0.42 (min 97.84, max 98.92, 5 seeds)' for a summary of fractions; one
    seed: '98.38% (one seed)', with no spread it did not measure."""
    if s["n"] == 1:
        return f"{100 * s['mean']:.2f}% (one seed)"
    return (
        f"{100 * s['mean']:.2f}% ± {100 * s['std']:.2f} "
        f"(min {100 * s['min']:.2f}, max {100 * s['max']:.2f}, {s['n']} seeds)"
    )


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


# -- classification examples ------------------------------------------------------------------


def zoneout(args) -> float:
    """``--zoneout``, or the example's default for an lstm and 0 for the other cells."""
    if args.zoneout is None:
        return args.zoneout_default if args.cell == "lstm" else 0.0
    if args.zoneout and args.cell != "lstm":
        raise UserError(f"--zoneout needs --cell lstm; got --cell {args.cell}")
    return args.zoneout


def model_config(cls, **settings):
    """``cls(**settings)``, a settings mistake reported as a one-line :class:`UserError`."""
    try:
        return cls(**settings)
    except ValueError as exc:
        raise UserError(f"invalid model settings: {exc}") from None


def build_classifier(spec: dict) -> SequenceClassifier:
    return SequenceClassifier(ClassifierConfig.from_json(spec["model"]))


def classify_seed(args, seed: int, name: str, train_all, test, classes, example: dict) -> dict:
    """One seed of a classification example: split off validation (stratified, drawn with
    ``seed``), standardise with the training part, train, and score the best checkpoint on
    validation and test.  ``train_all`` and ``test`` are lists of ((T, F) tensor, class)."""
    timer = Timer()
    fit_idx, val_idx = stratified_split([y for _, y in train_all], args.val_fraction, seed)
    check_split(args.val_fraction, len(fit_idx), len(val_idx))
    scale = Standardizer.fit([train_all[i][0] for i in fit_idx])
    fit = [(scale(train_all[i][0]), train_all[i][1]) for i in fit_idx]
    val = [(scale(train_all[i][0]), train_all[i][1]) for i in val_idx]
    test = [(scale(x), y) for x, y in test]
    config = model_config(
        ClassifierConfig,
        input_size=fit[0][0].shape[1],
        num_classes=len(classes),
        cell=args.cell,
        hidden_size=args.hidden,
        num_layers=args.layers,
        bidirectional=args.bidirectional,
        dropout=args.dropout,
        zoneout=zoneout(args),
        pooling=args.pooling,
    )
    spec = {"model": config.to_json(), "standardizer": asdict(scale), "classes": classes}
    out = run_directory(args, seed)
    example = {
        "task": name,
        "model": config.to_json(),
        "val_fraction": args.val_fraction,
        "noise": getattr(args, "noise", 0.0),
        "average": getattr(args, "average", 0.0),
        "label_smoothing": getattr(args, "label_smoothing", 0.0),
        "time_warp": getattr(args, "time_warp", 0.0),
        "feature_dropout": getattr(args, "feature_dropout", 0.0),
        **example,
    }
    torch.manual_seed(seed)
    model = SequenceClassifier(config)
    if seed == args.seed:
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"data: {len(fit)} training, {len(val)} validation, {len(test)} test sequences "
            f"of {config.input_size} features; model: {n_params:,} parameters"
        )
    best, result = train_model(
        model,
        build_classifier,
        CLASSIFIER_KIND,
        spec,
        fit,
        val,
        classification_metrics,
        train_config(args, seed, out, example),
        loss_fn=training_loss(
            getattr(args, "noise", 0.0),
            getattr(args, "label_smoothing", 0.0),
            getattr(args, "time_warp", 0.0),
            getattr(args, "feature_dropout", 0.0),
        ),
        average=getattr(args, "average", 0.0),
    )
    nothing = {"val_loss": None, "accuracy": None}
    val_m = classification_metrics(best, val) if val else nothing  # --val-fraction 0
    test_m = classification_metrics(best, test)
    return {
        "seed": seed,
        "test_accuracy": test_m["accuracy"],
        "test_errors": round((1 - test_m["accuracy"]) * len(test)),
        "test_loss": test_m["val_loss"],
        "val_accuracy": val_m["accuracy"],
        "val_loss": val_m["val_loss"],
        "steps": result.steps,
        "seconds": timer.seconds,
        "out": str(out),
        "interrupted": result.interrupted,
    }


def time_warp(b: Batch, warp: float) -> Batch:
    """``b`` with each (N, T, F) feature sequence resampled, by linear interpolation, to
    round(T_i * s_i) steps, s_i uniform in [1 - warp, 1 + warp]."""
    scale = 1 + warp * (2 * torch.rand(len(b.lengths)) - 1)
    lengths = (b.lengths * scale).round().long().clamp_min(1)
    warped = []
    for x, T, T_new in zip(b.x, b.lengths.tolist(), lengths.tolist(), strict=True):
        where = torch.linspace(0, T - 1, T_new)  # positions in the original steps
        left = where.floor().long()
        right = (left + 1).clamp_max(T - 1)
        w = (where - left).unsqueeze(1)
        warped.append((1 - w) * x[left] + w * x[right])
    return Batch(pad_sequence(warped, batch_first=True), lengths, b.y)


def feature_dropout(x: Tensor, p: float) -> Tensor:
    """(N, T, F) ``x`` with each of the N * F feature tracks zeroed, at every step, with
    probability ``p`` and the others scaled by 1 / (1 - p); ``p`` = 0: ``x`` itself."""
    if not p:
        return x
    keep = torch.rand(x.shape[0], 1, x.shape[2], device=x.device) >= p
    return x * keep / (1 - p)


def training_loss(
    noise: float = 0.0,
    label_smoothing: float = 0.0,
    warp: float = 0.0,
    drop_features: float = 0.0,
) -> Callable | None:
    """The classifier's training loss with each training batch time-warped (see
    :func:`time_warp`), whole input features dropped with probability ``drop_features``
    (:func:`feature_dropout`), N(0, noise^2) added to every input (padded steps too, which
    the model ignores), and label smoothing; validation and test see clean inputs and plain
    cross entropy.  None: the plain loss."""
    if not noise and not label_smoothing and not warp and not drop_features:
        return None

    def loss(model, b: Batch) -> Tensor:
        if warp:
            b = time_warp(b, warp)
        x = feature_dropout(b.x, drop_features)
        x = x + noise * torch.randn_like(x) if noise else x
        logits = model(x, b.lengths)
        return torch.nn.functional.cross_entropy(logits, b.y, label_smoothing=label_smoothing)

    return loss


def run_classification(args, name: str, title: str, data, example: dict | None = None) -> int:
    """``--seeds`` runs of :func:`classify_seed`; print each and the mean ± std of the test
    accuracy; write ``--out/results.json``."""
    torch.set_num_threads(args.threads)
    timer = Timer()
    train_all, test, classes = data
    runs = []
    for k in range(args.seeds):
        r = classify_seed(args, args.seed + k, name, train_all, test, classes, example or {})
        runs.append(r)
        val = (
            "no validation set"
            if r["val_accuracy"] is None
            else f"validation accuracy {100 * r['val_accuracy']:.2f}%"
        )
        print(
            f"seed {r['seed']}: test accuracy {100 * r['test_accuracy']:.2f}% "
            f"({r['test_errors']} of {len(test)} wrong), {val}, "
            f"{r['steps']} steps in {r['seconds']:.0f} s -> {r['out']}"
        )
        if r["interrupted"]:
            return 130
    summary = summarize([r["test_accuracy"] for r in runs])
    print(f"{title} test accuracy: {percent(summary)}; total {timer.seconds:.0f} s")
    results = {"task": name, **(example or {}), "test_accuracy": summary, "runs": runs}
    path = write_results(Path(args.out), {**results, "seconds": timer.seconds})
    print(f"results: {path}")
    return 0
