import pytest

from tocha import config
from tocha.errors import UserError, UserErrors


def test_defaults_are_the_embedded_recipe():
    cfg = config.load()
    assert cfg.data.name == "fashion-mnist" and cfg.model.name == "cnn"
    assert cfg.optimizer == "adamw" and cfg.lr == "auto" and cfg.epochs == 6


def test_overrides_are_typed_and_dotted():
    cfg = config.load(
        overrides=[
            "epochs=3",
            "lr=1e-3",
            "data.val_fraction=0.1",
            "model.hidden=[64,32]",
            "deterministic=true",
            "grad_clip=none",
            "data=digits",
            "model=mlp",
            "data.augment=crop,flip",
            "threads=1",
        ]
    )
    assert cfg.epochs == 3 and cfg.lr == pytest.approx(1e-3)
    assert cfg.data.val_fraction == 0.1 and cfg.model.hidden == [64, 32]
    assert cfg.deterministic is True and cfg.grad_clip is None
    assert cfg.data.name == "digits" and cfg.model.name == "mlp"
    assert cfg.data.augment == ["crop", "flip"] and cfg.threads == 1


def test_yaml_file_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: digits\nmodel:\n  name: mlp\n  hidden: [16]\nepochs: 4\nlr: 1e-2\n")
    cfg = config.load(path, ["epochs=7"])
    assert cfg.data.name == "digits" and cfg.model.hidden == [16]
    assert cfg.epochs == 7 and cfg.lr == pytest.approx(0.01)  # YAML 1.1 reads 1e-2 as a string


def test_unknown_key_has_did_you_mean():
    with pytest.raises(UserError) as info:
        config.load(overrides=["epoch=3"])
    message = str(info.value)
    assert "unknown config key 'epoch'" in message and "did you mean 'epochs'?" in message


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(UserError) as info:
        config.load(overrides=["batch_size=big"])
    message = str(info.value)
    assert "'big' is not a valid int" in message and "batch_size" in message


@pytest.mark.parametrize(
    "item, needle",
    [
        ("lr=0", "lr"),
        ("lr=-1", "lr"),
        ("batch_size=0", ">= 1"),
        ("data.val_fraction=1", "< 1.0"),
        ("precision=fp8", "auto, fp32, bf16, fp16"),
        ("optimizer=sgdm", "did you mean 'sgd'?"),
        ("data.augment=rotate", "crop, flip"),
        ("monitor=val.acuracy", "did you mean 'val.accuracy'?"),
    ],
)
def test_out_of_range_and_choices(item, needle):
    with pytest.raises(UserError) as info:
        config.load(overrides=[item])
    assert needle in str(info.value)


def test_all_errors_reported_at_once():
    with pytest.raises(UserErrors) as info:
        config.load(overrides=["epoch=3", "lr=-1", "precision=fp8"])
    assert len(info.value.errors) == 3
    text = str(info.value)
    assert "3 problems" in text and "epochs" in text and "fp8" in text


