"""The Python API behind the CLI: `fit` and `evaluate`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from tocha.errors import UserError


def _ensure_console_logging() -> None:
    logger = logging.getLogger("tocha")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:  # a level the caller chose stays
            logger.setLevel(logging.INFO)


def _unloaded(data: Any, role: str, options: dict, loaders: dict) -> Any:
    """A DataLoader's dataset, the loader kept in `loaders[role]` for the batches that cannot be resident."""
    import torch

    if not isinstance(data, torch.utils.data.DataLoader):
        return data
    if isinstance(data.dataset, torch.utils.data.IterableDataset):
        raise UserError(
            f"{role}_data is a DataLoader over an IterableDataset, which has no length or indices",
            where=f"tocha.fit {role}_data",
            fix="pass a map-style Dataset (with __len__ and __getitem__), or its items as (x, y) tensors",
        )
    if role == "train" and "batch_size" not in options and data.batch_size:
        options["batch_size"] = data.batch_size
    loaders[role] = data
    logging.getLogger("tocha").info(
        "data       %s_data is a DataLoader (batch_size %s): the batches line says how it is used",
        role,
        data.batch_size,
    )
    return data.dataset


def _as_splits(
    train_data: Any, val_data: Any, test_data: Any, *, val_fraction: float, seed: int, classes, loaders: dict
):
    """A DataSplits from (x, y) tensors or Datasets; None when `train_data` is a registered name."""
    from tocha.data.tensors import splits_from_dataset, splits_from_tensors

    if isinstance(train_data, str):
        if val_data is not None or test_data is not None:
            raise UserError(
                "val_data/test_data cannot be combined with a registered dataset name",
                where="tocha.fit",
                fix="pass tensors or Datasets for all splits, or only the name",
            )
        return None
    if isinstance(train_data, (tuple, list)) and len(train_data) == 2:
        return splits_from_tensors(
            *train_data, val=val_data, test=test_data, val_fraction=val_fraction, seed=seed, classes=classes
        )
    import torch

    if isinstance(train_data, torch.utils.data.Dataset):

        def as_dataset(part):  # (x, y) tensors beside a Dataset
            pair = isinstance(part, (tuple, list)) and len(part) == 2
            return torch.utils.data.TensorDataset(torch.as_tensor(part[0]), torch.as_tensor(part[1])) if pair else part

        val_data, test_data = as_dataset(val_data), as_dataset(test_data)
        return splits_from_dataset(
            train_data, val_data, test_data, val_fraction=val_fraction, seed=seed, classes=classes, loaders=loaders
        )
    raise UserError(
        f"train_data of type {type(train_data).__name__} is not supported",
        where="tocha.fit",
        allowed="an (x, y) tensor pair, a torch.utils.data.Dataset, or a dataset name "
        "(fashion-mnist, digits, imagefolder)",
    )


def fit(
    model: Any = None,
    train_data: Any = "fashion-mnist",
    val_data: Any = None,
    *,
    test_data: Any = None,
    classes: list[str] | None = None,
    config: str | Path | None = None,
    loss: Any = None,
    callbacks: Any = None,
    verbose: bool | None = None,
    **options: Any,
):
    """Train `model`: an nn.Module, a registered model name, a dict of model options
    (``{"name": "cnn", "width": 8}``), or None for `model.name` from the options.

    `train_data`: an ``(x, y)`` pair of tensors, a ``torch.utils.data.Dataset`` or a registered
    dataset name. Options are the `tocha train` config keys (``epochs=3``, ``lr=0.1``,
    ``data={"val_fraction": 0.1}``) and are validated the same way. A run folder is written only
    when ``out=...`` is given. ``task=`` picks the task from the registry (classify, charlm: a
    character language model of ``data={"path": ...}``, regress: ``(x, y)`` float tensors or
    ``data={"name": "csv", ...}``). Returns a :class:`tocha.harness.run.FitResult`; its ``val`` and
    ``test`` hold the task's metrics, and task-specific values (a baseline, a sample) are attributes.
    A ``torch.utils.data.DataLoader`` is accepted for any split: its dataset is held in memory
    when it fits and its items repeat; otherwise the loader's own collate_fn, workers and sampler
    make the batches (the log's batches line says which, and why).

    ``loss``: a callable ``loss(output, y) -> mean loss`` replacing the task's training loss
    (classify: logits [B, K] and labels [B]; regress: predictions [B] and the standardised target
    [B]), or a config name ("mse", "huber"). ``callbacks``: objects with any of ``on_log(record)``,
    ``on_eval_end(record, improved)``, ``on_checkpoint(info)``, or a dict of those callables; raise
    ``tocha.StopTraining("why")`` in one to stop cleanly (see tocha/harness/callbacks.py)::

        def stop_when_good(record, improved):
            if record["val.accuracy"] > 0.9:
                raise tocha.StopTraining("val.accuracy above 0.9")

        tocha.fit(model, (x, y), callbacks={"on_eval_end": stop_when_good}, max_steps=500)

    ``verbose``: the hardware choices line by line (default: one summary line in a notebook).
    ``max_steps=N`` and ``limit_val_batches=N`` cut a run short for a smoke test.
    """
    from tocha import config as config_module

    _ensure_console_logging()
    values = dict(options)
    if isinstance(loss, str):  # a config name: auto, mse, huber
        values["loss"], loss = loss, None
    if verbose is None:
        from tocha.engine.progress import in_notebook

        verbose = not in_notebook()
    loaders: dict = {}  # role -> the DataLoader given for it
    train_data = _unloaded(train_data, "train", values, loaders)
    val_data, test_data = _unloaded(val_data, "val", values, loaders), _unloaded(test_data, "test", values, loaders)
    if isinstance(model, dict):  # model options, e.g. {"name": "cnn", "width": 8}
        values["model"] = {**values.get("model", {}), **model} if isinstance(values.get("model"), dict) else model
        model = None
    if isinstance(model, str):
        values["model"] = {**values.get("model", {}), "name": model} if isinstance(values.get("model"), dict) else model
        model = None
    task = str(values.get("task", "classify"))
    if isinstance(train_data, str) and task == "classify":
        values["data"] = (
            {**values.get("data", {}), "name": train_data} if isinstance(values.get("data"), dict) else train_data
        )
    cfg = config_module.load(config, values=values)
    if cfg.task == "classify":
        data = _as_splits(
            train_data,
            val_data,
            test_data,
            val_fraction=cfg.data.val_fraction,
            seed=cfg.seed,
            classes=classes,
            loaders=loaders,
        )
    else:  # the task reads its own data (data.path) or takes the tensors as they are
        if loaders:
            raise UserError(
                f"a DataLoader is accepted as data for task=classify, not for task={cfg.task}",
                where="tocha.fit train_data",
                fix=f"give task={cfg.task} its data as `tocha train --help` describes it, or use task=classify",
            )
        data = None if isinstance(train_data, str) else (train_data, val_data, test_data)
    from tocha.harness import train

    result = train(cfg, model=model, data=data, loss=loss, callbacks=callbacks, verbose=verbose)
    # What evaluate/predict need to prepare inputs as training did (normalisation, size), kept on the model.
    result.model.tocha_meta = result.meta
    return result


