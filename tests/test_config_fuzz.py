"""Config parsing never raises anything but a UserError, whatever the file or the overrides hold."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tocha import config
from tocha.errors import UserError

KEYS = [spec.key for spec in config.schema()] + ["epoch", "data", "model", "", "a.b.c", "data.nope"]
VALUES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["auto", "none", "true", "[1,2]", "-1", "0", "1e9", "nan", "inf", "{a: 1}", "[", "'x"]),
    st.integers().map(str),
    st.floats(allow_nan=True).map(str),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=6))
def test_overrides_never_raise_anything_else(pairs):
    try:
        cfg = config.load(overrides=[f"{k}={v}" for k, v in pairs])
    except UserError:
        return
    assert isinstance(cfg, config.TrainConfig)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=200))
def test_any_yaml_text_is_a_config_or_a_user_error(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        config.load(path)
    except UserError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS + ["name", "root"]), inner, max_size=3)
        ),
        max_leaves=8,
    )
)
def test_api_values_of_any_shape_are_checked(values):
    try:
        config.load(values=values if isinstance(values, dict) else {"epochs": values})
    except UserError:
        pass
