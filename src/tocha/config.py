"""Typed training configuration: YAML file + ``key=value`` overrides, strict validation.

Config stops here (STYLE habit 3): the recipe reads a :class:`TrainConfig` and passes plain
values down; the engine never sees this object. This module must stay import-light (no torch)
because ``tocha train --help`` renders its schema.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tocha.data import DATASETS, TEXT_DATASETS
from tocha.errors import UserError, UserErrors, did_you_mean
from tocha.paths import length_problem, shown
from tocha.tasks import TASKS

AUTO = "auto"
# 4096 x 4096 RGB is 48 MiB per uint8 image: beyond it a typo (an extra digit), not a real size.
MAX_IMAGE_SIZE = 4096
# Config keys that hold paths: their names must fit the OS limits (checked without touching the files).
PATH_KEYS = ("out", "data.root", "data.path", "model.weights")


def opt(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    auto: bool = False,
) -> Any:
    """A config field with its help text and limits; ``auto=True`` also accepts the string 'auto'."""
    meta = dict(help=help, choices=choices, min=min, max=max, min_open=min_open, max_open=max_open, auto=auto)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    name: str = opt("fashion-mnist", "dataset (registry name)", choices=(*DATASETS, *TEXT_DATASETS))
    root: str | None = opt(None, "folder with the data files; none = the dataset's standard place")
    download: bool = opt(False, "allow downloading the dataset (needs network); never done otherwise")
    val_fraction: float = opt(
        0.2, "share of the training split held out for validation (stratified, seeded)", min=0.0, max=1.0, max_open=True
    )
    augment: list[str] | str = opt(
        AUTO,
        "training augmentation, batched on the device; auto = the dataset's "
        "usual choice for conv nets (fashion-mnist: flip; imagefolder: crop,flip), "
        "none for digits and for mlp; erase = random erasing (per image, with p 0.5 a box of 2-33% of "
        "the area set to the mean)",
        choices=("crop", "flip", "erase"),
        auto=True,
    )
    crop_padding: int = opt(2, "pixels of zero padding for the random crop", min=0)
    channels: str = opt(AUTO, "image channels fed to the model", choices=(AUTO, "1", "3"))
    on_bad_file: str = opt("error", "what to do with an unreadable image file", choices=("error", "skip"))
    workers: int | str = opt(AUTO, "DataLoader worker processes (file datasets)", min=0, auto=True)
    resident: bool | str = opt(
        AUTO,
        "hold the data as tensors on the training device, batches as index slices "
        "(auto = when it fits the memory budget; false = always a DataLoader)",
        auto=True,
    )
    path: str | None = opt(
        None,
        "data=text: a UTF-8 text file or a folder of them (none = the English files of "
        "the Debian package fortunes); data=csv: the CSV file",
    )
    target: str | None = opt(
        None,
        "data=csv: the column to predict (a number for task=regress, a class for "
        "task=classify); every other column is a numeric feature",
    )


@dataclass
class ModelConfig:
    name: str = opt(
        "cnn",
        "model: cnn, mlp, resnet18, mobilenet_v3_small, vgg11_bn, any torchvision "
        "classifier name, or package.module:function; task=charlm: lstm, gru",
    )
    hidden: list[int] = opt([32], "mlp hidden layer sizes; lstm/gru: the state size (one value)", min=1)
    layers: int = opt(2, "lstm/gru: stacked recurrent layers", min=1)
    tie_weights: bool = opt(False, "lstm/gru: the output layer reuses the embedding matrix")
    width: int = opt(16, "cnn channels of the first conv layer (then 2x, 2x)", min=1)
    bn_momentum: float = opt(
        0.1,
        "BatchNorm momentum of cnn and torchvision models: the weight of each batch in the running "
        "statistics used at evaluation (PyTorch's default 0.1, also for models such as MobileNetV3 that "
        "set 0.01 for long ImageNet runs; larger follows the last weights faster in a short run)",
        min=0.0,
        max=1.0,
        min_open=True,
    )
    whiten: bool = opt(
        False,
        "image models: set the first conv layer's filters to the whitening directions of the training "
        "images' patches (eigenvectors of their covariance, both signs) and keep them fixed",
    )
    dropout: float | str = opt(
        AUTO,
        "dropout before the classifier (auto: 0.25 for cnn, 0 for mlp)",
        min=0.0,
        max=1.0,
        max_open=True,
        auto=True,
    )
    weights: str | None = opt(
        None,
        "weights to start from: a torchvision-format state dict (.pt/.pth), a "
        ".safetensors file or a tocha run folder; the head is replaced when it does not fit, "
        "a first conv of another channel count adapted",
    )
    freeze: list[str] = opt(
        [],
        "parameters not trained: backbone (all but the last Linear layer), none, or "
        "module prefixes, e.g. [conv1,layer1]; BatchNorm there stays in eval mode",
    )


@dataclass
class LogConfig:
    tensorboard: bool | str = opt(
        AUTO, "write TensorBoard event files (auto = when tensorboard is installed)", auto=True
    )
    csv: bool = opt(True, "write metrics.csv beside metrics.jsonl")
    progress: bool = opt(True, "show progress: a bar on a terminal, one line per epoch otherwise")


@dataclass
class CheckpointConfig:
    every_steps: int = opt(
        0, "also write a resumable checkpoint every N optimizer steps (0 = at epoch ends only)", min=0
    )
    keep: int = opt(2, "resumable checkpoints kept in checkpoints/ (the newest ones)", min=1)


@dataclass
class EarlyStopConfig:
    patience: int = opt(
        0,
        "stop after this many evaluations without improving the monitored metric "
        "by more than min_delta (0 = never stop early)",
        min=0,
    )
    min_delta: float = opt(0.0, "smallest change of the monitored metric that counts as an improvement", min=0.0)


@dataclass
class DistConfig:
    backend: str = opt(
        "auto",
        "process-group backend when several processes train (auto: nccl on CUDA, gloo on CPU)",
        choices=("auto", "nccl", "gloo"),
    )
    timeout_s: float = opt(
        300.0,
        "seconds a collective may wait for the other processes before the run stops "
        "with an error (a dead or stuck rank never hangs the others forever)",
        min=0.0,
        min_open=True,
    )
    sync_batchnorm: bool = opt(
        False, "SyncBatchNorm: batch statistics over all processes (CUDA only; for small per-device batches)"
    )


@dataclass
class TrainConfig:
    task: str = opt(
        "classify",
        "what to learn: "
        + "; ".join(f"{t.name} ({t.help})" for t in TASKS.values())
        + " (a task sets the defaults listed under TASK DEFAULTS)",
        choices=tuple(TASKS),
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    image_size: int | str = opt(
        AUTO, "square input size in pixels (auto = the dataset's own)", min=1, max=MAX_IMAGE_SIZE, auto=True
    )
    epochs: int = opt(6, "passes over the training split", min=1)
    time_budget_s: float = opt(
        0.0,
        "seconds of training (summary.json's train_seconds: the steps, not validation) the run "
        "should fit in: tocha runs as many of `epochs` as fit here, planned from 40 steps of a copy "
        "of the model and again after every epoch, the schedule sized to them (0 = off: all epochs)",
        min=0.0,
    )
    max_steps: int = opt(
        0, "stop after this many optimizer steps, the schedule sized to them (0 = all epochs; a smoke test)", min=0
    )
    limit_val_batches: int = opt(0, "evaluate on the first N validation batches only (0 = all)", min=0)
    batch_size: int = opt(
        128,
        "global batch: samples per forward pass over all processes together (each of N "
        "processes takes batch_size/N); an optimizer step sees batch_size x grad_accum_steps",
        min=1,
    )
    grad_accum_steps: int = opt(1, "micro-batches accumulated per optimizer step", min=1)
    optimizer: str = opt(
        "adamw",
        "optimizer (adam: weight decay added to the gradient, as torch.optim.Adam)",
        choices=("adamw", "adam", "sgd"),
    )
    lr: float | str = opt(
        AUTO, "peak learning rate (auto: 3e-3 for adamw and adam, 0.1 for sgd)", min=0.0, min_open=True, auto=True
    )
    momentum: float = opt(0.0, "SGD momentum (0 = plain SGD, as in PyTorch)", min=0.0, max=1.0, max_open=True)
    nesterov: bool = opt(False, "SGD Nesterov momentum (needs momentum > 0)")
    weight_decay: float = opt(5e-4, "weight decay (decoupled for adamw)", min=0.0)
    scheduler: str = opt(
        "onecycle",
        "learning-rate schedule, stepped every optimizer step",
        choices=("none", "cosine", "onecycle", "step"),
    )
    warmup_epochs: float = opt(0.0, "linear warm-up length for none/cosine/step schedules", min=0.0)
    step_epochs: int = opt(2, "step schedule: epochs between lr drops", min=1)
    step_gamma: float = opt(0.1, "step schedule: lr multiplier at each drop", min=0.0, min_open=True)
    loss: str = opt(
        AUTO,
        "training loss: auto (cross-entropy to classify, MSE to regress); task=regress also "
        "takes huber (less pulled by outliers)",
        choices=(AUTO, "mse", "huber"),
    )
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing", min=0.0, max=1.0, max_open=True)
    ema: float | None = opt(
        None,
        "decay of an exponential moving average of the weights (e.g. 0.99; none = off): evaluation, "
        "the best checkpoint and the final scores use the average; one extra update per step",
        min=0.0,
        max=1.0,
        min_open=True,
        max_open=True,
    )
    ema_start: int = opt(
        0, "optimizer steps before the weight average starts (until then it copies the weights)", min=0
    )
    tta: str = opt(
        "none",
        "test-time augmentation at evaluation during training (val selection, the final val/test "
        "scores): flip = logits averaged over the image and its mirror image; recorded in meta.json, "
        "not applied by tocha eval, predict or export",
        choices=("none", "flip"),
    )
    preset: str = opt(
        "none",
        "a recipe: a set of defaults (listed under PRESETS) that any key given overrides, key by key",
        choices=("none", "fast", "best"),
    )
    grad_clip: float | None = opt(None, "clip the gradient norm to this value (none = off)", min=0.0, min_open=True)
    precision: str = opt(
        AUTO, "numeric precision (auto: bf16 on CUDA with bf16, else fp32)", choices=(AUTO, "fp32", "bf16", "fp16")
    )
    device: str = opt(AUTO, "device: auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    threads: int | str = opt(
        AUTO,
        "CPU threads for torch (auto = the fastest count in a short measurement on CPU, every usable core otherwise)",
        min=1,
        auto=True,
    )
    compile: bool = opt(False, "torch.compile the model (falls back to eager, with a message, if it fails)")
    seed: int = opt(0, "random seed for splits, initialisation and data order", min=0, max=2**32, max_open=True)
    deterministic: bool = opt(False, "use deterministic algorithms (slower on CUDA)")
    monitor: str = opt(
        "val.accuracy", "metric that picks the best checkpoint, e.g. val.accuracy, val.loss, val.f1_macro"
    )
    mode: str = opt(
        AUTO, "whether the monitored metric should go up or down (auto: min for losses)", choices=(AUTO, "max", "min")
    )
    log_every: int = opt(50, "optimizer steps between reads of the running loss (one host sync each)", min=1)
    eval_every_steps: int = opt(0, "also evaluate every N optimizer steps (0 = once per epoch)", min=0)
    top_k: int = opt(5, "k for the top-k accuracy metric", min=1)
    out: str | None = opt(None, "run folder (none = runs/<data>-<model>-<time>)")
    resume: str = opt(
        "none", "auto = continue from the newest valid checkpoint in `out` when there is one", choices=("none", "auto")
    )
    on_nonfinite: str = opt(
        "stop",
        "a NaN/Inf loss: stop (found at the next log read, no per-step sync) or skip "
        "that batch (checks every step: one host sync per step)",
        choices=("stop", "skip"),
    )
    overwrite: bool = opt(False, "allow writing into an existing run folder")
    unfreeze_at_epoch: int = opt(
        0, "with model.freeze: the first epoch (counting from 1) that trains everything; 0 = stay frozen", min=0
    )
    lr_backbone: float | str = opt(
        AUTO,
        "learning rate of the backbone (all but the head) when model.freeze or "
        "model.weights is set (auto = lr / 10 with model.weights, else lr)",
        min=0.0,
        min_open=True,
        auto=True,
    )
    seq_len: int = opt(128, "task=charlm: characters per training window", min=1)
    tbptt: bool = opt(
        False,
        "task=charlm: carry the hidden state across consecutive windows (truncated BPTT); "
        "batches then hold contiguous streams instead of shuffled windows",
    )
    sample_chars: int = opt(300, "task=charlm: characters generated at each evaluation (samples.txt, report)", min=0)


DEFAULT_LR = {"adamw": 3e-3, "adam": 3e-3, "sgd": 0.1}

# Recipes for classify on image data (issue 17; measured in BENCHMARKS.md). Applied like task
# defaults: a key given in a file, an option or on the command line wins.
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "fast": {  # measured in BENCHMARKS.md, "Recipes": whitening and the higher lr each pay beyond the spread
        "epochs": 2,
        "batch_size": 256,
        "lr": 0.009,
        "model.whiten": True,
        "label_smoothing": 0.1,
        "model.bn_momentum": 0.2,
        "tta": "flip",
    },
    "best": {  # BENCHMARKS.md, "Recipes": whitening with lr 0.006 is faster beyond the spread, not worse
        # As many epochs as this machine trains in 170 s (16 took 95 s and 187 s on two 2-core CPUs),
        # up to 30: accuracy still rose from 16 to 26 epochs (BENCHMARKS.md).
        "epochs": 30,
        "time_budget_s": 170.0,
        "model.width": 24,
        "model.whiten": True,
        "lr": 0.006,
        "label_smoothing": 0.1,
        "data.augment": ["flip", "crop"],
        "ema": 0.998,
        "ema_start": 500,
        "tta": "flip",
    },
}

# Defaults that differ by task (the registry holds them); a key given in a file, an option or on the
# command line wins.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {name: t.defaults for name, t in TASKS.items() if t.defaults}

SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "log": LogConfig,
    "checkpoint": CheckpointConfig,
    "early_stop": EarlyStopConfig,
    "dist": DistConfig,
}
# `data=digits` and `model=mlp` name the section's main entry.
SHORTHANDS = {"data": "data.name", "model": "model.name"}


@dataclass(frozen=True)
class KeySpec:
    key: str  # dotted, e.g. "data.val_fraction"
    type_name: str  # "int", "float", "bool", "str", "list[int]", ... ("|auto", "|none" appended)
    default: Any
    help: str
    choices: tuple | None
    meta: dict


def _fields(cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def _resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def schema() -> list[KeySpec]:
    """Every config key, in declaration order: the single source for help text and validation."""
    specs: list[KeySpec] = []
    for cls, prefix in [(TrainConfig, "")] + [(c, f"{n}.") for n, c in SECTIONS.items()]:
        hints = _resolved_hints(cls)
        for f in _fields(cls):
            if f.name in SECTIONS and cls is TrainConfig:
                continue
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            specs.append(
                KeySpec(
                    prefix + f.name,
                    _type_name(hints[f.name], f.metadata),
                    default,
                    f.metadata["help"],
                    f.metadata["choices"],
                    dict(f.metadata),
                )
            )
    return specs


def _type_name(hint: Any, meta: dict) -> str:
    base, optional = _base_type(hint, meta)
    name = {int: "int", float: "float", bool: "bool", str: "str"}.get(base, None)
    if name is None:
        name = f"list[{typing.get_args(base)[0].__name__}]"
    if meta.get("auto") and base is not str:
        name += "|auto"
    if optional:
        name += "|none"
    return name


def _base_type(hint: Any, meta: dict) -> tuple[Any, bool]:
    """(the value type, whether None is allowed), ignoring the `str` that only stands for 'auto'."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if meta.get("auto") and len(args) > 1:
            args = [a for a in args if a is not str]
        return args[0], optional
    return hint, False


