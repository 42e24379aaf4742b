"""Seed 004's tutorial loop vs `tocha.fit` on Fashion-MNIST: same model, batch, optimizer, epochs.

The tutorial way: torchvision's FashionMNIST + ToTensor + DataLoader(batch_size=100, shuffle=True),
a 784-32-10 MLP, plain SGD at lr 0.5, an `evaluate` over a DataLoader. tocha: the same model and
settings through `tocha.fit` with its defaults otherwise (resident tensors, no per-step host sync,
normalised inputs, one-cycle schedule). Both run in this process,
alternating, `--repeats` times; the script prints medians and the ratio.

    python benchmarks/tutorial_vs_tocha.py --epochs 2 --repeats 3
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


def torchvision_root() -> Path:
    """A torchvision-layout copy of the Debian IDX files (torchvision wants them uncompressed)."""
    root = Path(tempfile.mkdtemp(prefix="fmnist-"))
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in DEBIAN.glob("*.gz"):
        with gzip.open(gz) as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


def tutorial(root: Path, epochs: int, seed: int) -> tuple[float, float]:
    """The loop as the tutorial writes it; returns (train seconds, test accuracy)."""
    from torchvision import datasets, transforms

    torch.manual_seed(seed)
    train = datasets.FashionMNIST(root, train=True, transform=transforms.ToTensor())
    test = datasets.FashionMNIST(root, train=False, transform=transforms.ToTensor())
    n_val = len(train) // 5
    train_ds, _ = torch.utils.data.random_split(train, [len(train) - n_val, n_val])
    loader = torch.utils.data.DataLoader(train_ds, batch_size=100, shuffle=True)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    start = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
    seconds = time.perf_counter() - start
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test, batch_size=100):
            correct += (model(x).argmax(1) == y).sum().item()
    return seconds, correct / len(test)


def with_tocha(epochs: int, seed: int) -> tuple[float, float]:
    import tocha

    # Exactly `tocha train data=fashion-mnist model=mlp epochs=2 batch_size=100 optimizer=sgd lr=0.5`:
    # the same 784-32-10 net, plus tocha's defaults (normalised inputs, one-cycle schedule).
    result = tocha.fit("mlp", "fashion-mnist", epochs=epochs, batch_size=100, optimizer="sgd", lr=0.5, seed=seed)
    return result.summary["train_seconds"], result.test.accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not DEBIAN.is_dir():
        raise SystemExit("needs the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    root = torchvision_root()
    rows: dict[str, list[tuple[float, float]]] = {"tutorial": [], "tocha": []}
    for repeat in range(args.repeats):
        rows["tutorial"].append(tutorial(root, args.epochs, seed=repeat))
        rows["tocha"].append(with_tocha(args.epochs, seed=repeat))
    shutil.rmtree(root)
    print(f"\nFashion-MNIST, MLP 784-32-10, batch 100, SGD lr 0.5, {args.epochs} epochs, "
          f"{args.repeats} repeats (medians), torch {torch.__version__}, {torch.get_num_threads()} threads")
    med = {k: (statistics.median(s for s, _ in v), statistics.median(a for _, a in v)) for k, v in rows.items()}
    samples = 48_000 * args.epochs
    for name, (seconds, acc) in med.items():
        print(f"  {name:<9} train {seconds:6.2f} s  {samples / seconds:9,.0f} samples/s  test accuracy {acc:.4f}")
    print(f"  speed-up (tutorial time / tocha time): {med['tutorial'][0] / med['tocha'][0]:.1f}x")


if __name__ == "__main__":
    main()
