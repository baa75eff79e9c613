"""The `tfmamba` command line: one subcommand per step of the pipeline.

Each subcommand lives in its own module under `tfmamba.commands` and exposes
`register(subparsers)`, which adds its parser and sets `func`. Heavy imports stay
inside the command functions so that `tfmamba --help` is instant.
"""

from __future__ import annotations

import argparse
import codecs
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from tfmamba.commands import refuse_empty_values
from tfmamba.errors import TFMambaError, write_failure

COMMANDS: tuple[str, ...] = ("params", "prepare", "features", "train", "predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfmamba",
        description=(
            "TF-Mamba speech emotion recognition. Typical flow: "
            "`tfmamba prepare demo --out data/demo` (a manifest), "
            "`tfmamba features ...` (a cached feature store), then train. "
            "Run `tfmamba COMMAND --help` for each step."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"tfmamba.commands.{name}").register(sub)
    return parser


def tolerate_narrow_consoles() -> None:
    """A console whose encoding cannot write λ, τ, ω or ± (latin-1, ASCII, a Windows code page) shows `?` for them
    instead of ending the command in a UnicodeEncodeError; a UTF-8 console is left as it is."""
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None) or "ascii"
        if codecs.lookup(encoding).name != "utf-8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")


def main(argv: Sequence[str] | None = None) -> int:
    tolerate_narrow_consoles()
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_empty_values(parser, args)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    restore_sigterm = _stop_on_sigterm()
    try:
        return int(args.func(args) or 0)
    except TFMambaError as err:
        print(f"tfmamba {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGINT or SIGTERM from a job scheduler: one line saying what is kept
        print(f"tfmamba {args.command}: interrupted{_what_is_kept(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tfmamba predict ... | head`: the reader has what it wanted; end as piped tools end
        _let_go_of_stdout()
        return 128 + signal.SIGPIPE
    except OSError as err:  # the machine's trouble, not the input's: a full disk, a permission, a mount gone
        logging.getLogger(__name__).debug("the failed call", exc_info=True)
        where = f": {err.filename}" if err.filename else ""
        print(f"tfmamba {args.command}: error: {write_failure(err)}{where} (tfmamba -v shows where it happened)",
              file=sys.stderr)
        return 1
    finally:
        restore_sigterm()


def _let_go_of_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail on the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _what_is_kept(args: argparse.Namespace) -> str:
    """`; ` and what an interrupted command leaves to go on from (its `kept_when_interrupted`), or nothing."""
    kept = getattr(args, "kept_when_interrupted", None)
    try:
        return f"; {kept(args)}" if kept else ""
    except Exception:  # a damaged checkpoint, say: the interruption is still reported
        logging.getLogger(__name__).debug("what is kept", exc_info=True)
        return ""


def _stop_on_sigterm() -> Callable[[], None]:
    """SIGTERM (a batch job's time limit, `docker stop`) ends a command as Ctrl-C does, with its line saying what is
    kept, instead of at once and silently; returns what puts the handler it replaced back (on the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the command at once
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
