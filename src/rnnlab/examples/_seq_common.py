"""What the generation examples (digit-words, addition, dates) share: character
vocabularies with <pad>/<bos>/<eos>, batching, exact-match metrics, flags, and the run
(train through the engine, reload the best checkpoint, score the held-out test set with
greedy decoding and beam search, write ``results.json``).

Protocol: the test set is generated (or split off) first, disjoint from the training and
validation data; the checkpoint with the lowest validation loss is scored once on it.
"""

from __future__ import annotations

import argparse
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
from rnnlab.models.generator import BOS, EOS, LAYERS, PAD
from rnnlab.models.seq2seq import ATTENTIONS, Seq2Seq, Seq2SeqConfig
from rnnlab.training.checkpoint import load_model, save_model
from rnnlab.training.config import OptimConfig, OutputConfig, TrainConfig
from rnnlab.training.schedules import (
    TEACHER_SCHEDULES,
    ScheduleConfig,
    TeacherForcing,
)
from rnnlab.training.supervised import SupervisedTask
from rnnlab.training.trainer import Trainer

SPECIALS = ("<pad>", "<bos>", "<eos>")
assert (PAD, BOS, EOS) == (0, 1, 2)  # the order of SPECIALS


# -- vocabulary -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CharVocab:
    """Characters after the three specials: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2.

    >>> v = CharVocab.from_texts(["535+61", "596"])
    >>> v.encode("56"), v.decode(v.encode("56") + [2, 5])
    ([6, 7], '56')
    """

    chars: str

    @classmethod
    def from_texts(cls, texts) -> CharVocab:
        return cls("".join(sorted(set("".join(texts)))))

    def __len__(self) -> int:
        return len(SPECIALS) + len(self.chars)

    @property
    def tokens(self) -> list[str]:
        return list(SPECIALS) + list(self.chars)

    def encode(self, text: str) -> list[int]:
        index = {ch: i + len(SPECIALS) for i, ch in enumerate(self.chars)}
        unknown = sorted({ch for ch in text if ch not in index})
        if unknown:
            raise UserError(f"characters outside the vocabulary: {''.join(unknown)!r} in {text!r}")
        return [index[ch] for ch in text]

    def decode(self, ids) -> str:
        """Text of ``ids`` up to the first ``<eos>``; other specials are skipped."""
        out = []
        for i in map(int, ids):
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(self.chars[i - len(SPECIALS)])
        return "".join(out)

    def to_json(self) -> dict:
        return {"chars": self.chars}

    @classmethod
    def from_json(cls, data: dict) -> CharVocab:
        return cls(data["chars"])


# -- batches --------------------------------------------------------------------------------


class Example(NamedTuple):
    """``source``: token ids (seq2seq) or a feature vector (generator); ``target``: token
    ids without ``<eos>``; ``text``: the source as text, for reports."""

    source: Tensor
    target: Tensor
    text: str = ""


class Batch(NamedTuple):
    source: Tensor  # (N, S) ids padded with <pad>, or (N, F) vectors
    lengths: Tensor | None  # (N,) source lengths; None for vectors
    target: Tensor  # (N, T) ids, each ending in <eos>, padded with <pad>


def collate(examples: Sequence[Example]) -> Batch:
    targets = [torch.cat([e.target, torch.tensor([EOS])]) for e in examples]
    target = pad_sequence(targets, batch_first=True, padding_value=PAD)
    if examples[0].source.dtype.is_floating_point and examples[0].source.dim() == 1:
        return Batch(torch.stack([e.source for e in examples]), None, target)
    sources = [e.source for e in examples]
    lengths = torch.tensor([len(s) for s in sources])
    return Batch(pad_sequence(sources, batch_first=True, padding_value=PAD), lengths, target)


def batches(examples: Sequence[Example], size: int = 500):
    for start in range(0, len(examples), size):
        yield collate(examples[start : start + size])


def loss_fn(model, batch: Batch) -> Tensor:
    """The batch's mean cross entropy per target token (calls the model, or its wrapper)."""
    if batch.lengths is None:
        return model(batch.source, batch.target)[1]
    return model(batch.source, batch.target, batch.lengths)[1]


# -- metrics ----------------------------------------------------------------------------------


@torch.no_grad()
def decode(model, examples: Sequence[Example], max_length: int, beam: int = 1, alpha=0.0):
    """Free-running outputs (token lists) for ``examples``, in batches."""
    outputs = []
    for b in batches(examples):
        extra = {} if b.lengths is None else {"lengths": b.lengths}
        outputs += model.generate(
            b.source, max_length=max_length, beam=beam, length_penalty=alpha, **extra
        )
    return outputs


