"""Rebuild an ablation's table and plot (Table III or II) from MLflow alone, beside the paper's numbers.

    python orchestration/report.py --experiment tfmamba-table3              # the newest table3 run
    python orchestration/report.py --experiment tfmamba-table3 --table 2    # the newest table2 run
    python orchestration/report.py --experiment tfmamba-table3 --run-id ID  # a given parent run

Reads the parent run (tags `table`, `corpus`), its row runs (one child per row: tags `row`,
`paper_row`, `features`, metrics `test_<m>_mean/_std` over folds and seeds, `folds_done`,
`seeds` and `n_params`) and writes
`reports/<table>-<corpus>.md`, `.csv` and `.png`. No training, no Ray: a cluster's results
can be reported on a laptop with the cluster's MLflow URI.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # run as a script: import the installed `orchestration` package, not sibling files

import argparse
import csv
import logging
import os
from dataclasses import dataclass, field

from orchestration import mlflow_runs
from tfmamba.paper import paper_numbers

logger = logging.getLogger("orchestration.report")

DEFAULT_EXPERIMENT = "tfmamba-table3"
DEFAULT_OUT = "reports"
TABLE_TAG = "table"


@dataclass
class RowResult:
    """One row: our mean/std over folds and seeds (as fractions) and the paper's numbers (in %)."""

    row: str
    label: str
    n_params: float | None
    paper_params_m: float | None
    folds: int
    ours: dict[str, tuple[float, float]] = field(default_factory=dict)
    paper: dict[str, float] = field(default_factory=dict)
    seeds: int = 1
    features: str = ""


def metrics_for(corpus: str) -> tuple[str, ...]:
    """The paper reports WF1 on MELD, WA and UA on IEMOCAP (the demo corpus is compared with IEMOCAP)."""
    return ("wf1",) if corpus.lower() == "meld" else ("wa", "ua")


def paper_corpus(corpus: str) -> str:
    return "meld" if corpus.lower() == "meld" else "iemocap"


def table_name(table: str) -> str:
    """`2`, `3` or a table's name (`table2`)."""
    return f"table{table}" if str(table).isdigit() else str(table)