# ---------------------------------------------------------------- parsing


def load(
    path: str | Path | None = None, overrides: list[str] | None = None, values: dict[str, Any] | None = None
) -> TrainConfig:
    """Build a validated config from an optional YAML file, ``key=value`` strings and/or a dict.

    Later sources win: file, then ``values`` (Python API options), then ``overrides`` (CLI).
    All problems are collected and raised together as one :class:`UserErrors`.
    """
    raw: dict[str, tuple[Any, str]] = {}  # dotted key -> (value, where it came from)
    errors: list[UserError] = []
    if path is not None:
        for key, value in _flatten(_read_yaml(Path(path)), where=str(path)).items():
            raw[key] = (value, f"in {path}")
    for key, value in _flatten(values or {}).items():
        raw[key] = (value, "option")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            errors.append(
                UserError(
                    f"argument '{item}' is not key=value",
                    fix="write overrides as key=value, e.g. epochs=5 or data.root=/path",
                )
            )
            continue
        raw[SHORTHANDS.get(key.strip(), key.strip())] = (value.strip(), "command line")
    task = str(raw.get("task", ("classify", ""))[0]).strip()
    preset = str(raw.get("preset", ("none", ""))[0]).strip()
    for key, value in PRESETS.get(preset, {}).items():
        raw.setdefault(key, (value, f"preset={preset}"))
    for key, value in TASK_DEFAULTS.get(task, {}).items():
        raw.setdefault(key, (value, f"task={task} default"))
    return _build(raw, errors)


MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; more is the wrong file


def _read_yaml(path: Path) -> dict:
    import yaml  # only when a file is given

    from tocha.paths import require_file

    path = require_file(path, "tocha train CONFIG_FILE", expected="a YAML config file")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UserError(
            f"config file '{shown(path)}' is {size / 2**20:.1f} MiB",
            where="tocha train CONFIG_FILE",
            allowed=f"config files up to {MAX_CONFIG_BYTES / 2**20:.0f} MiB",
            fix="pass the YAML config file (a few key: value lines), not a data file",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"config file '{path}' is not UTF-8 text", fix="pass a YAML file") from None
    loader = None
    try:
        loader = _config_loader()(text)  # the reader already refuses control characters here
        loader.config_path = path
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(
            f"YAML syntax error: {problem}",
            where=where,
            fix="fix the file (YAML uses 'key: value', two-space indentation)",
        ) from None
    except RecursionError:
        raise UserError(
            "the YAML is nested too deeply",
            where=str(path),
            fix="a tocha config is a mapping of keys, at most two levels deep (e.g. data: {root: x})",
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config file '{path}' must hold a mapping of keys to values, not {type(data).__name__}",
            fix="write it as 'key: value' lines",
        )
    return data


def _config_loader() -> type:
    """yaml.SafeLoader that refuses duplicate keys and anchors/aliases (built lazily: yaml is imported late).

    Aliases are refused outright rather than counted: a config is a handful of keys, and refusing them
    is what makes recursive aliases and alias bombs (billion laughs) fail at once instead of blowing
    up memory or the stack."""
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        config_path: Path = Path("?")

        def _where(self, mark: yaml.Mark) -> str:
            return f"{self.config_path}, line {mark.line + 1}, column {mark.column + 1}"

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise UserError(
                    "YAML aliases/anchors are not supported in tocha configs",
                    where=self._where(event.start_mark),
                    fix="write the value out in full where it is needed (no &name or *name)",
                )
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, yaml.Mark] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        first = seen.setdefault(key, key_node.start_mark)
                    except TypeError:  # an unhashable key: the base class reports it
                        continue
                    if first is not key_node.start_mark:
                        raise UserError(
                            f"duplicate key '{key}' (first on line {first.line + 1})",
                            where=self._where(key_node.start_mark),
                            fix="keep one of them (YAML would silently use the last)",
                        )
            return super().construct_mapping(node, deep=deep)

    return ConfigLoader


