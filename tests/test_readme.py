"""The README's command blocks run top to bottom as written: every run a command reads is created
earlier in its block, no two commands write the same output, and every input file exists or is made.

(A static check of the sequences; running every block's quick variant is the slow test's job.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READS = ("eval", "predict", "export", "compress", "bench-model", "generate")


def command_blocks() -> list[tuple[int, list[str]]]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
    out = []
    for i, (lang, body) in enumerate(blocks):
        if lang:  # python, bash (SLURM), text (a diagram): not shell commands
            continue
        lines = [line.split("  #")[0].strip() for line in body.splitlines()]
        commands = [line for line in lines if line.startswith(("tocha ", "cat ", "python -c"))]
        if any(c.startswith("tocha ") for c in commands):
            out.append((i, commands))
    return out


def check_block(commands: list[str]) -> list[str]:
    created: list[str] = []  # run folders and files made so far in this block
    problems = []

    def exists(path: str) -> bool:
        return any(path == c or path.startswith(c.rstrip("/") + "/") for c in created) or (ROOT / path).exists()

    for command in commands:
        if command.startswith("cat ") and ">" in command:
            created.append(command.split(">")[1].split()[0])
            continue
        if command.startswith("python -c"):  # a file the snippet opens for writing
            created += re.findall(r"open\('([^']+)', 'w'\)", command)
            continue
        words = shlex.split(command)
        verb, rest = words[1], words[2:]
        given_out = rest[rest.index("--out") + 1] if "--out" in rest else None
        sources = [w for w in rest if w.startswith("runs/") and w != given_out]
        if verb == "distill":
            sources = [rest[rest.index("--teacher") + 1]]
        if verb == "train" and "--resume" in rest:
            sources = [rest[rest.index("--resume") + 1]]
        elif verb == "train":
            sources = []
        for key in ("data.path=",):
            sources += [w[len(key) :] for w in rest if w.startswith(key)]
        if verb in READS or verb in ("distill", "train"):
            for source in sources:
                if not exists(source):
                    problems.append(f"{command!r} reads {source}, which no earlier command creates")
        outs = [w[4:] for w in rest if w.startswith("out=")]
        if "--out" in rest:
            outs.append(rest[rest.index("--out") + 1])
        elif verb == "compress":
            outs.append(f"{sources[0]}/compressed")
        for out in outs:
            if out in created and verb != "train":
                problems.append(f"{command!r} writes {out}, which an earlier command of the block wrote")
            created.append(out)
    return problems


def test_readme_blocks_run_top_to_bottom():
    problems = [f"block {i}: {p}" for i, commands in command_blocks() for p in check_block(commands)]
    assert not problems, "\n".join(problems)


def test_the_check_finds_the_old_collisions():
    old = ["tocha train model=cnn out=runs/cnn", "tocha compress runs/cnn", "tocha compress runs/cnn --prune 0.5"]
    assert check_block(old) == [f"{old[2]!r} writes runs/cnn/compressed, which an earlier command of the block wrote"]
    assert check_block(["tocha distill --teacher runs/resnet out=runs/kd"])
    assert check_block(["tocha train task=charlm data.path=corpus.txt"])