def find_parent_run(uri: str, experiment: str, table: str = "table3", run_id: str | None = None):
    """The given parent run, or the newest run of `table` in `experiment`."""
    client = mlflow_runs.client(uri)
    table = table_name(table)
    if run_id:
        return client.get_run(run_id)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no MLflow experiment {experiment!r} at {uri}")
    runs = client.search_runs([found.experiment_id], f"tags.{TABLE_TAG} = '{table}' AND tags.run_kind = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise SystemExit(f"no {table} run in experiment {experiment!r} (give --run-id)")
    return runs[0]


def collect_rows(uri: str, parent) -> list[RowResult]:
    """Our numbers per row from the parent's child runs, in the grid's row order, with the paper's beside them."""
    table, corpus = parent.data.tags[TABLE_TAG], parent.data.tags.get("corpus", "demo")
    order = parent.data.tags.get("rows", "").split(",")
    children = mlflow_runs.client(uri).search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}' AND tags.run_kind = '{mlflow_runs.TRIAL}'",
        max_results=1000)
    paper_table = paper_numbers().get(table, {})
    keys = metrics_for(corpus)
    rows = []
    for run in children:
        tags, metrics = run.data.tags, run.data.metrics
        name = tags.get("row") or run.data.params.get("row") or run.data.params.get("variant", run.info.run_name)
        paper_row = tags.get("paper_row", name)
        paper = paper_table.get(paper_row, {})
        label = paper.get("label", name) if paper_row == name else (
            f"{name} (paper: {paper['label']})" if "label" in paper else name)
        rows.append(RowResult(
            row=name, label=label, n_params=metrics.get("n_params"),
            paper_params_m=paper.get("params_m"), folds=int(metrics.get("folds_done", 0)),
            ours={k: (metrics[f"test_{k}_mean"], metrics.get(f"test_{k}_std", 0.0)) for k in keys
                  if f"test_{k}_mean" in metrics},
            paper={k: paper[f"{paper_corpus(corpus)}_{k}"] for k in keys if f"{paper_corpus(corpus)}_{k}" in paper},
            seeds=int(metrics.get("seeds", 1)), features=tags.get("features", "")))
    rows.sort(key=lambda r: order.index(r.row) if r.row in order else len(order))
    return rows


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _count(n: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _params(n: float | None, paper_m: float | None) -> tuple[str, str]:
    return _count(n), _count(None if paper_m is None else paper_m * 1e6)


def _columns(rows: list[RowResult]) -> tuple[bool, bool, bool]:
    """Which optional columns the rows need: features (rows on different caches), seeds, the paper's params."""
    return (len({r.features for r in rows}) > 1, any(r.seeds > 1 for r in rows),
            any(r.paper_params_m is not None for r in rows))


def markdown(rows: list[RowResult], table: str, corpus: str, run_id: str) -> str:
    """The table: params and each metric (%, mean ± std over folds and seeds) ours vs paper, and ours - paper."""
    keys = metrics_for(corpus)
    features, seeds, paper_params = _columns(rows)
    head = ["Row", *(["Features"] if features else []), "Folds", *(["Seeds"] if seeds else []), "Params (ours)",
            *(["Params (paper)"] if paper_params else [])]
    for key in keys:
        head += [f"{key.upper()} ours", f"{key.upper()} paper", f"Δ{key.upper()}"]
    over = "folds × seeds" if seeds else "folds"
    lines = [f"# {table}: {corpus} (ours) vs the paper ({paper_corpus(corpus).upper()})", "",
             f"MLflow parent run `{run_id}`. Test metrics in %, mean ± std over {over}; Δ = ours − paper.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ours_params, theirs = _params(r.n_params, r.paper_params_m)
        cells = [r.label, *([r.features] if features else []), str(r.folds), *([str(r.seeds)] if seeds else []),
                 ours_params, *([theirs] if paper_params else [])]
        for key in keys:
            mean, std = r.ours.get(key, (None, None))
            ours = "n/a" if mean is None else f"{100 * mean:.1f} ± {100 * std:.1f}"
            paper = r.paper.get(key)
            diff = "n/a" if mean is None or paper is None else f"{100 * mean - paper:+.1f}"
            cells += [ours, _pct(paper), diff]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[RowResult], corpus: str, path: Path) -> None:
    keys = metrics_for(corpus)
    header = ["row", "label", "folds", "params_ours", "params_paper", "seeds", "features"]
    for key in keys:
        header += [f"{key}_mean", f"{key}_std", f"{key}_paper", f"{key}_diff"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for r in rows:
            line = [r.row, r.label, r.folds, "" if r.n_params is None else int(r.n_params),
                    "" if r.paper_params_m is None else int(r.paper_params_m * 1e6), r.seeds, r.features]
            for key in keys:
                mean, std = r.ours.get(key, (None, None))
                paper = r.paper.get(key)
                line += ["" if mean is None else round(100 * mean, 2), "" if std is None else round(100 * std, 2),
                         "" if paper is None else paper,
                         "" if mean is None or paper is None else round(100 * mean - paper, 2)]
            writer.writerow(line)


def plot(rows: list[RowResult], table: str, corpus: str, path: Path) -> None:
    """Grouped bars per metric: ours (error bar = std over folds and seeds) beside the paper's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = metrics_for(corpus)
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    x = np.arange(len(rows))
    for ax, key in zip(axes[0], keys):
        ours = [100 * r.ours.get(key, (np.nan, 0.0))[0] for r in rows]
        errs = [100 * r.ours.get(key, (0.0, 0.0))[1] for r in rows]
        paper = [r.paper.get(key, np.nan) for r in rows]
        ax.bar(x - 0.2, ours, 0.4, yerr=errs, capsize=3, label=f"ours ({corpus})")
        ax.bar(x + 0.2, paper, 0.4, label=f"paper ({paper_corpus(corpus).upper()})")
        ax.set_xticks(x, [r.row for r in rows], rotation=30, ha="right")
        ax.set_ylabel(f"test {key.upper()} (%)")
        ax.set_ylim(0, 100)
        ax.legend(loc="upper left")
    fig.suptitle(f"{table}: ours ({corpus}) vs the paper ({paper_corpus(corpus).upper()})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_report(uri: str, parent, out_dir: str | Path = DEFAULT_OUT) -> dict[str, Path]:
    """Write `<table>-<corpus>.md/.csv/.png` under `out_dir` from the parent run's children."""
    table, corpus = parent.data.tags[TABLE_TAG], parent.data.tags.get("corpus", "demo")
    rows = collect_rows(uri, parent)
    if not rows:
        raise SystemExit(f"MLflow run {parent.info.run_id} has no row runs")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{table}-{corpus}.{ext}" for ext in ("md", "csv", "png")}
    paths["md"].write_text(markdown(rows, table, corpus, parent.info.run_id), encoding="utf-8")
    write_csv(rows, corpus, paths["csv"])
    plot(rows, table, corpus, paths["png"])
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                        help=f"MLflow experiment (default: {DEFAULT_EXPERIMENT})")
    parser.add_argument("--run-id", default=None, help="the parent run (default: the newest --table run)")
    parser.add_argument("--table", default="table3",
                        help="which table's runs to look for: 3, 2 or a name (default: table3)")
    parser.add_argument("--mlflow-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the files (default: ./{DEFAULT_OUT})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    uri = mlflow_runs.resolve_tracking_uri(args.mlflow_uri)
    parent = find_parent_run(uri, args.experiment, args.table, args.run_id)
    paths = build_report(uri, parent, args.out)
    print(paths["md"].read_text(encoding="utf-8"))
    print("\n".join(f"{ext}: {path}" for ext, path in paths.items()))
    print(f"MLflow parent run: {parent.info.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