def evaluate(
    model: Any,
    data: Any = None,
    *,
    split: str = "test",
    batch_size: int = 512,
    device: str = "auto",
    classes: list[str] | None = None,
    top_k: int = 5,
):
    """Evaluate a run folder (``evaluate("runs/cnn")``) or an nn.Module on ``(x, y)`` tensors / a Dataset.

    Returns an :class:`tocha.recipes.runs.EvalResult` with the loss and the classification metrics.
    """
    if isinstance(model, (str, Path)) and Path(model).suffix in (".onnx", ".pt2"):  # an exported file
        from tocha.deploy.measure import evaluate_artifact

        return evaluate_artifact(model, split=split, batch_size=batch_size, top_k=top_k)
    if isinstance(model, (str, Path)):
        from tocha.recipes.runs import evaluate_run

        return evaluate_run(model, split=split, device=device, batch_size=batch_size, top_k=top_k)
    import torch

    from tocha.data.tensors import splits_from_dataset, splits_from_tensors
    from tocha.engine.batches import DeviceTransform, make_batches
    from tocha.engine.evaluate import evaluate_classifier
    from tocha.hardware import plan
    from tocha.recipes.runs import EvalResult

    meta = getattr(model, "tocha_meta", None) or getattr(getattr(model, "model", None), "tocha_meta", None)
    module = model.model if hasattr(model, "model") and hasattr(model, "summary") else model  # a FitResult
    if meta is not None and classes is None:
        classes = meta.get("classes")
    if isinstance(data, (tuple, list)) and len(data) == 2:
        splits = splits_from_tensors(*data, val_fraction=0.0, classes=classes)
    elif isinstance(data, torch.utils.data.Dataset):
        splits = splits_from_dataset(data, val_fraction=0.0, classes=classes)
    else:
        raise UserError(
            "evaluate needs data with a model",
            where="tocha.evaluate",
            allowed="an (x, y) tensor pair or a torch.utils.data.Dataset",
        )
    hw = plan(device, "auto", "auto", "auto", file_data=splits.train.inputs is None)
    dev = torch.device(hw.device)
    # The statistics the model was trained with (tocha.fit keeps them on it); a bare module sees the data as is.
    mean, std = (meta["mean"], meta["std"]) if meta is not None else (None, None)
    transform = DeviceTransform(mean, std, device=dev)
    batches = make_batches(
        splits.train,
        batch_size,
        device=dev,
        transform=transform,
        train=False,
        workers=hw.workers,
        pin_memory=hw.pin_memory,
        seed=0,
    )
    from tocha.engine.tta import with_tta

    scored = with_tta(module.to(dev), (meta or {}).get("tta", "none"))  # as fit scored it (tta=flip: both views)
    loss, metrics = evaluate_classifier(
        scored, batches, classes=splits.classes, device=dev, precision="fp32", top_k=top_k
    )
    return EvalResult(split, loss, metrics, "given model", None)
