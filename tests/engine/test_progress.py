"""The progress display: a bar that fits 100 columns (checked in a pseudo-terminal), and a plain log
with intermediate lines in a long epoch."""

from __future__ import annotations

import io
import os
import re
import sys
import textwrap

import pytest

from tocha.engine.progress import Progress, short_postfix

RECORD = {"train.loss": 0.123456, "train.accuracy": 0.9512, "val.accuracy": 0.9401, "samples_per_second": 123456.0}


def test_short_postfix_keeps_loss_accuracy_speed_first_and_drops_the_rest():
    assert short_postfix(RECORD, 200) == ", loss 0.1235 acc 0.9512 123.5k/s val.acc 0.9401"
    assert short_postfix(RECORD, 33) == ", loss 0.1235 acc 0.9512 123.5k/s"
    assert short_postfix(RECORD, 13) == ", loss 0.1235" and short_postfix(RECORD, 12) == ""


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_long_epoch_in_a_log_has_intermediate_lines():
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(epochs=1, steps_per_epoch=1000, stream=stream, tty=False, clock=clock)
    progress.start_epoch(0)
    for _ in range(100):  # 10 steps per read, 1 s per step: a 1000 s epoch
        progress.advance(10)
        clock.now += 10
        progress.log({"train.loss": 1.0})
    progress.end_epoch(0, {"train.loss": 1.0}, clock.now)
    lines = stream.getvalue().splitlines()
    middle = [line for line in lines if " step " in line]
    assert len(middle) == 1000 // 30  # every 30 s (10% would be every 100 s)
    assert middle[0].startswith("epoch 1/1  step 30/1000 (3%)  train.loss 1.0000")
    assert "\r" not in stream.getvalue() and lines[-1].startswith("epoch 1/1  train.loss")


def test_a_medium_epoch_prints_every_tenth_and_a_short_one_only_its_end():
    for seconds_per_read, expected in ((0.5, 9), (0.01, 0)):  # 50 s and 1 s epochs, 100 reads each
        stream, clock = io.StringIO(), FakeClock()
        progress = Progress(epochs=1, steps_per_epoch=100, stream=stream, tty=False, clock=clock)
        progress.start_epoch(0)
        for _ in range(100):
            progress.advance(1)
            clock.now += seconds_per_read
            progress.log({"train.loss": 1.0})
        assert stream.getvalue().count(" step ") == expected


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_bar_fits_100_columns_with_loss_accuracy_and_speed_in_a_pty():
    import pty

    script = textwrap.dedent(
        """
        import fcntl, struct, sys, termios
        fcntl.ioctl(sys.stderr.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        from tocha.engine.progress import Progress
        p = Progress(epochs=12, steps_per_epoch=1000)
        assert p.tty
        p.start_epoch(9)
        for _ in range(500):
            p.advance(1)
        p.log({"train.loss": 0.123456, "train.accuracy": 0.9512, "lr": 0.003, "samples_per_second": 12345.6,
               "val.loss": 0.2, "val.accuracy": 0.94})
        p.bar.refresh()
        p.end_epoch(9, {"train.loss": 0.1, "train.accuracy": 0.95, "val.accuracy": 0.94,
                        "train_samples_per_second": 12345.6}, 1.0)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("COLUMNS", None)
    out = bytearray()
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdio is the pseudo-terminal
        os.execve(sys.executable, [sys.executable, "-c", script], env)
    try:
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    frames = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", f) for f in re.split(r"[\r\n]", text)]
    frames = [f for f in frames if "epoch 10/12" in f]
    assert frames, text
    last = frames[-1]
    assert len(last) <= 100, last
    assert "loss 0.1000" in last and "acc 0.9500" in last and "12.3k/s" in last
    bar = re.search(r"\|(.*)\|", last).group(1)
    assert len(bar) >= 10