def exact_match(outputs: Sequence[Sequence[int]], examples: Sequence[Example]) -> float:
    """Fraction of outputs equal, token for token, to their targets."""
    right = sum(list(o) == e.target.tolist() for o, e in zip(outputs, examples, strict=True))
    return right / max(len(examples), 1)


@torch.no_grad()
def validation_metrics(model, examples: Sequence[Example], max_length: int) -> dict[str, float]:
    """Teacher-forced cross entropy per target token (``val_loss``) and greedy exact match."""
    total, tokens = 0.0, 0
    for b in batches(examples):
        n = int((b.target != PAD).sum())
        total += loss_fn(model, b).item() * n
        tokens += n
    outputs = decode(model, examples, max_length)
    return {"val_loss": total / tokens, "exact_match": exact_match(outputs, examples)}


# -- flags ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Defaults:
    """An example's default flags; ``attention=None`` hides the encoder-decoder flags."""

    out: str
    cell: str = "lstm"
    hidden: int = 128
    layers: int = 1
    embedding: int = 32
    bidirectional: bool = False
    attention: str | None = "none"
    dropout: float = 0.0
    beam: int = 4
    length_penalty: float = 0.0
    teacher_forcing: str = "always"
    lr: float = 3e-3
    schedule: str = "cosine"
    batch_size: int = 64
    max_steps: int = 3000
    max_time: float = 600.0
    eval_interval: int = 500
    train_size: int = 0
    val_size: int = 0
    test_size: int = 0


def add_common_arguments(p: argparse.ArgumentParser, d: Defaults, data=None) -> None:
    """The flags every generation example takes, defaults shown; ``data(group)`` adds the
    example's own data flags."""
    g = p.add_argument_group("data")
    if d.train_size:
        number(g, "--train-size", positive_int, d.train_size, "training examples")
        number(g, "--val-size", positive_int, d.val_size, "validation examples")
        number(g, "--test-size", positive_int, d.test_size, "held-out test examples")
    if data is not None:
        data(g)
    m = p.add_argument_group("model")
    add_stack_options(m, LAYERS, d.cell, d.hidden, d.layers, d.dropout)
    m.add_argument(
        "--embedding",
        type=positive_int,
        default=d.embedding,
        metavar="N",
        help=f"token embedding size (default: {d.embedding})",
    )
    if d.attention is not None:
        m.add_argument(
            "--bidirectional",
            action=argparse.BooleanOptionalAction,
            default=d.bidirectional,
            help=f"bidirectional encoder (default: {d.bidirectional})",
        )
        m.add_argument(
            "--attention",
            choices=ATTENTIONS,
            default=d.attention,
            help=f"none, bahdanau (additive) or luong (multiplicative) (default: {d.attention})",
        )
    o = p.add_argument_group("training")
    add_optim_options(
        o,
        d.lr,
        d.schedule,
        d.batch_size,
        "learning-rate schedule; cosine decays to 0 over the run's budget",
    )
    o.add_argument(
        "--teacher-forcing",
        choices=TEACHER_SCHEDULES,
        default=d.teacher_forcing,
        metavar="SCHEDULE",
        help="probability of feeding the decoder the true previous token, by update: "
        f"{', '.join(TEACHER_SCHEDULES)}; else its own prediction (scheduled sampling) "
        f"(default: {d.teacher_forcing})",
    )
    o.add_argument(
        "--tf-k",
        type=positive_float,
        default=None,
        metavar="X",
        help="k of the linear (start, default 1), exponential (base, default 0.999) or "
        "inverse_sigmoid (default 500) schedule",
    )
    o.add_argument(
        "--tf-c",
        type=nonnegative_float,
        default=1e-4,
        metavar="X",
        help="slope of the linear schedule, per update (default: 0.0001)",
    )
    o.add_argument(
        "--tf-min",
        type=fraction,
        default=0.0,
        metavar="X",
        help="floor of the teacher-forcing probability (default: 0)",
    )
    o.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"stop after N updates (default: {d.max_steps}, or none if only --max-time is given)",
    )
    o.add_argument(
        "--max-time",
        type=positive_float,
        default=None,
        metavar="S",
        help=f"stop after S seconds (default: {d.max_time:g} as a cap on the default "
        "--max-steps; none if only --max-steps is given)",
    )
    r = p.add_argument_group("evaluation and output")
    r.add_argument(
        "--beam",
        type=positive_int,
        default=d.beam,
        metavar="K",
        help=f"beam width for the test figures, besides greedy (default: {d.beam})",
    )
    r.add_argument(
        "--length-penalty",
        type=nonnegative_float,
        default=d.length_penalty,
        metavar="A",
        help="alpha of the length penalty ((5 + |Y|) / 6) ** alpha, |Y| counting <eos> "
        f"(default: {d.length_penalty})",
    )
    r.add_argument(
        "--seed",
        type=random_seed,
        default=1,
        metavar="N",
        help="seeds data and training (default: 1)",
    )
    add_output_options(
        r, d.out, d.eval_interval, "torch intra-op threads; these small batches run fastest on one"
    )
    p.set_defaults(default_max_steps=d.max_steps, default_max_time=d.max_time)


