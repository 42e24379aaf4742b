"""Argument checks of the `tocha` command line that need no run folder and no torch.

Bad option values and arguments in the other command style (--flag for a key=value command,
key=value for a --flag command) exit 2 with one `tocha COMMAND: error:` line that says what is
allowed or what to write instead, before anything is loaded. Most cases call `main()` in-process
(parsing is all they do); one runs the real command in a subprocess.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from tocha.cli import COMMANDS, main, parse
from tocha.cli import _common as common


def _error(capsys, argv: list[str], command: str) -> str:
    """The error line, after checking exit code 2, the prefix, and that nothing went to stdout."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err, err
    first = err.splitlines()[0]
    assert first.startswith(f"tocha {command}: error: "), err
    assert err.count("error:") == 1, err
    return first


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--epochs", "3"], "write epochs=3 (tocha train takes key=value config overrides"),
        (["train", "data=digits", "--batch-size=100"], "write batch_size=100"),
        (["train", "--model", "mlp", "epochs=1"], "write model=mlp"),  # a shorthand is a key too
        (["train", "nproc=2"], "write --nproc 2 (--nproc is an option of tocha train"),
        (["distill", "--teacher", "t", "--epochs", "2"], "write epochs=2 (tocha distill takes key=value"),
        (["distill", "--teacher", "t", "temperature=2"], "write --temperature 2"),
        (["compress", "RUN", "out=x"], "write --out x (tocha compress takes --options"),
        (["compress", "out=x"], "write --out x"),  # taken for RUN by argparse, still a wrong-style argument
        (["compress", "RUN", "max_accuracy_drop=2"], "write --max-accuracy-drop 2"),
        (["export", "RUN", "dynamic_batch=false"], "write --no-dynamic-batch"),
        (["export", "RUN", "overwrite=true"], "write --overwrite"),
        (["predict", "RUN", "top_k=5", "a.png"], "write --top-k 5"),
        (["eval", "RUN", "split=val"], "write --split val"),
        (["bench-model", "a.onnx", "batch=1"], "write --batch 1"),
    ],
)
def test_wrong_style_argument_gets_the_right_spelling(capsys, argv, expected):
    command = argv[0]
    assert expected in _error(capsys, argv, command)


def test_an_unknown_option_that_is_no_config_key_is_still_unrecognized(capsys):
    assert main(["train", "--frobnicate"]) == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_an_existing_file_with_an_equals_sign_is_an_image_not_a_setting(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "top_k=5.png").write_bytes(b"")
    args = parse(["predict", "RUN", "top_k=5.png"])
    assert args.images == ["top_k=5.png"]


def test_an_option_value_with_an_equals_sign_is_left_alone():
    assert parse(["generate", "RUN", "--prompt", "top_k=3"]).prompt == "top_k=3"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["eval", "RUN", "--batch-size", "0"], ["argument --batch-size", "at least 1, got 0"]),
        (["eval", "RUN", "--device", "tpu"], ["argument --device", "'tpu'", "auto, cpu, cuda, cuda:N, mps"]),
        (["predict", "RUN", "a.png", "--top-k", "0"], ["argument --top-k", "at least 1"]),
        (["generate", "RUN", "--temperature", "-1"], ["argument --temperature", "0 or more"]),
        (["generate", "RUN", "--top-k", "-1"], ["argument --top-k", "0 or more"]),
        (["generate", "RUN", "--length", "many"], ["argument --length", "expected a whole number, got 'many'"]),
        (["export", "RUN", "--format", "keras"], ["unknown export format 'keras'", "onnx, pt2, torchscript"]),
        (["export", "RUN", "--precision", "int4"], ["unknown precision", "fp32, fp16, bf16"]),
        (["compress", "RUN", "--prune", "1.0"], ["argument --prune", "out of range", "between 0 and 1"]),
        (["compress", "RUN", "--prune-scope", "local"], ["argument --prune-scope", "uniform, global"]),
        (["compress", "RUN", "--max-accuracy-drop", "101"], ["out of range", "0 to 100"]),
        (["compress", "RUN", "--finetune-epochs", "-1"], ["argument --finetune-epochs", "0 or more"]),
        (["compress", "RUN", "--quantize", "int4"], ["unknown quantization", "int8, int8-dynamic, none"]),
        (["distill", "--teacher", "t", "--temperature", "0"], ["argument --temperature", "positive"]),
        (["distill", "--teacher", "t", "--alpha", "1.5"], ["argument --alpha", "between 0 and 1"]),
        (["bench-model", "a.onnx", "--batch", "1,x"], ["argument --batch", "batch sizes", "e.g. --batch 1,64"]),
        (["bench-model", "a.onnx", "--runtime", "tensorrt"], ["unknown runtime 'tensorrt'", "torch, ort"]),
        (["bench", "--target", "2"], ["argument --target", "between 0 and 1"]),
        (["eval", "RUN", "--split", "dev"], ["argument --split", "invalid choice"]),  # argparse's own choices=
    ],
)
def test_bad_option_value_exits_2_and_says_what_is_allowed(capsys, argv, words):
    message = _error(capsys, argv, argv[0])
    for word in words:
        assert word in message, message