def _flatten(tree: dict, prefix: str = "", where: str = "options") -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if key in flat:
            raise UserError(
                f"config key '{key}' is given twice (nested and dotted)", where=where, fix="keep one of them"
            )
        flat[key] = value

    for key, value in tree.items():
        key = str(key)
        if not prefix and key in SHORTHANDS and not isinstance(value, dict):
            put(SHORTHANDS[key], value)
        elif isinstance(value, dict):
            for k, v in _flatten(value, f"{prefix}{key}.", where).items():
                put(k, v)
        else:
            put(prefix + key, value)
    return flat


def _build(raw: dict[str, tuple[Any, str]], errors: list[UserError]) -> TrainConfig:
    specs = {s.key: s for s in schema()}
    sections = {name: {} for name in SECTIONS}
    top: dict[str, Any] = {}
    for key, (value, source) in raw.items():
        spec = specs.get(key)
        if spec is None:
            hint = did_you_mean(key, [*specs, *SHORTHANDS]) or "run 'tocha train --help' for the list of keys."
            errors.append(UserError(f"unknown config key '{key}'", where=source, fix=hint))
            continue
        try:
            parsed = _coerce(spec, value)
            _check(spec, parsed)
        except UserError as err:
            errors.append(UserError(err.what, where=f"config key {key}, {source}", allowed=err.allowed, fix=err.fix))
            continue
        head, _, tail = key.partition(".")
        if tail:
            sections[head][tail] = parsed
        else:
            top[key] = parsed
    cfg = TrainConfig(**top, **{name: SECTIONS[name](**vals) for name, vals in sections.items()})
    errors.extend(_cross_checks(cfg))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise UserErrors(errors)
    return cfg


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(spec: KeySpec, value: Any) -> Any:
    hint = _resolved_hints(TrainConfig if "." not in spec.key else SECTIONS[spec.key.split(".")[0]])
    base, optional = _base_type(hint[spec.key.rsplit(".", 1)[-1]], spec.meta)
    text = value.strip() if isinstance(value, str) else None
    if text is not None and text.lower() in {"none", "null", "~"} and optional:
        return None
    if value is None:
        if optional:
            return None
        raise UserError("value must not be empty", allowed=spec.type_name)
    if spec.meta.get("auto") and text is not None and text.lower() == AUTO:
        return AUTO
    bad = UserError(f"'{shown(value)}' is not a valid {spec.type_name}", allowed=_allowed(spec))
    if base is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise bad
    if base in (int, float):
        if isinstance(value, bool) or (base is int and isinstance(value, float) and not value.is_integer()):
            raise bad
        try:
            number = base(value) if text is None else base(text)
        except (TypeError, ValueError, OverflowError):
            raise bad from None
        if base is float and not math.isfinite(number):
            raise UserError(
                f"{number} is not a finite number",
                allowed=_allowed(spec),
                fix="give a finite number (nan and inf are not allowed)",
            )
        return number
    if base is str:
        if isinstance(value, (dict, list)):
            raise bad
        return str(value)
    # list[...]: a YAML list, "[a, b]" or "a,b"; "none"/"[]"/"" is an empty list
    item_type = typing.get_args(base)[0]
    if isinstance(value, list):
        items = value
    elif text is not None:
        text = text.strip("[]() ")
        items = [] if text.lower() in {"", "none"} else [t.strip().strip("'\"") for t in text.split(",")]
    else:
        items = [value]
    try:
        return [item_type(i) if not isinstance(i, bool) else _raise(bad) for i in items]
    except (TypeError, ValueError):
        raise bad from None