def teacher_config(args) -> TeacherForcing:
    k = args.tf_k  # None: the schedule's default (TF_K_DEFAULTS)
    try:
        return TeacherForcing(args.teacher_forcing, k=k, c=args.tf_c, min_p=args.tf_min)
    except ValueError as exc:
        raise UserError(f"--teacher-forcing {args.teacher_forcing}: {exc}") from None


@dataclass(frozen=True)
class ExampleConfig(TrainConfig):
    """A :class:`TrainConfig` whose ``config.json`` shows the example's model and data
    settings (``example``) with the engine's groups that an example uses."""

    example: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "example": self.example,
            "optim": asdict(self.optim),
            "schedule": asdict(self.schedule),
            "teacher": asdict(self.teacher),
            "output": asdict(self.output),
        }


def train_config(args, example: dict) -> ExampleConfig:
    max_steps, max_time = args.max_steps, args.max_time
    if max_steps is None and max_time is None:  # the budget is counted in updates, so a
        max_steps, max_time = args.default_max_steps, args.default_max_time  # busy machine
    return ExampleConfig(  # changes the run time, not the result; the time only caps it
        optim=OptimConfig(
            lr=args.lr,
            batch_size=args.batch_size,
            max_steps=max_steps,
            max_time=max_time,
        ),
        schedule=ScheduleConfig(schedule=args.schedule),
        teacher=teacher_config(args),
        output=OutputConfig(
            out=args.out,
            eval_interval=args.eval_interval,
            sample_length=0,
            seed=args.seed,
            progress=not args.no_progress,
            tensorboard=False,
        ),
        example=example,
    )


# -- the run ----------------------------------------------------------------------------------


