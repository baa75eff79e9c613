"""The `tfmamba` subcommands, one module each (`register(subparsers)`), and the options they share."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

MIN_WINDOW_SECONDS = 1.0  # shorter windows cut a clip into pieces too short to carry an emotion


def refuse_empty_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """An option given an empty or blank value (`--cache "$CACHE"` with CACHE unset) stops the command naming the
    option: read as "not given" it silently meant the default (the demo corpus, the newest run, ./mlflow.db)."""
    for action in parser._actions:  # argparse keeps a parser's options here; no public accessor exists
        value = getattr(args, action.dest, None)
        if isinstance(action, argparse._SubParsersAction):
            if value in action.choices:
                refuse_empty_values(action.choices[value], args)
        elif action.option_strings and isinstance(value, str) and not value.strip() and value != action.default:
            parser.error(f"{'/'.join(action.option_strings)} is empty (an unset shell variable?): give a value, or "
                         f"leave the option out for its default")


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


def seconds(minimum: float) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, at least `minimum`, refused as it is parsed (a NaN window
    length was a traceback mid-run, and 0.01 s windows a silent mess of 160-sample pieces)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not (math.isfinite(value) and value >= minimum):
            raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds, at least {minimum:g}")
        return value
    return parse


def path(text: str) -> Path:
    """An argparse type for a path option, refusing a blank value (an unset shell variable), which `Path` reads as
    the current folder: `prepare --out "$OUT"` wrote a manifest there."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty (an unset shell variable?)")
    return Path(text)
