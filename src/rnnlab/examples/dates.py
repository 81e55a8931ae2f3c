"""Encoder-decoder on generated data: normalise dates written in many ways
(``rnnlab task dates``).

"3 May 1998", "05/03/98", "Sunday, May 3, 1998" -> "1998-05-03".  Dates run from
1950-01-01 to 2049-12-31, so a two-digit year is unambiguous (50-99: 19xx, 00-49: 20xx),
and the day-first and month-first formats are told apart by their separators (slashes are
month first, as in the US; dots are day first).  The 16 formats, shown for 1998-05-03::

    d Month yyyy            3 May 1998
    mm/dd/yy                05/03/98
    Weekday, Month d, yyyy  Sunday, May 3, 1998
    Month d, yyyy           May 3, 1998
    d Mon yyyy              3 May 1998 (Sep, Oct, ...)
    dd-Mon-yy               03-May-98
    yyyy-mm-dd              1998-05-03 (already normal)
    dd.mm.yyyy              03.05.1998
    m/d/yyyy                5/3/1998
    Dy d Mon yyyy           Sun 3 May 1998
    Month dth, yyyy         May 3rd, 1998
    the dth of Month yyyy   the 3rd of May 1998
    MONTH d yyyy            MAY 3 1998
    yyyy/mm/dd              1998/05/03
    yyyymmdd                19980503
    d month yyyy            3 may 1998

Held out: the 36,525 days are shuffled with the run's ``--seed``; the first
``--test-size`` days are the test set and the next ``--val-size`` the validation set
(each written once, in a format drawn at random); training examples are drawn from the
remaining days only, each in a random format, so no test *date* is ever seen in training,
in any format.
"""

from __future__ import annotations

import datetime as dt
import random

import torch

from rnnlab.errors import UserError
from rnnlab.examples._seq_common import (
    CharVocab,
    Defaults,
    Example,
    add_common_arguments,
    run_seq2seq,
)

NAME = "dates"
ARCHITECTURE = "seq2seq"
DESCRIPTION = (
    "normalise dates in 16 formats ('Sunday, May 3, 1998', '05/03/98' -> '1998-05-03'); "
    "encoder-decoder, exact match greedy and beam"
)
KIND = "seq2seq-dates"
DEFAULTS = Defaults(
    out="runs/dates",
    hidden=64,
    embedding=32,
    bidirectional=True,
    attention="luong",
    batch_size=128,
    lr=0.01,
    max_steps=1000,
    max_time=600.0,
    eval_interval=250,
    train_size=50_000,
    val_size=1000,
    test_size=2000,
)

FIRST, LAST = dt.date(1950, 1, 1), dt.date(2049, 12, 31)
MONTHS = (
    "January February March April May June July August September October November December"
).split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()


def ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _month(d):
    return MONTHS[d.month - 1]


FORMATS = {
    "d Month yyyy": lambda d: f"{d.day} {_month(d)} {d.year}",
    "mm/dd/yy": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year % 100:02d}",
    "Weekday, Month d, yyyy": lambda d: f"{WEEKDAYS[d.weekday()]}, {_month(d)} {d.day}, {d.year}",
    "Month d, yyyy": lambda d: f"{_month(d)} {d.day}, {d.year}",
    "d Mon yyyy": lambda d: f"{d.day} {_month(d)[:3]} {d.year}",
    "dd-Mon-yy": lambda d: f"{d.day:02d}-{_month(d)[:3]}-{d.year % 100:02d}",
    "yyyy-mm-dd": lambda d: d.isoformat(),
    "dd.mm.yyyy": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    "m/d/yyyy": lambda d: f"{d.month}/{d.day}/{d.year}",
    "Dy d Mon yyyy": lambda d: f"{WEEKDAYS[d.weekday()][:3]} {d.day} {_month(d)[:3]} {d.year}",
    "Month dth, yyyy": lambda d: f"{_month(d)} {ordinal(d.day)}, {d.year}",
    "the dth of Month yyyy": lambda d: f"the {ordinal(d.day)} of {_month(d)} {d.year}",
    "MONTH d yyyy": lambda d: f"{_month(d).upper()} {d.day} {d.year}",
    "yyyy/mm/dd": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    "yyyymmdd": lambda d: f"{d.year}{d.month:02d}{d.day:02d}",
    "d month yyyy": lambda d: f"{d.day} {_month(d).lower()} {d.year}",
}


def all_days() -> list[dt.date]:
    return [FIRST + dt.timedelta(days=i) for i in range((LAST - FIRST).days + 1)]


def vocabulary() -> CharVocab:
    """Every character any format can write (a leap year covers every month and weekday)."""
    year = [dt.date(2000, 1, 1) + dt.timedelta(days=i) for i in range(366)]
    return CharVocab.from_texts([f(d) for f in FORMATS.values() for d in year])


def make_data(train_size: int, val_size: int, test_size: int, seed: int):
    """(train, val, test) lists of (date, format name); see the module doc."""
    days = all_days()
    if val_size + test_size > len(days) // 2:
        raise UserError(f"--val-size + --test-size must be at most {len(days) // 2}")
    rng = random.Random(seed)
    rng.shuffle(days)
    names = list(FORMATS)
    test = [(d, rng.choice(names)) for d in days[:test_size]]
    val = [(d, rng.choice(names)) for d in days[test_size : test_size + val_size]]
    pool = days[test_size + val_size :]
    train = [(rng.choice(pool), rng.choice(names)) for _ in range(train_size)]
    return train, val, test


def examples(dates, vocab: CharVocab) -> list[Example]:
    out = []
    for d, name in dates:
        text = FORMATS[name](d)
        source = torch.tensor(vocab.encode(text))
        out.append(Example(source, torch.tensor(vocab.encode(d.isoformat())), text))
    return out


def add_arguments(p) -> None:
    add_common_arguments(p, DEFAULTS)


def run(args) -> int:
    train, val, test = make_data(args.train_size, args.val_size, args.test_size, args.seed)
    run_seq2seq(
        args,
        vocabulary(),
        (train, val, test),
        examples,
        KIND,
        max_length=12,
        group=("format", lambda i: test[i][1]),
        quote=True,
    )
    return 0
