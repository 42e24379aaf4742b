"""bits-per-char, perplexity, the add-one 3-gram baseline (hand-computed) and the word-hit rate."""

import math

import pytest

from tocha.metrics.text import LMScore, trigram_add_one, word_hit_rate, words


def test_bpc_and_perplexity_from_nats():
    s = LMScore(math.log(4), 10)
    assert s.bpc == pytest.approx(2.0) and s.perplexity == pytest.approx(4.0)
    assert s.flat("val") == {
        "val.loss": pytest.approx(math.log(4)),
        "val.bpc": pytest.approx(2.0),
        "val.perplexity": pytest.approx(4.0),
    }


def test_trigram_add_one_matches_a_hand_computation():
    # ids: a=1, b=2; V = 3 (unknown slot, a, b). Training "aaba": triples aab, aba; pairs (with a next) aa, ab.
    train, held = [1, 1, 2, 1], [1, 1, 2, 2]
    # held-out triples: (a a -> b): (1 + 1) / (1 + 3) = 1/2 ; (a b -> b): (0 + 1) / (1 + 3) = 1/4
    expected_nats = -(math.log(1 / 2) + math.log(1 / 4)) / 2
    score = trigram_add_one(train, held, vocab_size=3)
    assert score.chars == 2
    assert score.nats_per_char == pytest.approx(expected_nats)
    assert score.bpc == pytest.approx(1.5)  # (1 + 2) / 2 bits


def test_unseen_context_is_uniform():
    score = trigram_add_one([1, 1, 1], [2, 2, 2], vocab_size=8)
    assert score.bpc == pytest.approx(3.0)  # log2(8): no counts, add-one gives 1/V


def test_word_hit_rate_strips_punctuation_and_splits_on_spaces():
    assert words('He said: "no!"  -- fine.') == ["He", "said", "no", "fine"]
    rate, n = word_hit_rate("the cat, the dgo.", {"the", "cat", "dog"})
    assert n == 4 and rate == pytest.approx(0.75)
    assert math.isnan(word_hit_rate("  ...  ", {"x"})[0])