def test_custom_types_raise_argument_type_errors_that_say_what_is_allowed():
    for check, text, words in (
        (common.positive_int, "0", "at least 1"),
        (common.non_negative_int, "x", "whole"),
        (common.positive_float, "0", "greater than 0"),
        (common.fraction, "1.5", "0 and 1"),
        (common.device, "gpu", "cuda:N"),
        (common.one_of("thing", ("a", "b")), "c", "a, b"),
        (common.in_range(0, 1, high_open=True, allowed="[0, 1)"), "1", "[0, 1)"),
        (common.list_of("sizes", common.positive_int, "1,2"), ",", "e.g. 1,2"),
    ):
        with pytest.raises(argparse.ArgumentTypeError) as caught:
            check(text)
        assert words in str(caught.value), (check, str(caught.value))
    assert common.device("cuda:1") == "cuda:1"
    assert common.list_of("sizes", common.positive_int, "1,2")("1, 64") == [1, 64]


def test_distill_takes_key_value_settings_between_flags():
    args = parse(
        ["distill", "--teacher", "t", "model=mlp", "--alpha", "0.5", "epochs=3", "--cache", "false", "out=runs/kd"]
    )
    assert args.args == ["model=mlp", "epochs=3", "out=runs/kd"]
    assert (args.alpha, args.cache, args.teacher) == (0.5, "false", "t")


def test_train_still_takes_key_value_after_an_option():
    args = parse(["train", "data=digits", "--nproc", "2", "out=runs/x"])
    assert args.args == ["data=digits", "out=runs/x"] and args.nproc == 2


def test_every_command_module_has_the_same_shape():
    for name, module in COMMANDS.items():
        assert callable(module.add_parser) and callable(module.run), name


def test_cli_choices_match_the_library_names():
    """The command modules repeat a few name lists so that parsing needs no torch; they must not drift."""
    from tocha.cli import bench_model, compress, export
    from tocha.deploy import compress as lib_compress
    from tocha.deploy import export as lib_export
    from tocha.deploy import measure, prune

    assert export.FORMATS == tuple(lib_export.FORMATS) and export.PRECISIONS == lib_export.PRECISIONS
    assert (compress.QUANTIZE, compress.CALIBRATION) == (lib_compress.QUANTIZE, lib_compress.CALIBRATION)
    assert (compress.PRUNE_METHODS, compress.PRUNE_TARGETS, compress.PRUNE_SCOPES) == (
        prune.METHODS,
        prune.TARGETS,
        prune.SCOPES,
    )
    assert bench_model.RUNTIMES == measure.RUNTIMES


def test_hint_as_a_user_sees_it(tmp_path):
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.run(
        [sys.executable, "-m", "tocha.cli", "train", "--epochs", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(
        "tocha train: error: '--epochs 3': write epochs=3 (tocha train takes key=value config overrides"
    ), proc.stderr
    assert "usage: tocha train" in proc.stderr
    assert list(tmp_path.iterdir()) == []
