"""The `tfmamba` subcommands, one module each (`register(subparsers)`), and the options they share."""

from __future__ import annotations

import argparse


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """`--device`, checked as it is parsed (before any output folder is made)."""
    parser.add_argument("--device", default=None, type=_device,
                        help="torch device: cpu, cuda, cuda:1, mps (default cuda when present, else cpu)")


def _device(text: str) -> str:
    from tfmamba.device import device_problem

    problem = device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text
