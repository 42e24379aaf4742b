"""Regression: a number from a row of numeric features. Written only against the task interface.

Features and target are standardised with training-split statistics (stored in meta.json), the
MLP learns the standardised target with MSE (or Huber), and every metric is reported in the
target's own units: MAE, RMSE and R² by scikit-learn.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tocha import runfolder as rf
from tocha.config import AUTO
from tocha.data.csv import TabularData, load_csv, tabulate
from tocha.engine.batches import DeviceTransform, ResidentBatches
from tocha.engine.evaluate import predict_batches
from tocha.errors import UserError
from tocha.metrics.regression import RegressionMetrics, regression_metrics
from tocha.models import ModelSpec, build_model, check_input_size
from tocha.reports.plots import plot_regression
from tocha.tasks.base import Built, Finished, eval_result, final_scores

PLOT = "regression.png"


def squeezed(loss: nn.Module):
    """The model's [B, 1] output against the [B] target."""
    return lambda out, y: loss(out.squeeze(-1).float(), y)


class Task:
    name = "regress"

    def __init__(self) -> None:
        self.table: TabularData | None = None

    def load(self, cfg, data) -> TabularData:
        if data is None:
            return load_csv(
                cfg.data.path, target=cfg.data.target, val_fraction=cfg.data.val_fraction, seed=cfg.seed, kind="regress"
            )
        (train, val, test) = data
        if val is not None or test is not None:
            raise UserError(
                "task=regress splits the (x, y) tensors itself",
                where="tocha.fit",
                fix="pass the whole table as train_data=(x, y); val_fraction sets the validation share",
            )
        x, y = (torch.as_tensor(t).detach().cpu().double().numpy() for t in train)
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
            raise UserError(
                f"task=regress needs x [N, F] and y [N]; got {list(x.shape)} and {list(y.shape)}",
                where="tocha.fit train_data",
                fix="reshape x to rows of features and y to one number each",
            )
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise UserError("the tensors hold NaN or Inf", where="tocha.fit train_data", fix="drop or fill those rows")
        names = tuple(f"x{i}" for i in range(x.shape[1]))
        return tabulate(
            x,
            y,
            np.zeros(len(y), dtype=np.int64),
            kind="regress",
            classes=(),
            feature_names=names,
            target="y",
            val_fraction=cfg.data.val_fraction,
            test_fraction=0.2,
            seed=cfg.seed,
            source=f"in-memory tensors ({len(y)} rows, {x.shape[1]} features)",
            notes=[],
        )

    def wrap_loss(self, loss):
        """tocha.fit(loss=...): `loss(prediction [B], y [B])` on the standardised target."""
        return squeezed(loss)

    def build(self, cfg, placement, *, data=None, model: nn.Module | None = None) -> Built:
        table = self.table = self.load(cfg, data)
        device = placement.device
        dropout = 0.0 if cfg.model.dropout == AUTO else cfg.model.dropout
        spec = ModelSpec(
            cfg.model.name if model is None else type(model).__name__,
            table.num_features,
            1,
            0,
            tuple(cfg.model.hidden),
            cfg.model.width,
            dropout,
        )
        if model is None:
            model = build_model(spec)
        else:
            check_input_size(model, spec)
        model.to(device)
        plain = DeviceTransform(None, None, device=device)  # the table is standardised already
        batches = {
            name: ResidentBatches(
                split.x,
                split.y,
                placement.batch_size,
                device=device,
                transform=plain,
                train=name == "train",
                seed=cfg.seed,
            )
            for name, split in (("train", table.train), ("val", table.val), ("test", table.test))
            if split is not None
        }
        loss = nn.HuberLoss() if cfg.loss == "huber" else nn.MSELoss()
        probe = table.train.x[: placement.batch_size].to(device), table.train.y[: placement.batch_size].to(device)
        name = cfg.data.name if data is None else "in-memory data"
        lines = [
            f"data       {name}: {len(table.train)} train / {len(table.val) if table.val else 0} val / "
            f"{len(table.test) if table.test else 0} test rows, {table.num_features} features, from "
            f"{table.source}"
        ]
        lines += [f"note       {note}" for note in table.notes]
        lines.append(
            f"batches    resident tensors on {device}; features and target standardised with the "
            "training split's mean and std"
        )
        lines.append(
            f"model      {spec.name}: {sum(p.numel() for p in model.parameters()):,} parameters; loss "
            f"{'Huber' if cfg.loss == 'huber' else 'MSE'} on the standardised target"
        )
        meta = {
            "task": "regress",
            "model": spec.to_dict(),
            "features": list(table.feature_names),
            "target": table.target,
            "feature_mean": list(table.feature_mean),
            "feature_std": list(table.feature_std),
            "target_mean": table.target_mean,
            "target_std": table.target_std,
            "in_channels": table.num_features,
            "image_size": 0,
        }
        return Built(
            model,
            batches,
            meta,
            squeezed(loss),
            None,
            probe,
            lines,
            {"model.dropout": dropout},
            placement=placement.in_memory("the table is held in memory as tensors"),
            run_name=(cfg.data.name, spec.name),
            samples_unit="rows",
        )

    # ---------------------------------------------------------------- score
    def predictions(self, built: Built, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(true, predicted) in the target's units."""
        out, y, _ = predict_batches(
            built.model,
            built.batches[split],
            device=built.placement.device,
            precision=built.placement.precision,
            outputs=lambda o: o.squeeze(-1),
        )
        return self.table.to_original(y), self.table.to_original(out)

    def scored(self, built: Built, split: str) -> tuple[float, RegressionMetrics]:
        true, pred = self.predictions(built, split)
        std = self.table.target_std
        mse_standardised = float(((pred - true).double() ** 2).mean()) / (std * std) if len(true) else float("nan")
        return mse_standardised, regression_metrics(true.numpy(), pred.numpy())

    def evaluate(self, built: Built, split: str) -> dict:
        loss, metrics = self.scored(built, split)
        return {f"{split}.loss": loss, **metrics.flat(split)}

    def finish(self, built: Built, cfg, summary: dict) -> Finished:
        fields, values = final_scores(self.scored, built)
        done = Finished(
            summary={
                "target": self.table.target,
                "target_mean": self.table.target_mean,
                "target_std": self.table.target_std,
                **fields,
            },
            values=values,
        )
        shown = "test" if "test" in built.batches else "val"
        true, pred = self.predictions(built, shown)
        done.report = {
            "extra_sections": [("Predictions", report_html(shown, done.values.get(shown)))],
            "plots": {PLOT: lambda path: plot_regression(true.numpy(), pred.numpy(), path)},
            "title_suffix": " (regression)",
        }
        if (test := done.values.get("test")) is not None:
            done.jsons["eval-test.json"] = {"split": "test", "checkpoint": "best", **test.to_dict()}
            done.headline.append(
                f"test RMSE {test.rmse:.4g}  MAE {test.mae:.4g}  R² {test.r2:.4f}  ({test.n} rows, "
                f"target '{self.table.target}')"
            )
        if summary.get("best"):
            b = summary["best"]
            done.headline.insert(0, f"best {b['metric']} = {b['value']:.4g} at epoch {b['epoch']:g}")
        done.headline.append(f"{summary['train_samples_per_second']:,.0f} rows/s")
        return done

    # ---------------------------------------------------------------- a finished run
    def evaluate_run(self, path: Path, *, split: str, checkpoint: str, device: str, batch_size: int, write: bool):

        model, meta = load_model(path, checkpoint, device)
        cfg_path = path / rf.CONFIG
        from tocha import config

        cfg = config.load(cfg_path)
        table = load_csv(
            cfg.data.path, target=cfg.data.target, val_fraction=cfg.data.val_fraction, seed=cfg.seed, kind="regress"
        )
        chosen = {"train": table.train, "val": table.val, "test": table.test}[split]
        if chosen is None:
            raise UserError(f"this run has no {split} split", where="tocha eval --split", fix="use --split val")
        with torch.inference_mode():
            pred = model(chosen.x).squeeze(-1)
        true, pred = table.to_original(chosen.y), table.to_original(pred)
        metrics = regression_metrics(true.numpy(), pred.numpy())
        loss = float(((pred - true).double() ** 2).mean()) / table.target_std**2
        record = {"split": split, "checkpoint": checkpoint, **metrics.to_dict()}
        return eval_result(
            path / f"eval-{split}.json", record, write, split=split, loss=loss, metrics=metrics, checkpoint=checkpoint
        )

    def predict_files(self, path: Path, files: list[str], *, checkpoint: str = "best"):
        """(row name, ((target, value),)) for every row of every CSV file."""
        out = []
        for file in files:
            lines, values = predict_rows(path, file, checkpoint=checkpoint)
            target = rf.read_meta(path)["target"]
            out += [(f"{file}:{line}", ((target, float(v)),)) for line, v in zip(lines, values)]
        return out


def load_model(path: Path, checkpoint: str, device: str) -> tuple[nn.Module, dict]:
    from tocha.engine.checkpoint import load_weights

    meta = rf.read_meta(path)
    weights = path / (rf.BEST_WEIGHTS if checkpoint == "best" else rf.LAST_WEIGHTS)
    if not weights.is_file():
        raise UserError(f"run '{path}' has no {checkpoint} checkpoint ({weights.name})", fix="train it again")
    model = build_model(ModelSpec.from_dict(meta["model"]))
    load_weights(model, weights)
    return model.eval(), meta


def predict_rows(path: Path, csv_file: str, *, checkpoint: str = "best") -> tuple[list[str], np.ndarray]:
    """Predictions for every row of `csv_file` (the run's feature columns, any order; the target may be absent)."""
    import csv

    model, meta = load_model(path, checkpoint, "cpu")
    file = Path(csv_file)
    if not file.is_file():
        raise UserError(
            f"'{csv_file}' {'is a folder' if file.is_dir() else 'does not exist'}",
            where="tocha predict",
            fix="pass a CSV file with the run's feature columns",
        )
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise UserError(f"'{csv_file}' is not UTF-8 text", where="tocha predict", fix="save it as UTF-8") from None
    if not rows:
        raise UserError(f"'{csv_file}' is empty", where="tocha predict", fix="pass a CSV with a header row")
    header = [h.strip() for h in rows[0]]
    missing = [name for name in meta["features"] if name not in header]
    if missing:
        raise UserError(
            f"'{csv_file}' lacks the feature column(s) {', '.join(missing[:5])}",
            where="tocha predict",
            allowed=", ".join(meta["features"]),
            fix="add them (the names of the training file)",
        )
    cols = [header.index(name) for name in meta["features"]]
    values = []
    for line, cells in enumerate(rows[1:], start=2):
        try:
            values.append([float(cells[c]) for c in cols])
        except (ValueError, IndexError):
            raise UserError(
                f"line {line} of '{csv_file}' has a missing or non-numeric feature value",
                where="tocha predict",
                fix="fix that row",
            ) from None
    x = (np.asarray(values, dtype=np.float64) - np.asarray(meta["feature_mean"])) / np.asarray(meta["feature_std"])
    with torch.inference_mode():
        out = model(torch.from_numpy(x).float()).squeeze(-1).double().numpy()
    return [str(line) for line in range(2, len(rows) + 1)], out * meta["target_std"] + meta["target_mean"]


def report_html(split: str, metrics: RegressionMetrics | None) -> str:
    if metrics is None:
        return "<p>no split to show</p>"
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>"
        for k, v in (("MAE", metrics.mae), ("RMSE", metrics.rmse), ("R²", metrics.r2))
    )
    return (
        f"<table><tbody>{rows}</tbody></table><p>{metrics.n} rows of the {split} split, in the target's units "
        f'(scikit-learn\'s metrics).</p><img src="{PLOT}" alt="predicted against true, and residuals">'
    )
