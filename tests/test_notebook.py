"""Acceptance: the Python API in a real Jupyter kernel (nbclient). Skips cleanly without a kernel."""

from __future__ import annotations

import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

CELLS = [
    """
import torch, tocha
from torch import nn
g = torch.Generator().manual_seed(0)
x = torch.randn(400, 8, generator=g); y = (x[:, 0] > 0).long()
xv = torch.randn(100, 8, generator=g); yv = (xv[:, 0] > 0).long()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
""",
    """
evals = []
class Keep:
    def on_eval_end(self, record, improved):
        evals.append(record["val.accuracy"])
        if len(evals) == 2:
            raise tocha.StopTraining("two evaluations")
def smooth_ce(logits, target):
    return nn.functional.cross_entropy(logits, target, label_smoothing=0.05)
result = tocha.fit(model, (x, y), (xv, yv), epochs=5, batch_size=32, threads=1, loss=smooth_ce,
                   callbacks=[Keep()], log={"tensorboard": False})
result
""",
    """
preds = tocha.predict(result, xv)
ev = tocha.evaluate(result.model, (xv, yv))
fit_accuracy = result.summary["val"]["val.accuracy"]
assert abs(ev.metrics.accuracy - fit_accuracy) < 1e-9, (ev.metrics.accuracy, fit_accuracy)
assert abs((preds.indices == yv).float().mean().item() - fit_accuracy) < 1e-6
assert len(evals) == 2 and "stopped by a callback" in result.summary["early_stop"]
print("ACCURACY", fit_accuracy)
""",
]


def test_fit_predict_evaluate_in_a_kernel(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c.strip()) for c in CELLS])
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": tmp_path}})
    if "PYTHONPATH" not in os.environ:  # the kernel is a new process: it must import this tocha
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError:
        raise
    except Exception as exc:  # no kernel could start (no kernelspec, no ZMQ): nothing was tested
        pytest.skip(f"no Jupyter kernel could start: {type(exc).__name__}: {exc}")
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
    shown = "".join(o["data"].get("text/plain", "") for o in outputs if o["output_type"] == "execute_result")
    assert "ACCURACY" in text
    assert shown.startswith("FitResult(task=classify") and "best val.accuracy" in shown  # the readable repr
    hardware = [line for line in text.splitlines() if line.startswith(("hardware", "device ", "precision "))]
    assert len(hardware) == 1, text  # one summary line in a notebook (verbose=False there)
