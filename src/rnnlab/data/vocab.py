"""Vocabularies: characters (the default) or words, with encode and decode.

A character vocabulary holds every distinct character of the training text, sorted, so
any UTF-8 text works.  A word vocabulary (seed 000's word language model) splits text
into words, punctuation marks and newlines, keeps the ``max_size`` most frequent, and
maps the rest to ``<unk>``.

>>> v = Vocabulary.from_text("hello")
>>> v.tokens
['e', 'h', 'l', 'o']
>>> v.encode("hell"), v.decode([1, 0, 2, 2, 3])
([1, 0, 2, 2], 'hello')
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from rnnlab.errors import UserError

KINDS = ("char", "word")
UNK = "<unk>"
_WORD_RE = re.compile(r"\w+|[^\w\s]|\n")


def split_words(text: str) -> list[str]:
    """Words, single punctuation marks and newlines, in order."""
    return _WORD_RE.findall(text)


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[str]
    kind: str = "char"
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"vocabulary kind must be one of {KINDS}; got {self.kind!r}")
        object.__setattr__(self, "index", {t: i for i, t in enumerate(self.tokens)})

    @classmethod
    def from_text(cls, text: str, kind: str = "char", max_size: int | None = None) -> Vocabulary:
        """Build a vocabulary from ``text``; ``max_size`` caps a word vocabulary."""
        if kind == "char":
            return cls(sorted(set(text)), "char")
        if kind != "word":
            raise UserError(f"--tokens must be one of {', '.join(KINDS)}; got {kind!r}")
        counts = Counter(split_words(text))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        if max_size is not None and len(ranked) > max_size - 1:
            ranked = ranked[: max_size - 1]
        return cls(sorted(ranked) + [UNK], "word")

    def __len__(self) -> int:
        return len(self.tokens)

    def split(self, text: str) -> list[str]:
        return list(text) if self.kind == "char" else split_words(text)

    def unknown(self, text: str) -> list[str]:
        """Tokens of ``text`` outside the vocabulary (a word vocabulary has none: <unk>)."""
        if self.kind == "word":
            return []
        return sorted(set(text) - self.index.keys())

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; unknown characters raise :class:`UserError` naming them."""
        if self.kind == "word":
            unk = self.index[UNK]
            return [self.index.get(w, unk) for w in split_words(text)]
        missing = self.unknown(text)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:20])
            more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            raise UserError(f"characters not in the vocabulary: {shown}{more}")
        return [self.index[c] for c in text]

    def decode(self, ids) -> str:
        pieces = [self.tokens[int(i)] for i in ids]
        if self.kind == "char":
            return "".join(pieces)
        return " ".join(pieces).replace(" \n ", "\n").replace(" \n", "\n").replace("\n ", "\n")

    def to_json(self) -> dict:
        return {"kind": self.kind, "tokens": self.tokens}

    @classmethod
    def from_json(cls, data: dict) -> Vocabulary:
        return cls(list(data["tokens"]), data["kind"])
