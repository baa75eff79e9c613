"""`tfmamba predict AUDIO... --model PATH_OR_URI`: one line per clip (label and class probabilities), CSV for many."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tfmamba.commands import MIN_WINDOW_SECONDS, add_device_option, seconds

CSV_THRESHOLD = 10
DEFAULT_CSV = "predictions.csv"
# MLflow's HTTP client retries 7 times with growing waits and a 120 s timeout: a down tracking server took 4 minutes
# to report. A person waiting for a prediction gets 2 retries and 30 s (values in the environment win).
MLFLOW_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}

DESCRIPTION = (
    "Predict the emotion of audio clips with a trained model. AUDIO is any number of files or folders (searched "
    "recursively for wav/flac/ogg/mp3/mp4/m4a/...); any sample rate, stereo is mixed to mono. A clip longer than "
    "--window-seconds (default: the extractor's max_seconds, 30 s) is cut into windows whose class probabilities "
    "are averaged (weighted by length), so there is one prediction per clip. Prints one line per file: the file, "
    "the predicted emotion and the class probabilities; a file that cannot be read gets a line with the error "
    f"and is skipped. With a folder or more than {CSV_THRESHOLD} files, the predictions also go to a CSV "
    f"(--csv, default ./{DEFAULT_CSV}, never overwriting an existing file). Exit status 1 only when no file "
    "could be predicted, 2 when the model or a setting is wrong or AUDIO holds no audio file."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="predict the emotion of audio files", description=DESCRIPTION)
    parser.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files or folders")
    parser.add_argument("--model", required=True, metavar="PATH_OR_URI",
                        help="a `tfmamba train` output folder, runs:/<run id>/model, models:/tfmamba-ser/<version>, or "
                             "a model's artifact URI as the MLflow UI shows it (s3://..., mlflow-artifacts:/...)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI for runs:/, models:/ and mlflow-artifacts:/ (default: "
                             "MLFLOW_TRACKING_URI)")
    parser.add_argument("--csv", default=None, metavar="OUT.csv",
                        help=f"write the predictions to this CSV (default: ./{DEFAULT_CSV} with a folder or more "
                             f"than {CSV_THRESHOLD} files)")
    parser.add_argument("--window-seconds", type=seconds(MIN_WINDOW_SECONDS), default=None,
                        help="window length for long clips (default: the extractor's max_seconds, 30 s; at least "
                             f"{MIN_WINDOW_SECONDS:g})")
    parser.add_argument("--extractor", default=None, metavar="FOLDER_OR_NAME",
                        help="the speech encoder to extract features with, in place of the one the model names "
                             "(model.json's feature extractor): for a model trained on a local copy of an encoder "
                             "that this machine keeps elsewhere or not at all, e.g. a folder holding "
                             "microsoft/wavlm-large. Its dims and frame rate must match the model's; another "
                             "revision is warned about")
    add_device_option(parser)
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (when stderr is not a terminal, e.g. a log file, they update every 30 s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tfmamba.errors import DataError, write_failure
    from tfmamba.locations import check_writable
    from tfmamba.predict import AUDIO_SUFFIXES, Predictor, find_audio, write_csv
    from tfmamba.progress_bar import progress_bar

    paths = find_audio(args.audio)
    if not paths:  # before the model is downloaded and loaded for nothing
        raise DataError(f"no audio files in {', '.join(args.audio)} (searched for {', '.join(sorted(AUDIO_SUFFIXES))})")
    many = len(paths) > CSV_THRESHOLD or any(Path(p).is_dir() for p in args.audio)
    csv_path = Path(args.csv) if args.csv else (_free_name(Path(DEFAULT_CSV)) if many else None)
    if csv_path is not None:  # before the clips are predicted, for a CSV that could not be written at the end
        try:
            check_writable(csv_path)
        except OSError as err:
            raise DataError(f"{csv_path}: cannot write the predictions there ({write_failure(err)}); "
                            f"give another place with --csv") from None
    # MLflow's download bar: off when asked, and in a log file (where it is a flood of carriage returns)
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"} if args.no_progress or not sys.stderr.isatty() else {}
    with environment_defaults(MLFLOW_HTTP_ENV | quiet):
        predictor = Predictor.load(args.model, device=args.device, window_seconds=args.window_seconds,
                                   tracking_uri=args.tracking_uri, extractor=args.extractor)
    bar = progress_bar(total=len(paths), unit="file", desc="predict", disable=args.no_progress or len(paths) < 2)
    results = []
    try:
        for prediction in predictor.iter_predictions(paths):
            results.append(prediction)
            bar.write(format_line(prediction), file=sys.stdout)
            bar.update(1)
    except KeyboardInterrupt:
        print(f"tfmamba predict: interrupted after {len(results)} of {len(paths)} files", file=sys.stderr)
        return 130
    finally:  # the files done so far reach the CSV, even when interrupted
        bar.close()
        if csv_path is not None and results:
            write_csv(csv_path, results, predictor.labels)
            print(f"predictions written to {csv_path}")
    done = sum(p.ok for p in results)
    failed = len(results) - done
    print(f"{done} of {len(results)} files predicted" + (f", {failed} skipped (errors above)" if failed else ""),
          file=sys.stderr)
    if not done:
        print("tfmamba predict: error: no file could be predicted", file=sys.stderr)
        return 1
    return 0


@contextmanager
def environment_defaults(defaults: dict[str, str]) -> Iterator[None]:
    """The variables of `defaults` that the environment lacks, set for a while (then removed again)."""
    added = {key: value for key, value in defaults.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def format_line(prediction) -> str:
    """`path  label  neu 0.12 hap 0.80 ...`, or `path  ERROR  reason`."""
    if not prediction.ok:
        return f"{prediction.path}\tERROR\t{prediction.error}"
    probs = "  ".join(f"{label} {p:.3f}" for label, p in prediction.probabilities.items())
    return f"{prediction.path}\t{prediction.label}\t{probs}"


def _free_name(path: Path) -> Path:
    """`path`, or `stem-1.csv`, `stem-2.csv`, ... when it exists, so earlier results are never overwritten."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