def describe(config: ExampleConfig) -> str:
    lines = []
    for group, values in config.to_json().items():
        lines.append(f"  {group}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return "config:\n" + "\n".join(lines)


def train_and_test(
    model,
    build: Callable,
    kind: str,
    spec: dict,
    data: dict[str, Sequence[Example]],
    config: ExampleConfig,
    args,
    max_length: int,
    show: Callable[[Example, list[int]], str],
    group: tuple[str, Callable[[int], str]] | None = None,
    log=print,
) -> dict:
    """Train ``model`` on ``data["train"]`` (validating on ``data["val"]``), reload the best
    checkpoint, score ``data["test"]`` greedy and with beam search, print and save figures.

    ``show(example, output)`` formats one test prediction for the report; ``group`` =
    (name, function of the test index) breaks the greedy figure down by that group."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    log(describe(config))
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"data: {len(data['train']):,} training, {len(data['val']):,} validation and "
        f"{len(data['test']):,} test examples; model: {n_params:,} parameters"
    )
    task = SupervisedTask(
        data["train"],
        data["val"],
        config.optim.batch_size,
        collate,
        loss_fn,
        lambda m, examples: validation_metrics(m, examples, max_length),
        seed=args.seed,
        loss_unit="target token",
    )

    def checkpointer(directory, training_state, **info):
        save_model(directory, model, kind, spec, training_state, **info)

    start = time.perf_counter()
    result = Trainer(model, task, config, checkpointer, log=log, handle_signals=True).run()
    train_wall = time.perf_counter() - start
    if result.steps == 0:
        raise UserError("no update was made; nothing to evaluate")
    best, _, info = load_model(result.out, build, kind)
    start = time.perf_counter()
    tests = {"greedy": decode(best, data["test"], max_length)}
    if args.beam > 1:
        tests[f"beam{args.beam}"] = decode(
            best, data["test"], max_length, args.beam, args.length_penalty
        )
    test_seconds = time.perf_counter() - start
    scores = {name: exact_match(outputs, data["test"]) for name, outputs in tests.items()}
    right = [o == e.target.tolist() for e, o in zip(data["test"], tests["greedy"], strict=True)]
    wrong = [(e, o) for e, o, r in zip(data["test"], tests["greedy"], right, strict=True) if not r]
    by_group = {}
    if group is not None:
        counts: dict[str, list[int]] = {}
        for i, r in enumerate(right):
            counts.setdefault(group[1](i), []).append(int(r))
        by_group = {k: sum(v) / len(v) for k, v in sorted(counts.items())}
    results = {
        "task": kind,
        "test_examples": len(data["test"]),
        "exact_match": scores,
        **({f"greedy_by_{group[0].replace(' ', '_')}": by_group} if group is not None else {}),
        "beam": args.beam,
        "length_penalty": args.length_penalty,
        "best_step": info.get("step"),
        "best_val_loss": info.get("val_loss"),
        "steps": result.steps,
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(train_wall, 1),
        "test_seconds": round(test_seconds, 1),
        "stop_reason": result.stop_reason,
        "config": config.to_json(),
    }
    out = Path(result.out)
    write_results(out, results)
    log(
        f"trained {result.steps} update{'s' * (result.steps != 1)} in "
        f"{result.train_seconds:.0f} s of updates "
        f"({train_wall:.0f} s with validations); best checkpoint: step {info.get('step')}"
    )
    figures = ", ".join(f"{name} {100 * s:.2f}%" for name, s in scores.items())
    log(f"test exact match on {len(data['test']):,} held-out examples: {figures}")
    if by_group:
        worst = sorted(by_group.items(), key=lambda kv: kv[1])
        log(f"  greedy by {group[0]}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in worst))
    for e, o in wrong[:5]:
        log(f"  wrong: {show(e, o)}")
    log(f"results in {out / 'results.json'}")
    return results


def decoding_settings(model_config, args, **extra) -> dict:
    """What ``config.json`` records under ``example``: the model, the data settings in
    ``extra`` and the test decoding."""
    return {
        **model_config.to_json(),
        **extra,
        "beam": args.beam,
        "length_penalty": args.length_penalty,
    }


def shower(vocab: CharVocab, quote: bool = False) -> Callable[[Example, list[int]], str]:
    """``show(example, output)`` for the report: source -> output (expected target)."""

    def show(e: Example, output: list[int]) -> str:
        source = repr(e.text) if quote else e.text
        return f"{source} -> {vocab.decode(output)!r} (expected {vocab.decode(e.target)!r})"

    return show


def build_seq2seq(spec: dict) -> Seq2Seq:
    return Seq2Seq(Seq2SeqConfig(**spec["model"]))


def run_seq2seq(
    args,
    vocab: CharVocab,
    parts: tuple,
    make_examples: Callable,
    kind: str,
    max_length: int,
    group: tuple[str, Callable[[int], str]],
    spec_extra: dict | None = None,
    settings_extra: dict | None = None,
    quote: bool = False,
) -> dict:
    """The encoder-decoder examples' run: ``parts`` = (train, val, test) raw items, turned
    into examples by ``make_examples(items, vocab)``; a :class:`Seq2Seq` built from the
    command-line options, trained and tested by :func:`train_and_test`."""
    data = {
        name: make_examples(items, vocab)
        for name, items in zip(("train", "val", "test"), parts, strict=True)
    }
    model_config = Seq2SeqConfig(
        source_vocab_size=len(vocab),
        target_vocab_size=len(vocab),
        cell=args.cell,
        hidden_size=args.hidden,
        num_layers=args.layers,
        embedding_dim=args.embedding,
        bidirectional=args.bidirectional,
        attention=args.attention,
        dropout=args.dropout,
    )
    spec = {"model": model_config.to_json(), "vocab": vocab.to_json(), **(spec_extra or {})}
    sizes = {k: getattr(args, k) for k in ("train_size", "val_size", "test_size")}
    settings = decoding_settings(model_config, args, **(settings_extra or {}), **sizes)
    config = train_config(args, settings)
    torch.manual_seed(args.seed)
    model = Seq2Seq(model_config)
    return train_and_test(
        model,
        build_seq2seq,
        kind,
        spec,
        data,
        config,
        args,
        max_length=max_length,
        show=shower(vocab, quote),
        group=group,
    )
