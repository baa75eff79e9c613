"""Rebuild an ablation's table and plot (Table III or II) from MLflow alone, beside the paper's numbers.

    python orchestration/report.py --experiment tfmamba-table3              # the newest table3 run
    python orchestration/report.py --experiment tfmamba-table3 --table 2    # the newest table2 run
    python orchestration/report.py --experiment tfmamba-table3 --run-id ID  # a given parent run

Reads the parent run (tags `table`, `corpus`), its row runs (one child per row: tags `row`,
`paper_row`, `features`, metrics `test_<m>_mean/_std` over folds and seeds, `folds_done`,
`seeds` and `n_params`) and their fold runs (children of each row run: tags `fold`, `seed`,
metrics `test_<m>`), and writes `reports/<table>-<corpus>.md`, `.csv` and `.png`. No training,
no Ray: a cluster's results can be reported on a laptop with the cluster's MLflow URI.

Significance: each row is compared with the row above it and with the full model (the row
compared with the paper's `tf_cmdt` in Table III, `wavlm-large` in Table II) on the fold runs
both have (same fold, same seed): the mean paired difference of the test metric, a 95%
bootstrap confidence interval of that mean (10,000 resamples of the pairs, fixed seed), the
paired t-test's two-sided p (`scipy.stats.ttest_rel`) and, in the CSV, the Wilcoxon
signed-rank test's (`scipy.stats.wilcoxon`, exact for few pairs; with 5 pairs or fewer it cannot
go below p = 0.0625, so the t-test is the one shown). With few pairs both are coarse, and the
percentile bootstrap is too narrow (with 3 pairs it can take only 10 values): below ~10 pairs read
the t-test's p, not whether the interval excludes 0; 5 folds x 2 or more seeds make the interval useful.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestration import launch, mlflow_runs, options
from orchestration.preflight import check_local, check_tracking_store
from orchestration.table_report import DEFAULT_EXPERIMENT, DEFAULT_OUT, build_report, find_parent_run
from tfmamba.commands import refuse_empty_values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                        help=f"MLflow experiment (default: {DEFAULT_EXPERIMENT})")
    parser.add_argument("--run-id", default=None, help="the parent run (default: the newest --table run)")
    parser.add_argument("--table", default="table3",
                        help="which table's runs to look for: 3, 2 or a name (default: table3)")
    parser.add_argument("--mlflow-uri", default=None, help=options.MLFLOW_HELP)
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the files (default: ./{DEFAULT_OUT})")
    args = parser.parse_args(argv)
    refuse_empty_values(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    launch.configure_console()
    args = parse_args(argv)
    uri = mlflow_runs.resolve_tracking_uri(args.mlflow_uri)
    problem = check_tracking_store(uri, existing=True)
    if problem:
        raise SystemExit(f"report: MLflow tracking store {uri}: {problem} (give --mlflow-uri or "
                         f"$MLFLOW_TRACKING_URI: the store the ablation wrote to)")
    out_problem = check_local(Path(args.out).resolve(), 0)
    if out_problem:
        raise SystemExit(f"report: --out {args.out}: {out_problem}")
    parent = find_parent_run(uri, args.experiment, args.table, args.run_id)
    paths = build_report(uri, parent, args.out)
    print(paths["md"].read_text(encoding="utf-8"))
    print("\n".join(f"{ext}: {path}" for ext, path in paths.items()))
    print(f"MLflow parent run: {parent.info.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
