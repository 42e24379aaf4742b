"""A one-cycle run of exactly 4 optimizer steps (OneCycleLR's zero-length warm-up phase) trains."""

import subprocess
import sys


def test_onecycle_over_four_steps_trains(tmp_path):
    argv = [
        sys.executable,
        "-m",
        "tocha.cli",
        "train",
        "data=digits",
        "model=mlp",
        "epochs=4",
        "batch_size=2000",
        "threads=1",
        "log.tensorboard=false",
        "out=run",
    ]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and (tmp_path / "run" / "summary.json").is_file()
