"""The harness: what every task shares (placement, run folder, signals, checkpoints, best keeper, summary, report).

A task (tocha.tasks) says what to build and how to score it; `train` does the rest.
"""

from tocha.harness.run import FitResult, train

__all__ = ["FitResult", "train"]
