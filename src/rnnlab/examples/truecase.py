"""Many-to-many, aligned, on real text: restore the capital letters of Tiny Shakespeare
(``rnnlab task truecase``).

The input is the lower-cased text, one character per step; the tag of each step is 1 if
that character was upper case, else 0.  Some capitals need only the past (the first letter
after ". "), others need the future: a speaker's name is written in capitals, and whether
a line is a name shows only at the ":" that ends it ("ROMEO:" against "Romeo,").  So the
bidirectional tagger, which sees the whole window at every step, should beat the
unidirectional one, which sees only the characters up to the current one.  By default the
command trains both and compares them.

Protocol: the bundled corpus is cut into three contiguous parts, the first 80% for
training, the next 10% for validation (picking the checkpoint) and the last 10% for the
test; each part is cut into windows of ``--window`` characters, and every window is one
sequence (the models start afresh at each).  The character vocabulary comes from the
training part.  Figures are over the test part's characters: accuracy, and precision,
recall and F1 of the upper-case tag; also given for two baselines without learning:
"everything lower case" and a rule (capitalise a line's first letter, the letter after
". ", "! " or "? ", and the word "i").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rnnlab.argtypes import positive_int
from rnnlab.data import load_text
from rnnlab.examples._shared import write_results
from rnnlab.examples._supervised_common import (
    TAGGER_KIND,
    Defaults,
    Timer,
    model_config,
    percent,
    run_directory,
    summarize,
    tagging_metrics,
    train_config,
    train_model,
    zoneout,
)
from rnnlab.examples._supervised_common import add_arguments as add_common_arguments
from rnnlab.models.tagger import SequenceTagger, TaggerConfig

NAME = "truecase"
ARCHITECTURE = "many-to-many"
DESCRIPTION = (
    "restore the capitals of lower-cased Tiny Shakespeare, one tag per character; "
    "unidirectional against bidirectional tagger"
)
UNKNOWN = "\0"  # index 0: a character the training part does not contain
DEFAULTS = Defaults(
    out="runs/truecase",
    hidden=64,
    bidirectional=None,  # both, one after the other
    dropout=0.0,
    lr=3e-3,
    batch_size=64,
    max_steps=600,
    eval_interval=200,
    val_fraction=None,  # the fixed contiguous split of the module docstring
)


def add_arguments(p) -> None:
    p.add_argument(
        "--window",
        type=positive_int,
        default=100,
        metavar="N",
        help="characters per sequence (default: 100)",
    )
    p.add_argument(
        "--embedding",
        type=positive_int,
        default=16,
        metavar="N",
        help="size of the character embedding (default: 16)",
    )
    add_common_arguments(p, DEFAULTS)


# -- data -------------------------------------------------------------------------------------


def lower_and_tags(text: str) -> tuple[str, list[int]]:
    """The lower-cased text and, per character, 1 if it was upper case.  A character whose
    lower case is not one character (rare outside ASCII) is kept as it is, so the two stay
    aligned."""
    lowered = text.lower()
    if len(lowered) != len(text):  # some character lower-cases to several
        lowered = "".join(ch if len(ch.lower()) != 1 else ch.lower() for ch in text)
    tags = codepoints(text) != codepoints(lowered)
    return lowered, tags.astype(np.int64).tolist()


def codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def split_parts(n: int, fractions=(0.8, 0.1)) -> tuple[slice, slice, slice]:
    a = int(n * fractions[0])
    b = a + int(n * fractions[1])
    return slice(0, a), slice(a, b), slice(b, n)


def windows(ids: torch.Tensor, tags: torch.Tensor, size: int):
    """Consecutive non-overlapping (ids, tags) windows; the last may be shorter."""
    return list(zip(ids.split(size), tags.split(size), strict=True))


def load_truecase(window: int, text: str | None = None):
    """``(train, val, test, alphabet, test_text)`` from ``text`` (default: the bundled Tiny
    Shakespeare); each part a list of (ids (T,), tags (T,)) windows."""
    text = load_text() if text is None else text
    lowered, tags = lower_and_tags(text)
    parts = split_parts(len(text))
    alphabet = UNKNOWN + "".join(sorted(set(lowered[parts[0]]) - {UNKNOWN}))
    # index of each character in the alphabet, 0 (unknown) where it is not there
    known = codepoints(alphabet)
    codes = codepoints(lowered)
    position = np.searchsorted(known, codes).clip(max=len(known) - 1)
    ids = torch.from_numpy(np.where(known[position] == codes, position, 0).astype(np.int64))
    tag_tensor = torch.tensor(tags)
    train, val, test = (windows(ids[p], tag_tensor[p], window) for p in parts)
    return train, val, test, alphabet, text[parts[2]]


def rule_tags(lowered: str) -> list[int]:
    """The rule baseline: upper case for the first letter of a line, the first letter after
    ". ", "! " or "? " (any spaces), and the word "i"."""
    tags = [0] * len(lowered)
    start = True  # at the start of a line or a sentence
    for k, ch in enumerate(lowered):
        if ch.isalpha():
            prev = lowered[k - 1] if k else " "
            nxt = lowered[k + 1] if k + 1 < len(lowered) else " "
            alone_i = ch == "i" and not prev.isalpha() and not nxt.isalpha() and prev != "'"
            tags[k] = int(start or alone_i)
            start = False
        elif ch == "\n" or ch in ".!?":
            start = True
    return tags


def baseline_figures(test_text: str) -> dict[str, dict[str, float]]:
    """Accuracy and upper-case precision / recall / F1 of the two baselines on the test text."""
    lowered, truth = lower_and_tags(test_text)
    figures = {}
    for name, guess in (("all lower", [0] * len(truth)), ("rule", rule_tags(lowered))):
        tp = sum(g and t for g, t in zip(guess, truth, strict=True))
        fp = sum(g and not t for g, t in zip(guess, truth, strict=True))
        fn = sum(t and not g for g, t in zip(guess, truth, strict=True))
        correct = sum(g == t for g, t in zip(guess, truth, strict=True))
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        figures[name] = {"accuracy": correct / len(truth), "precision": p, "recall": r, "f1": f1}
    return figures


# -- training ---------------------------------------------------------------------------------


def build(spec: dict) -> SequenceTagger:
    return SequenceTagger(TaggerConfig.from_json(spec["model"]))


def tag_seed(args, seed: int, bidirectional: bool, data) -> dict:
    """Train one tagger; return its validation and test figures."""
    timer = Timer()
    train, val, test, alphabet, _ = data
    config = model_config(
        TaggerConfig,
        input_size=args.embedding,
        vocab_size=len(alphabet),
        num_tags=2,
        cell=args.cell,
        hidden_size=args.hidden,
        num_layers=args.layers,
        bidirectional=bidirectional,
        dropout=args.dropout,
        zoneout=zoneout(args),
    )
    direction = "bidirectional" if bidirectional else "unidirectional"
    spec = {"model": config.to_json(), "alphabet": alphabet, "tags": ["lower", "upper"]}
    out = run_directory(args, seed, direction if args.both else "")
    example = {"task": NAME, "model": config.to_json(), "window": args.window}
    torch.manual_seed(seed)
    model = SequenceTagger(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{direction} tagger, seed {seed}: {n_params:,} parameters")
    best, result = train_model(
        model,
        build,
        TAGGER_KIND,
        spec,
        train,
        val,
        tagging_metrics,
        train_config(args, seed, out, example),
        loss_unit="character",  # the tagger's loss is a mean over the characters
    )
    test_m = tagging_metrics(best, test)
    return {
        "seed": seed,
        "bidirectional": bidirectional,
        **{f"test_{k}": v for k, v in test_m.items() if k != "val_loss"},
        "test_loss": test_m["val_loss"],
        "steps": result.steps,
        "seconds": timer.seconds,
        "out": str(out),
        "interrupted": result.interrupted,
    }


def describe(figures: dict) -> str:
    return (
        f"accuracy {100 * figures['accuracy']:.2f}%, upper case: precision "
        f"{100 * figures['precision']:.1f}%, recall {100 * figures['recall']:.1f}%, "
        f"F1 {100 * figures['f1']:.1f}%"
    )


def run(args) -> int:
    torch.set_num_threads(args.threads)
    timer = Timer()
    data = load_truecase(args.window)
    train, val, test, alphabet, test_text = data
    print(
        f"data: {len(train)} training, {len(val)} validation, {len(test)} test windows of "
        f"{args.window} characters; alphabet {len(alphabet) - 1} lower-case characters"
    )
    baselines = baseline_figures(test_text)
    for name, figures in baselines.items():
        print(f"baseline '{name}': {describe(figures)}")
    kinds = [False, True] if args.bidirectional is None else [args.bidirectional]
    args.both = len(kinds) == 2
    results = {"task": NAME, "window": args.window, "baselines": baselines}
    for bidirectional in kinds:
        runs = []
        for k in range(args.seeds):
            r = tag_seed(args, args.seed + k, bidirectional, data)
            runs.append(r)
            figures = {key: r[f"test_{key}"] for key in ("accuracy", "precision", "recall", "f1")}
            print(
                f"seed {r['seed']}: test {describe(figures)}; {r['steps']} steps in "
                f"{r['seconds']:.0f} s -> {r['out']}"
            )
            if r["interrupted"]:
                return 130
        direction = "bidirectional" if bidirectional else "unidirectional"
        results[direction] = {
            "accuracy": summarize([r["test_accuracy"] for r in runs]),
            "f1": summarize([r["test_f1"] for r in runs]),
            "runs": runs,
        }
    print("test characters:", sum(len(ids) for ids, _ in test))
    for direction in ("unidirectional", "bidirectional"):
        if direction in results:
            s = results[direction]
            print(
                f"{direction:>14s}: accuracy {percent(s['accuracy'])}, "
                f"upper-case F1 {percent(s['f1'])}"
            )
    if args.both:
        uni, bi = results["unidirectional"], results["bidirectional"]
        d_acc = bi["accuracy"]["mean"] - uni["accuracy"]["mean"]
        d_f1 = bi["f1"]["mean"] - uni["f1"]["mean"]
        fewer = 1 - (1 - bi["accuracy"]["mean"]) / max(1 - uni["accuracy"]["mean"], 1e-12)
        results["bidirectional_gain"] = {"accuracy": d_acc, "f1": d_f1, "fewer_errors": fewer}
        print(
            f"bidirectional - unidirectional: accuracy {100 * d_acc:+.2f} points "
            f"({100 * fewer:.0f}% fewer errors), upper-case F1 {100 * d_f1:+.1f} points"
        )
    results["seconds"] = timer.seconds
    print(f"total {timer.seconds:.0f} s; results: {write_results(Path(args.out), results)}")
    return 0
