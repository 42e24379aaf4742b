"""Language-model metrics: nats/char, bits-per-char, perplexity, the character 3-gram baseline, word hits.

The baseline is what a character model must beat to be worth its training time: a 3-gram model
with add-one (Laplace) smoothing over the same vocabulary, fitted on the same training split.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

LN2 = math.log(2.0)


@dataclass(frozen=True)
class LMScore:
    nats_per_char: float
    chars: int

    @property
    def bpc(self) -> float:
        return self.nats_per_char / LN2

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.nats_per_char, 700.0))

    def flat(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}.loss": self.nats_per_char,
            f"{prefix}.bpc": self.bpc,
            f"{prefix}.perplexity": self.perplexity,
        }


def trigram_add_one(train_ids: Iterable[int], eval_ids: Iterable[int], vocab_size: int) -> LMScore:
    """Character 3-gram with add-one smoothing: P(c | a b) = (n(a b c) + 1) / (n(a b) + V).

    Counts come from `train_ids`; every character of `eval_ids` from the third on is scored, with
    the two before it as context. `vocab_size` V is the model's output size (unknown slot included).
    """
    train, held = list(train_ids), list(eval_ids)
    if len(held) < 3:
        raise ValueError("the evaluation text needs at least 3 characters for a 3-gram score")
    triples = Counter(zip(train, train[1:], train[2:]))
    pairs = Counter(zip(train, train[1 : len(train) - 1]))  # pairs that have a following character
    total = 0.0
    for a, b, c in zip(held, held[1:], held[2:]):
        total -= math.log((triples.get((a, b, c), 0) + 1) / (pairs.get((a, b), 0) + vocab_size))
    return LMScore(total / (len(held) - 2), len(held) - 2)


def words(text: str) -> list[str]:
    """Space-separated words with punctuation stripped from both ends; empty results dropped."""
    stripped = (w.strip(string.punctuation + "\u201c\u201d\u2018\u2019") for w in text.split())
    return [w for w in stripped if w]


def word_hit_rate(generated: str, vocabulary: set[str]) -> tuple[float, int]:
    """(share of generated words found in `vocabulary`, number of words); (nan, 0) for no words."""
    found = words(generated)
    if not found:
        return float("nan"), 0
    return sum(w in vocabulary for w in found) / len(found), len(found)