def _raise(err: Exception) -> Any:
    raise err


def _allowed(spec: KeySpec) -> str:
    parts = []
    if spec.choices:
        parts.append(", ".join(map(str, spec.choices)))
    m = spec.meta
    if m["min"] is not None:
        parts.append(f"{'>' if m['min_open'] else '>='} {m['min']}")
    if m["max"] is not None:
        parts.append(f"{'<' if m['max_open'] else '<='} {m['max']}")
    if not parts:
        parts.append(spec.type_name)
    elif m.get("auto"):
        parts.append("auto")
    return "; ".join(parts) if not spec.choices else " ".join(parts)


def _check(spec: KeySpec, value: Any) -> None:
    if value is None or value == AUTO and spec.meta.get("auto"):
        return
    items = value if isinstance(value, list) else [value]
    for item in items:
        if spec.choices and item not in spec.choices:
            close = did_you_mean(str(item), map(str, spec.choices))
            raise UserError(f"'{item}' is not allowed", allowed=", ".join(map(str, spec.choices)), fix=close or None)
        m = spec.meta
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            low_bad = m["min"] is not None and (item <= m["min"] if m["min_open"] else item < m["min"])
            high_bad = m["max"] is not None and (item >= m["max"] if m["max_open"] else item > m["max"])
            if low_bad or high_bad:
                raise UserError(f"{item} is out of range", allowed=_allowed(spec))