def test_yaml_syntax_error_gives_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\nmodel: [unclosed\n")
    with pytest.raises(UserError) as info:
        config.load(path)
    assert "line" in str(info.value) and "bad.yaml" in str(info.value)


def test_not_key_value():
    with pytest.raises(UserError, match="not key=value"):
        config.load(overrides=["=3"])


def test_cross_checks():
    with pytest.raises(UserError, match="needs momentum"):
        config.load(overrides=["optimizer=sgd", "nesterov=true"])
    with pytest.raises(UserError, match="data.root"):
        config.load(overrides=["data=imagefolder"])


def test_dump_round_trips(tmp_path):
    cfg = config.load(overrides=["epochs=2", "model.hidden=[8,4]", "lr=0.5", "data=digits"])
    path = tmp_path / "config.yaml"
    path.write_text(config.dump_yaml(cfg))
    assert config.load(path) == cfg


def test_help_lists_every_key():
    text = config.help_text()
    for spec in config.schema():
        assert spec.key in text
    assert "val_fraction" in text and "[auto, fp32, bf16, fp16]" in text


FLOAT_KEYS = [s.key for s in config.schema() if s.type_name.split("|")[0] == "float"]


def test_there_are_float_keys():
    assert {"lr", "momentum", "warmup_epochs", "data.val_fraction", "dist.timeout_s"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "Infinity"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_finite_floats_are_refused_naming_their_key(key, value):
    with pytest.raises(UserError) as info:
        config.load(overrides=[f"{key}={value}"])
    message = str(info.value)
    assert f"config key {key}," in message and "finite" in message
    others = [k for k in FLOAT_KEYS if k != key and f"config key {k}," in message]
    assert not others, message


def test_non_finite_floats_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("momentum: .nan\nwarmup_epochs: .inf\n")
    with pytest.raises(UserErrors) as info:
        config.load(path)
    assert len(info.value.errors) == 2
    assert "config key momentum" in str(info.value) and "config key warmup_epochs" in str(info.value)


@pytest.mark.parametrize(
    "item, needle",
    [
        ("seed=4294967296", "< 4294967296"),
        ("seed=-1", ">= 0"),
        ("seed=99999999999999999999", "seed"),
        ("image_size=4097", "<= 4096"),
        ("image_size=100000000", "image_size"),
        ("out=" + "x" * 256, "255"),
        ("out=runs/" + "y" * 300 + "/z", "255"),
        ("out=" + "/a" * 3000, "4096"),
    ],
)
def test_ranges_the_libraries_below_would_refuse_later(item, needle):
    with pytest.raises(UserError) as info:
        config.load(overrides=[item])
    message = str(info.value)
    assert needle in message and item.split("=")[0] in message and len(message) < 600


def test_edge_values_are_still_accepted():
    cfg = config.load(overrides=["seed=4294967295", "image_size=4096", "out=" + "x" * 255])
    assert cfg.seed == 2**32 - 1 and cfg.image_size == 4096


def _yaml_error(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        config.load(path)
    return str(info.value)


def test_duplicate_yaml_key_names_both_lines(tmp_path):
    message = _yaml_error(tmp_path, "epochs: 3\nlr: 0.1\nepochs: 4\n")
    assert "duplicate key 'epochs'" in message and "line 3" in message and "line 1" in message


def test_duplicate_nested_yaml_key(tmp_path):
    message = _yaml_error(tmp_path, "data:\n  name: digits\n  name: imagefolder\n")
    assert "duplicate key 'name'" in message and "line 3" in message


def test_same_key_nested_and_dotted_is_a_duplicate(tmp_path):
    message = _yaml_error(tmp_path, "data:\n  root: a\ndata.root: b\n")
    assert "data.root" in message and "twice" in message


@pytest.mark.parametrize(
    "text",
    [
        "a: &x [1]\nb: *x\n",  # any alias
        "x: &a [*a]\n",  # recursive
        "a: &a ['lol']\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",  # billion laughs
        "base: &b {epochs: 2}\nrun:\n  <<: *b\n",  # merge key
    ],
)
def test_yaml_aliases_are_refused_quickly(tmp_path, text):
    message = _yaml_error(tmp_path, text)
    assert "aliases/anchors are not supported" in message and "c.yaml" in message and "line" in message


def test_deeply_nested_yaml_is_a_clear_error(tmp_path):
    message = _yaml_error(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "c.yaml" in message and "nested" in message


def test_huge_yaml_file_is_refused(tmp_path):
    message = _yaml_error(tmp_path, "# pad\n" * 400_000)
    assert "c.yaml" in message and "MiB" in message


@pytest.mark.parametrize(
    "items, needle",
    [
        (["scheduler=cosine", "epochs=2", "warmup_epochs=2"], "as long as the whole run"),
        (["scheduler=none", "epochs=2", "warmup_epochs=3.5"], "as long as the whole run"),
        (["scheduler=onecycle", "warmup_epochs=1"], "does nothing with scheduler=onecycle"),
    ],
)
def test_impossible_warmups_are_refused_at_config_time(items, needle):
    with pytest.raises(UserError) as info:
        config.load(overrides=items)
    assert needle in str(info.value) and "warmup_epochs" in str(info.value)


def test_a_warmup_shorter_than_the_run_is_fine():
    assert config.load(overrides=["scheduler=cosine", "epochs=2", "warmup_epochs=1.5"]).warmup_epochs == 1.5


def test_control_character_in_yaml_is_a_user_error(tmp_path):
    assert "c.yaml" in _yaml_error(tmp_path, "\x1f")
