"""tocha: from a dataset and a model to a trained, measured, deployable artifact.

Public API (imported lazily so that `import tocha` and `tocha --help` stay fast)::

    result = tocha.fit(model, (x, y), epochs=3, lr=0.1)      # -> FitResult
    report = tocha.evaluate(result.model, (x_test, y_test))    # -> EvalResult
    preds = tocha.predict(result, x_new)                       # -> Predictions (.probabilities, .labels)
    run = tocha.load_run("runs/cnn")                           # model + metadata of a finished run
"""

from __future__ import annotations

from tocha._version import __version__

__all__ = ["fit", "evaluate", "predict", "load_run", "StopTraining", "Callback", "UserError", "__version__"]

from tocha.errors import UserError


def __getattr__(name: str):
    if name in ("fit", "evaluate"):
        from tocha import api

        return getattr(api, name)
    if name == "predict":
        from tocha.recipes.predict import predict

        return predict
    if name == "StopTraining":
        from tocha.engine.loop import StopTraining

        return StopTraining
    if name == "Callback":
        from tocha.harness.callbacks import Callback

        return Callback
    if name == "load_run":
        from tocha.recipes.runs import load_run

        return load_run
    raise AttributeError(f"module 'tocha' has no attribute {name!r}")