def _task_checks(cfg: TrainConfig) -> list[UserError]:
    """What the task learns from: its data names and models (text models for text, image models otherwise)."""
    from tocha.models import TEXT_MODELS, check_model_name  # imports torchvision only for names outside the registry

    task, errors = TASKS[cfg.task], []
    text_task = task.data == ("text",)
    if task.data is not None and cfg.data.name not in task.data:
        fix = (
            "use data=text data.path=FILE_OR_FOLDER"
            if text_task
            else "use " + " or ".join(f"data={d}" for d in task.data)
        )
        errors.append(
            UserError(
                f"task={cfg.task} learns from {'text' if text_task else ', '.join(task.data)}, "
                f"not data={cfg.data.name}",
                where="config keys task, data.name",
                fix=fix,
            )
        )
    users = [t.name for t in TASKS.values() if t.data and cfg.data.name in t.data]
    if task.data is None and users and cfg.data.name not in DATASETS:
        errors.append(
            UserError(
                f"data={cfg.data.name} is for task={' or task='.join(users)}",
                where="config keys data.name, task",
                fix=f"add task={users[0]}",
            )
        )
    if text_task:
        if cfg.model.name not in TEXT_MODELS:
            errors.append(
                UserError(
                    f"model '{cfg.model.name}' is not a text model",
                    where="config key model.name",
                    allowed=", ".join(TEXT_MODELS),
                    fix=did_you_mean(cfg.model.name, TEXT_MODELS) or "use model=lstm",
                )
            )
        if len(cfg.model.hidden) != 1:
            errors.append(
                UserError(
                    f"model.hidden={cfg.model.hidden} gives several sizes; a {cfg.model.name} has one state size",
                    where="config key model.hidden",
                    fix="e.g. model.hidden=512",
                )
            )
        if cfg.data.val_fraction == 0:
            errors.append(
                UserError(
                    f"task={cfg.task} needs a validation split",
                    where="config key data.val_fraction",
                    fix="use data.val_fraction=0.1 (the default for text)",
                )
            )
    elif cfg.model.name in TEXT_MODELS:
        errors.append(
            UserError(
                f"model={cfg.model.name} is a text model",
                where="config keys model.name, task",
                fix="add task=charlm, or choose an image model",
            )
        )
    elif (model_error := check_model_name(cfg.model.name)) is not None:
        errors.append(model_error)
    return errors


