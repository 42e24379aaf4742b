"""`tocha env`: versions, devices, threads, and what tocha would choose (auto) and why."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("env", help="versions, devices, threads, and what tocha would choose and why")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha.hardware import describe_environment, plan

    info = describe_environment()
    hw_memory, hw_files = plan(file_data=False), plan(file_data=True)
    if args.json:
        import json

        print(
            json.dumps(
                {**info, "choices": {"in_memory_data": hw_memory.__dict__, "file_data": hw_files.__dict__}},
                indent=2,
                default=str,
            )
        )
        return 0
    for key, value in info.items():
        print(f"{key:<17} {value if value is not None else 'not installed'}")
    print("\nwhat tocha would choose (auto), for in-memory data:")
    for line in hw_memory.lines():
        print(f"  {line}")
    print("for file datasets (image folders), differing choices:")
    for old, new in zip(hw_memory.lines(), hw_files.lines()):
        if old != new:
            print(f"  {new}")
    return 0
