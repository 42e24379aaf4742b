"""The training loops `tocha bench` compares. Each trains `Workload` on one device and returns `Measure`.

Only the epochs are timed (CUDA work synchronised before the clock stops); test accuracy is
measured after each epoch, off the clock, on the same test tensors for every runner.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tocha.bench.workload import Workload


@dataclass
class Measure:
    runner: str
    device: str
    train_seconds: float = 0.0
    steps: int = 0
    samples: int = 0
    curve: list[tuple[float, float]] = field(default_factory=list)  # (training seconds so far, test accuracy)
    peak_mb: float | None = None
    note: str = ""

    @property
    def ran(self) -> bool:
        return self.steps > 0

    @property
    def accuracy(self) -> float | None:
        return self.curve[-1][1] if self.curve else None

    def time_to(self, target: float) -> float | None:
        return next((s for s, acc in self.curve if acc >= target), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def test_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), 1000):
        correct += int((model(x[i : i + 1000].to(device)).argmax(1) == y[i : i + 1000].to(device)).sum())
    model.train(was_training)
    return correct / len(y)


class PeakMemory:
    """Peak memory of a run above its start: CUDA allocator peak, or host RSS sampled every 5 ms."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb = device, None
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                import os

                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return None

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            rss = self._rss()
            if rss is not None:
                self._max = max(self._max, rss)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = self._max = self._rss() or 0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            if self._start:
                self.peak_mb = (self._max - self._start) / 2**20


# ------------------------------------------------------------------ the tutorial loop

_TORCHVISION_ROOT: tempfile.TemporaryDirectory | None = None


def torchvision_root(files: dict[str, Path]) -> Path:
    """A torchvision-layout copy of the IDX files (torchvision reads them uncompressed), made once."""
    global _TORCHVISION_ROOT
    if _TORCHVISION_ROOT is None:
        _TORCHVISION_ROOT = tempfile.TemporaryDirectory(prefix="tocha-bench-")
        raw = Path(_TORCHVISION_ROOT.name) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for path in files.values():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as src, open(raw / path.name.removesuffix(".gz"), "wb") as dst:
                shutil.copyfileobj(src, dst)
    return Path(_TORCHVISION_ROOT.name)


class PilImages(torch.utils.data.Dataset):
    """What torchvision's MNIST-style datasets do per item (a PIL image, then the transform), for other data."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images[:, 0].numpy(), labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i], mode="L")), self.labels[i]


def tutorial_dataset(w: Workload) -> torch.utils.data.Dataset:
    from torchvision import datasets, transforms

    if w.idx_files is not None and w.x_train.shape[1:] == (1, 28, 28):
        full = datasets.FashionMNIST(torchvision_root(w.idx_files), train=True, transform=transforms.ToTensor())
        return torch.utils.data.Subset(full, range(len(w.y_train))) if len(w.y_train) < len(full) else full
    return PilImages(w.x_train, w.y_train, transforms.ToTensor())


def tutorial(w: Workload, device: torch.device) -> Measure:
    """The seeds' loop: torchvision dataset + ToTensor + DataLoader(shuffle=True), each batch moved to the device."""
    m = Measure("tutorial", device.type)
    loader = torch.utils.data.DataLoader(tutorial_dataset(w), batch_size=w.batch_size, shuffle=True)
    torch.manual_seed(w.seed)
    model = w.build_model().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=w.lr)
    x_test = w.x_test.float() / 255  # ToTensor's scaling, nothing else
    for _ in range(w.epochs):
        start = time.perf_counter()
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            m.steps += 1
            m.samples += len(y)
        sync(device)
        m.train_seconds += time.perf_counter() - start
        m.curve.append((m.train_seconds, test_accuracy(model, x_test, w.y_test, device)))
        if w.done(*m.curve[-1]):
            break
    return m


# ------------------------------------------------------------------ the floor: a raw loop on device tensors


def raw(w: Workload, device: torch.device) -> Measure:
    """Pre-made normalised tensors on the device, a device-side permutation, index slices, nothing else."""
    m = Measure("raw", device.type)
    x, y = w.normalised(w.x_train).to(device), w.y_train.to(device)
    torch.manual_seed(w.seed)
    model = w.build_model().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=w.lr)
    x_test, n = w.normalised(w.x_test), len(y)
    for _ in range(w.epochs):
        start = time.perf_counter()
        perm = torch.randperm(n, device=device)
        for i in range(0, n, w.batch_size):
            idx = perm[i : i + w.batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(device)
        m.train_seconds += time.perf_counter() - start
        m.steps += -(-n // w.batch_size)
        m.samples += n
        m.curve.append((m.train_seconds, test_accuracy(model, x_test, w.y_test, device)))
    return m


# ------------------------------------------------------------------ tocha


def tocha_fit(w: Workload, device: torch.device) -> Measure:
    """`tocha.fit` with the same model, optimizer and batches; tocha's own data path and step."""
    import tocha

    m = Measure("tocha", device.type)
    torch.manual_seed(w.seed)
    model = w.build_model()
    logger = logging.getLogger("tocha")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        result = tocha.fit(
            model,
            (w.x_train, w.y_train),
            val_data=(w.x_test, w.y_test),
            epochs=w.epochs,
            batch_size=w.batch_size,
            optimizer="sgd",
            lr=w.lr,
            momentum=0.0,
            weight_decay=0.0,
            scheduler="none",
            seed=w.seed,
            device=str(device),
            threads=torch.get_num_threads(),
            data={"augment": []},
            log={"tensorboard": False, "progress": False},
        )
    finally:
        logger.setLevel(level)
    evals = [r for r in result.history if r["kind"] == "eval"]
    m.train_seconds = result.summary["train_seconds"]
    m.steps = result.summary["steps"]
    m.samples = round(result.summary["train_samples_per_second"] * result.summary["train_seconds"])
    m.curve = [(r["train_seconds"], r["val.accuracy"]) for r in evals]
    return m


# ------------------------------------------------------------------ PyTorch Lightning


def lightning_available() -> str | None:
    import importlib.util

    for name in ("lightning", "pytorch_lightning"):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def lightning(w: Workload, device: torch.device) -> Measure:
    """A LightningModule + Trainer with logger, checkpointing, progress bar and summary off (its fastest)."""
    m = Measure("lightning", device.type)
    name = lightning_available()
    if name is None:
        m.note = "not installed (pip install lightning)"
        return m
    import importlib

    L = importlib.import_module(name)
    for noisy in ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    torch.manual_seed(w.seed)
    net = w.build_model()
    lr = w.lr

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr)

    x_test = w.normalised(w.x_test)

    class Timer(L.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            sync(device)
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            sync(device)
            m.train_seconds += time.perf_counter() - self.start
            m.curve.append((m.train_seconds, test_accuracy(module.net, x_test, w.y_test, device)))

    data = torch.utils.data.TensorDataset(w.normalised(w.x_train), w.y_train)
    loader = torch.utils.data.DataLoader(data, batch_size=w.batch_size, shuffle=True)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=w.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Timer()],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "does not have many workers", "GPU available but not used", ...
        trainer.fit(Module(), loader)
    m.steps = int(trainer.global_step)
    m.samples = len(w.y_train) * w.epochs
    return m


RUNNERS = {"tutorial": tutorial, "raw": raw, "tocha": tocha_fit, "lightning": lightning}
