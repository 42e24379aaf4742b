"""did_you_mean: every equally close choice, a transposition counted as one edit."""

import pytest

from tocha import config
from tocha.errors import UserError, did_you_mean, edit_distance


@pytest.mark.parametrize(
    "a, b, distance",
    [
        ("modle", "model", 1),
        ("modle", "mode", 1),
        ("resnet81", "resnet18", 1),
        ("abc", "abc", 0),
        ("", "abc", 3),
        ("epoch", "epochs", 1),
        ("ca", "abc", 3),  # OSA, not full Damerau: 'ca'->'abc' is 3
        ("kitten", "sitting", 3),
    ],
)
def test_edit_distance_is_optimal_string_alignment(a, b, distance):
    assert edit_distance(a, b) == distance == edit_distance(b, a)


def test_every_equally_close_choice_is_listed():
    assert did_you_mean("modle", ["mode", "model", "monitor"]) == "did you mean 'model' or 'mode'?"
    assert did_you_mean("ab", ["abc", "abd", "abe"]) == "did you mean 'abc', 'abd' or 'abe'?"
    assert did_you_mean("epoch", ["epochs", "epochs_x"]) == "did you mean 'epochs'?"
    assert did_you_mean("zzzzzz", ["epochs", "lr"]) == ""


def test_a_dotted_key_is_found_by_its_last_part():
    assert "'data.root'" in did_you_mean("root", ["data.root", "model.name", "epochs"])


def test_unknown_config_key_lists_both_close_keys():
    with pytest.raises(UserError) as info:
        config.load(overrides=["modle=x"])
    assert "did you mean 'model' or 'mode'?" in str(info.value)


def test_transposed_value_is_suggested():
    with pytest.raises(UserError) as info:
        config.load(overrides=["optimizer=sdg"])
    assert "did you mean 'sgd'?" in str(info.value)