def _cross_checks(cfg: TrainConfig) -> list[UserError]:
    errors = []
    for key in PATH_KEYS:
        head, _, tail = key.rpartition(".")
        value = getattr(getattr(cfg, head) if head else cfg, tail)
        if isinstance(value, str) and (problem := length_problem(value, f"config key {key}")) is not None:
            errors.append(problem)
    prefix, _, metric = cfg.monitor.partition(".")
    produced = TASKS[cfg.task].metrics(cfg)
    if prefix not in ("val", "train") or metric not in (produced if prefix == "val" else ("loss", "accuracy")):
        known = [f"val.{m}" for m in produced] + ["train.loss"]
        errors.append(
            UserError(
                f"task={cfg.task} does not produce the metric '{cfg.monitor}'",
                where="config key monitor",
                allowed=", ".join(known),
                fix=did_you_mean(cfg.monitor, known) or None,
            )
        )
    if prefix == "val" and cfg.data.val_fraction == 0 and cfg.data.name != "tensors":
        errors.append(
            UserError(
                "monitor is a validation metric but data.val_fraction=0 leaves no validation split",
                where="config keys monitor, data.val_fraction",
                fix="set data.val_fraction above 0, or monitor=train.loss",
            )
        )
    if cfg.loss != AUTO and cfg.task != "regress":
        errors.append(
            UserError(
                f"loss={cfg.loss} is a regression loss; task={cfg.task} trains with its own",
                where="config key loss",
                fix="drop loss=, or use task=regress",
            )
        )
    if cfg.data.name == "csv" and not (cfg.data.path and cfg.data.target):
        errors.append(
            UserError(
                "data=csv needs a file and a target column",
                where="config keys data.path, data.target",
                fix="pass data.path=FILE.csv data.target=COLUMN",
            )
        )
    if cfg.data.name == "imagefolder" and not cfg.data.root:
        errors.append(
            UserError(
                "data=imagefolder needs a folder",
                where="config key data.root",
                fix="pass data.root=PATH/TO/FOLDERS (one sub-folder per class)",
            )
        )

    errors += _task_checks(cfg)
    if cfg.unfreeze_at_epoch and not cfg.model.freeze:
        errors.append(
            UserError(
                f"unfreeze_at_epoch={cfg.unfreeze_at_epoch} has nothing to unfreeze",
                where="config keys unfreeze_at_epoch, model.freeze",
                fix="add model.freeze=backbone",
            )
        )
    if cfg.unfreeze_at_epoch > cfg.epochs:
        errors.append(
            UserError(
                f"unfreeze_at_epoch={cfg.unfreeze_at_epoch} comes after the last epoch ({cfg.epochs})",
                where="config keys unfreeze_at_epoch, epochs",
                fix=f"use unfreeze_at_epoch between 2 and {cfg.epochs}, or 0 to stay frozen",
            )
        )
    if "backbone" in cfg.model.freeze and len(cfg.model.freeze) > 1:
        errors.append(
            UserError(
                "model.freeze=backbone cannot be combined with module prefixes",
                where="config key model.freeze",
                fix="use backbone alone, or list prefixes only",
            )
        )
    if cfg.warmup_epochs and cfg.scheduler == "onecycle":
        errors.append(
            UserError(
                "warmup_epochs does nothing with scheduler=onecycle (it has its own warm-up phase)",
                where="config keys warmup_epochs, scheduler",
                fix="drop warmup_epochs, or use scheduler=cosine (or none, step) with it",
            )
        )
    elif cfg.warmup_epochs >= cfg.epochs:
        errors.append(
            UserError(
                f"the warm-up (warmup_epochs={cfg.warmup_epochs:g}) is as long as the whole run or "
                f"longer (epochs={cfg.epochs})",
                where="config keys warmup_epochs, epochs",
                fix=f"use warmup_epochs below {cfg.epochs}, or more epochs",
            )
        )
    if cfg.preset != "none" and cfg.task != "classify":
        errors.append(
            UserError(
                f"preset={cfg.preset} is a recipe for task=classify, not task={cfg.task}",
                where="config keys preset, task",
                fix="drop preset=",
            )
        )
    if cfg.nesterov and cfg.optimizer == "sgd" and cfg.momentum == 0:
        errors.append(
            UserError(
                "nesterov=true needs momentum > 0",
                where="config keys nesterov, momentum",
                fix="set momentum=0.9, or nesterov=false",
            )
        )
    return errors


