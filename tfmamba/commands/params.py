"""`tfmamba params`: parameter counts of every Table III variant, ours beside the paper's."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "params",
        help="parameter counts of the Table III variants vs the paper",
        description=(
            "Build each Table III variant (baseline, attention, temporal, tf, tf_cmdt, dual_temporal) "
            "with the paper's sizes (WavLM-Large features, D=1024, 4 classes) and print its trainable "
            "parameters beside the paper's count and the difference in percent. "
            "Use --breakdown for a per-module count."
        ),
    )
    parser.add_argument("--input-dim", type=int, default=1024, help="encoder feature size (default 1024, WavLM-Large)")
    parser.add_argument("--num-classes", type=int, default=4, help="emotion classes (default 4, IEMOCAP)")
    parser.add_argument("--d-state", type=int, default=None, help="override the SSM state size (default 128)")
    parser.add_argument("--breakdown", action="store_true", help="also print parameters per module of each variant")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tfmamba.model import VARIANTS, build_model, count_parameters, parameter_breakdown
    from tfmamba.paper import paper_params

    overrides = {} if args.d_state is None else {"d_state": args.d_state}
    print(f"{'variant':<15}{'ours':>12}{'paper':>10}{'diff':>9}")
    counts = {}
    for variant in VARIANTS:
        model = build_model(variant, num_classes=args.num_classes, input_dim=args.input_dim, **overrides)
        ours, paper = count_parameters(model), paper_params(variant)
        counts[variant] = ours
        print(f"{variant:<15}{ours / 1e6:>11.3f}M{paper / 1e6:>9.2f}M{100 * (ours - paper) / paper:>+8.2f}%")
        if args.breakdown:
            for name, count in parameter_breakdown(model, depth=3).items():
                print(f"    {name:<34}{count:>12,}")
    gap, paper_gap = counts["tf"] - counts["dual_temporal"], paper_params("tf") - paper_params("dual_temporal")
    print(f"frequency branch - temporal branch (tf - dual_temporal): {gap:,} (paper: {paper_gap / 1e6:.2f}M)")
    return 0
