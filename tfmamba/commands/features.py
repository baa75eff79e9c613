"""`tfmamba features --manifest M --extractor NAME --out CACHE`: extract and cache features for a manifest."""

from __future__ import annotations

import argparse
import sys

from tfmamba.commands import MIN_WINDOW_SECONDS, add_device_option, seconds

DESCRIPTION = (
    "Extract features for every utterance of a manifest into a feature cache: sharded Parquet files "
    "(utt_id, n_frames, float16 frames) plus features.json (extractor, revision or weights hash, layer, "
    "dim, frame rate, manifest hash) and problems.csv (skipped clips with the reason). CACHE is a "
    "folder or a URI that pyarrow opens (file://, s3://, gs://). Rerunning resumes: utterances already "
    "in the cache are skipped; a cache of another extractor or manifest is refused. EXTRACTOR is "
    "`fbank` (80 log-mel bins, 100 frames/s, pure torch), `fbank-cmvn` (the same, normalised per "
    "utterance), or a transformers speech encoder by hub name or local folder (WavLM, HuBERT, "
    "wav2vec2, Whisper's encoder)."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("features", help="extract and cache features for a manifest", description=DESCRIPTION)
    parser.add_argument("--manifest", required=True, help="manifest.parquet or the folder holding it")
    parser.add_argument("--extractor", default="microsoft/wavlm-large",
                        help="fbank, fbank-cmvn, or a hub name / local folder (default microsoft/wavlm-large)")
    parser.add_argument("--out", required=True, help="cache folder or URI")
    parser.add_argument("--layer", type=int, default=None,
                        help="hidden layer of an encoder: 0 = input embeddings .. N = last (default last)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per forward pass (default 8)")
    add_device_option(parser)
    parser.add_argument("--max-seconds", type=seconds(MIN_WINDOW_SECONDS), default=30.0,
                        help="clips longer than this run in windows whose outputs are concatenated (default 30; "
                             f"at least {MIN_WINDOW_SECONDS:g})")
    parser.add_argument("--hard-cap-seconds", type=seconds(MIN_WINDOW_SECONDS), default=600.0,
                        help="clips longer than this are skipped into problems.csv (default 600)")
    parser.add_argument("--shard-size", type=int, default=256, help="utterances per Parquet shard (default 256)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (in a log file it is a line every 30 s)")
    parser.set_defaults(func=run, kept_when_interrupted=lambda args: (
        f"the utterances already written to {args.out} are kept, and the same command goes on after them"))


def run(args: argparse.Namespace) -> int:
    from tfmamba.corpora.manifest import manifest_hash, read_manifest
    from tfmamba.features.build import build_cache
    from tfmamba.features.factory import get_extractor

    manifest = read_manifest(args.manifest)
    extractor = get_extractor(args.extractor, layer=args.layer, device=args.device, max_seconds=args.max_seconds)
    report = build_cache(manifest.table, manifest_hash(manifest), extractor, args.out, batch_size=args.batch_size,
                         shard_size=args.shard_size, hard_cap_seconds=args.hard_cap_seconds,
                         progress=not args.no_progress)
    print(report.summary())
    if not report.cache_utts:  # nothing to train on: every utterance was skipped
        moved = ""
        if report.skip_kinds().get("missing file") == report.skipped:
            moved = (f" every clip is missing (the first: {report.problems[0]['path']}): has the audio moved since the "
                     f"manifest was made? Run `tfmamba prepare` again where it lies;")
        print(f"tfmamba features: error: no utterance could be extracted;{moved} why each was skipped is in "
              f"{report.problems_uri}", file=sys.stderr)
        return 1
    return 0