# ---------------------------------------------------------------- output


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def help_text() -> str:
    """Every key with its type, default and allowed values, for `tocha train --help`."""
    lines = []
    section = None
    for spec in schema():
        head = spec.key.split(".")[0] if "." in spec.key else ""
        if head != section:
            section = head
            lines.append(f"\n{head}.* keys:" if head else "\ntraining keys:")
        default = "none" if spec.default is None else spec.default
        if isinstance(default, list):
            default = "[" + ",".join(map(str, default)) + "]"
        allowed = _allowed(spec)
        extra = f"  [{allowed}]" if allowed != spec.type_name else ""
        lines.append(f"  {spec.key:<24} {spec.type_name:<14} default {default}{extra}")
        lines.append(f"      {spec.help}")
    lines.append("\nPRESETS (preset=NAME sets these when the key is not given):")
    for name, preset in PRESETS.items():
        if preset:
            lines.append(f"  preset={name}: " + " ".join(_shown_pairs(preset)))
    lines.append("\nTASK DEFAULTS (used when the key is not given):")
    for task, defaults in TASK_DEFAULTS.items():
        lines.append(f"  task={task}: " + " ".join(_shown_pairs(defaults)))
    return "\n".join(lines)


def _shown_pairs(values: dict[str, Any]) -> list[str]:
    return [f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in values.items()]
