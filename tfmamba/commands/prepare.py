"""`tfmamba prepare CORPUS --out DIR`: write a manifest, its folds and a problems report."""

from __future__ import annotations

import argparse

from tfmamba.commands import path

DESCRIPTION = (
    "Build a corpus manifest. Writes DIR/manifest.parquet (utt_id, path, label, speaker, "
    "duration, session or split), DIR/folds.json (leave-one-session-out, or MELD's official "
    "split) and DIR/problems.csv (every skipped file with its reason), then prints a summary. "
    "Rerunning with the same options reuses the outputs; other options rebuild them."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prepare", help="build a corpus manifest, folds and problems report", description=DESCRIPTION)
    corpora = parser.add_subparsers(dest="corpus", required=True, metavar="CORPUS")

    iemocap = corpora.add_parser(
        "iemocap",
        help="IEMOCAP: 4 classes (neu, hap+exc, ang, sad), 5 sessions",
        description="IEMOCAP full release: reads SessionN/dialog/EmoEvaluation/*.txt and "
        "SessionN/sentences/wav/. Keeps neu, ang, sad and hap (exc merged into hap); other "
        "labels are dropped and counted. Folds: leave one session out.",
    )
    iemocap.add_argument("--root", required=True, type=path, help="the IEMOCAP_full_release folder")
    iemocap.add_argument("--max-duration", type=float, default=None, help="skip clips longer than this (seconds)")

    meld = corpora.add_parser(
        "meld",
        help="MELD: 7 classes, official train/dev/test split",
        description="MELD.Raw: the three *_sent_emo.csv files and the dia{D}_utt{U}.mp4 clips in "
        "train_splits/, dev_splits_complete/ and output_repeated_splits_test/ (each directly in ROOT or one folder "
        "down, as train/train_splits/). Missing, "
        "undecodable, over-long clips and clips with no row go to problems.csv.",
    )
    meld.add_argument("--root", required=True, type=path, help="the MELD.Raw folder")
    meld.add_argument("--max-duration", type=float, default=60.0, help="skip clips longer than this (seconds; default 60)")

    table = corpora.add_parser(
        "csv",
        help="any corpus from a CSV (path, label, optional utt_id/speaker/session/split)",
        description="A CSV (UTF-8; commas, or the semicolons or tabs a spreadsheet saves with) with columns path and label, optional utt_id, speaker, and session "
        "(leave-one-session-out folds) or split (train/dev/test). Relative paths are resolved "
        "against the CSV's folder. A row with an empty path, label, session or split is skipped "
        "into problems.csv. Values of the label, session or split column that differ only in case "
        "or surrounding spaces (Neutral, neutral) stop the command before anything is written: "
        "fix the CSV, or for labels say what you meant with --labels or --label-map.",
    )
    table.add_argument("--csv", required=True, type=path, help="the label CSV")
    table.add_argument(
        "--labels",
        nargs="+",
        default=None,
        help="class order, matched ignoring case and surrounding spaces; other or empty labels are an error "
        "(default: the sorted labels found)",
    )
    table.add_argument(
        "--label-map",
        action="append",
        default=None,
        metavar="OLD=NEW",
        help="read label OLD as NEW (OLD matched exactly, spaces around it ignored; repeatable), "
        "e.g. --label-map Neutral=neutral",
    )
    table.add_argument("--max-duration", type=float, default=None, help="skip clips longer than this (seconds)")

    demo = corpora.add_parser(
        "demo",
        help="the built-in synthetic demo corpus (about 800 clips, under a minute)",
        description="Generate the demo corpus with numpy: 4 emotions (neu, hap, ang, sad), 5 "
        "sessions x 2 speakers, 1-3 s clips at 16 kHz with emotion in prosody. Deterministic "
        "from --seed; wavs go to DIR/audio/.",
    )
    demo.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    demo.add_argument("--clips-per-speaker", type=int, default=80, help="clips per speaker (default 80: 800 clips)")

    for sub in (iemocap, meld, table, demo):
        sub.add_argument("--out", required=True, type=path, help="output folder")
        sub.add_argument("--valid-fraction", type=float, default=0.1, help="validation share of the training sessions (default 0.1)")
        sub.add_argument("--fold-seed", type=int, default=0, help="seed of the validation choice (default 0)")
        sub.add_argument("--force", action="store_true", help="rebuild even if the outputs are up to date")
        sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from functools import partial

    from tfmamba.corpora.prepare import format_summary, prepare_corpus
    from tfmamba.errors import ConfigError

    if args.corpus == "iemocap":
        from tfmamba.corpora.iemocap import build_iemocap

        options = {"root": str(args.root.resolve()), "max_duration": args.max_duration}
        build = partial(build_iemocap, args.root, max_duration=args.max_duration)
    elif args.corpus == "meld":
        from tfmamba.corpora.meld import build_meld

        options = {"root": str(args.root.resolve()), "max_duration": args.max_duration}
        build = partial(build_meld, args.root, max_duration=args.max_duration)
    elif args.corpus == "csv":
        from tfmamba.corpora.csvfile import build_from_csv, parse_label_map

        label_map = parse_label_map(args.label_map)
        options = {"csv": str(args.csv.resolve()), "labels": args.labels, "max_duration": args.max_duration}
        if label_map:
            options["label_map"] = label_map
        build = partial(build_from_csv, args.csv, labels=args.labels, max_duration=args.max_duration, label_map=label_map)
    else:
        from tfmamba.corpora.demo import generate_demo

        if args.clips_per_speaker < 4:
            raise ConfigError(f"--clips-per-speaker must be at least 4 (one per emotion), got {args.clips_per_speaker}")
        options = {"seed": args.seed, "clips_per_speaker": args.clips_per_speaker}
        build = partial(generate_demo, args.out, seed=args.seed, clips_per_speaker=args.clips_per_speaker)
    if not 0 < args.valid_fraction < 1:
        raise ConfigError(f"--valid-fraction must be between 0 and 1, got {args.valid_fraction}")
    result = prepare_corpus(
        args.corpus,
        build,
        args.out,
        options,
        valid_fraction=args.valid_fraction,
        fold_seed=args.fold_seed,
        force=args.force,
    )
    print(format_summary(result))
    return 0
