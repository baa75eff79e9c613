"""An ablation's report (Table III or II) from MLflow alone: one row per grid row with our test metrics (mean ±
std over folds and seeds) beside the paper's, the paired comparisons with the row above and with the full model,
written as markdown, CSV and a plot. `python orchestration/report.py` is its command; the ablation calls
`build_report` when its grid has run."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from orchestration import mlflow_runs
from orchestration.significance import Comparison, Unit, paired_comparison
from tfmamba.errors import first_line
from tfmamba.paper import paper_numbers

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "tfmamba-table3"
DEFAULT_OUT = "reports"
TABLE_TAG = "table"
FULL_MODEL_ROWS = ("tf_cmdt", "wavlm-large")  # the paper's full model in Tables III and II


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
    paper_row: str = ""
    runs: dict[str, dict[Unit, float]] = field(default_factory=dict)  # metric -> (fold, seed) -> test value
    vs_above: dict[str, Comparison] = field(default_factory=dict)  # metric -> comparison with the row above
    vs_full: dict[str, Comparison] = field(default_factory=dict)  # metric -> comparison with the full model


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
    table = table_name(table)
    if run_id:
        return given_parent_run(uri, run_id)
    found = mlflow_runs.get_experiment_by_name(uri, experiment)
    if found is None:
        raise SystemExit(f"no MLflow experiment {experiment!r} at {uri}")
    runs = mlflow_runs.search_runs(uri, found.experiment_id,
                                   f"tags.{TABLE_TAG} = '{table}' AND tags.run_kind = '{mlflow_runs.SWEEP}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise SystemExit(f"no {table} run in experiment {experiment!r} (give --run-id)")
    return runs[0]


def given_parent_run(uri: str, run_id: str):
    """Run `run_id` when it is a grid's parent run; else exits saying what it is (a row's run names its grid's)."""
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow_runs.get_run(uri, run_id)
    except MlflowException as err:
        raise SystemExit(f"report: no run {run_id} at {uri} ({first_line(err)})") from None
    if TABLE_TAG in run.data.tags:
        return run
    parent_id = run.data.tags.get("mlflow.parentRunId")
    parent = mlflow_runs.get_run(uri, parent_id) if parent_id else None
    if parent is not None and TABLE_TAG in parent.data.tags:
        raise SystemExit(f"report: run {run_id} is a row of the grid run {parent_id}: --run-id {parent_id}")
    kind = run.data.tags.get("run_kind", "other")
    raise SystemExit(f"report: run {run_id} ({run.info.run_name}, a {kind} run) is not an ablation grid's run (it has "
                     f"no {TABLE_TAG!r} tag); give the run ablation.py printed as its parent run, or leave --run-id "
                     f"out for the newest")


def collect_rows(uri: str, parent) -> list[RowResult]:
    """Our numbers per row from the parent's child runs, in the grid's row order, with the paper's beside them."""
    table, corpus = parent.data.tags[TABLE_TAG], parent.data.tags.get("corpus", "demo")
    order = parent.data.tags.get("rows", "").split(",")
    children = mlflow_runs.search_runs(
        uri, parent.info.experiment_id,
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
            seeds=int(metrics.get("seeds", 1)), features=tags.get("features", ""), paper_row=paper_row,
            runs=fold_values(uri, run, keys)))
    rows.sort(key=lambda r: order.index(r.row) if r.row in order else len(order))
    compare_rows(rows, keys)
    return rows


def fold_values(uri: str, row_run, keys: tuple[str, ...]) -> dict[str, dict[Unit, float]]:
    """The test metrics of a row's fold runs (its MLflow children), keyed by (fold, seed)."""
    folds = mlflow_runs.search_runs(
        uri, row_run.info.experiment_id,
        f"tags.mlflow.parentRunId = '{row_run.info.run_id}' AND tags.run_kind = '{mlflow_runs.FOLD}'",
        max_results=10_000)
    values: dict[str, dict[Unit, float]] = {key: {} for key in keys}
    for run in folds:
        unit = (int(run.data.tags.get("fold", 0)), run.data.tags.get("seed", ""))
        for key in keys:
            if f"test_{key}" in run.data.metrics:
                values[key][unit] = run.data.metrics[f"test_{key}"]
    return values


def full_model_row(rows: list[RowResult]) -> RowResult | None:
    """The row of the paper's full model (by its paper row, then its name), if the grid has one."""
    for name in FULL_MODEL_ROWS:
        for row in rows:
            if name in (row.paper_row, row.row):
                return row
    return None


def compare_rows(rows: list[RowResult], keys: tuple[str, ...]) -> None:
    """Fill each row's comparisons with the row above it and with the full model (not with itself)."""
    full = full_model_row(rows)
    for i, row in enumerate(rows):
        for key in keys:
            if i > 0:
                found = paired_comparison(row.runs.get(key, {}), rows[i - 1].runs.get(key, {}), rows[i - 1].row)
                if found is not None:
                    row.vs_above[key] = found
            if full is not None and full is not row:
                found = paired_comparison(row.runs.get(key, {}), full.runs.get(key, {}), full.row)
                if found is not None:
                    row.vs_full[key] = found


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


def _significance(rows: list[RowResult]) -> bool:
    """Whether the rows carry paired comparisons (they do when their fold runs are in MLflow)."""
    return any(r.vs_above or r.vs_full for r in rows)


def _p(value: float | None) -> str:
    """`p=0.041`, `p<0.001` or `p n/a`."""
    return "p n/a" if value is None else f"p={value:.3f}" if value >= 0.001 else "p<0.001"


def _cell(c: Comparison | None) -> str:
    """`+1.2 [-0.3, +2.8] p=0.041`: mean paired difference in points, 95% bootstrap CI, paired t-test p."""
    if c is None:
        return "—"
    return f"{100 * c.mean:+.1f} [{100 * c.low:+.1f}, {100 * c.high:+.1f}] {_p(c.p_t)}"


# How a grid's parent run that is not FINISHED reads in its report (a report rebuilt while it trains, or after it
# was interrupted or lost rows).
UNFINISHED = {"RUNNING": "still running (or its driver was killed: `--resume` finishes it)",
              "KILLED": "interrupted (`--resume` finishes it)", "FAILED": "finished with rows that failed"}


def unfinished(status: str) -> str | None:
    """Why a grid run with this MLflow status is not a finished table, or None for a FINISHED one."""
    return None if status == "FINISHED" else UNFINISHED.get(status, status.lower())


def markdown(rows: list[RowResult], table: str, corpus: str, run_id: str, status: str = "FINISHED") -> str:
    """The table: params and each metric (%, mean ± std over folds and seeds) ours vs paper, and ours - paper."""
    keys = metrics_for(corpus)
    features, seeds, paper_params = _columns(rows)
    significance = _significance(rows)
    full = full_model_row(rows)
    head = ["Row", *(["Features"] if features else []), "Folds", *(["Seeds"] if seeds else []), "Params (ours)",
            *(["Params (paper)"] if paper_params else [])]
    for key in keys:
        head += [f"{key.upper()} ours", f"{key.upper()} paper", f"Δ{key.upper()}"]
        if significance:
            head += [f"{key.upper()} vs above", f"{key.upper()} vs full"]
    over = "folds × seeds" if seeds else "folds"
    lines = [f"# {table}: {corpus} (ours) vs the paper ({paper_corpus(corpus).upper()})", "",
             f"MLflow parent run `{run_id}`. Test metrics in %, mean ± std over {over}; Δ = ours − paper."]
    why = unfinished(status)
    if why:
        lines += ["", f"**Not a finished grid: its run is {why}.** Rows not trained yet are missing, and a row's "
                      f"numbers are over the folds it finished."]
    if significance:
        lines.append(f"\"vs above\" / \"vs full\": this row minus the row above / minus the full model "
                     f"({full.row if full else 'none'}), paired over the {over} both ran: mean difference in points "
                     f"[95% bootstrap CI], paired t-test p (the Wilcoxon signed-rank p is in the CSV). With fewer "
                     f"than ~10 pairs the bootstrap interval is too narrow: read the p.")
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
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
            if significance:
                cells += [_cell(r.vs_above.get(key)), _cell(r.vs_full.get(key))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[RowResult], corpus: str, path: Path) -> None:
    keys = metrics_for(corpus)
    header = ["row", "label", "folds", "params_ours", "params_paper", "seeds", "features"]
    for key in keys:
        header += [f"{key}_mean", f"{key}_std", f"{key}_paper", f"{key}_diff"]
        for side in ("above", "full"):
            header += [f"{key}_vs_{side}_row", f"{key}_vs_{side}_n", f"{key}_vs_{side}_diff", f"{key}_vs_{side}_ci_low",
                       f"{key}_vs_{side}_ci_high", f"{key}_vs_{side}_p_ttest", f"{key}_vs_{side}_p_wilcoxon"]
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
                for found in (r.vs_above.get(key), r.vs_full.get(key)):
                    line += _comparison_fields(found)
            writer.writerow(line)


def _comparison_fields(c: Comparison | None) -> list:
    """CSV cells of a comparison: the other row, pairs, difference and CI in points, the two p-values."""
    if c is None:
        return [""] * 7
    return [c.other, c.n, round(100 * c.mean, 2), round(100 * c.low, 2), round(100 * c.high, 2),
            "" if c.p_t is None else round(c.p_t, 4), "" if c.p_wilcoxon is None else round(c.p_wilcoxon, 4)]


def plot(rows: list[RowResult], table: str, corpus: str, path: Path) -> None:
    """Grouped bars per metric: ours (error bar = std over folds and seeds) beside the paper's; with paired
    comparisons, a second row of panels: each row's difference to the row above and to the full model
    (error bar = 95% bootstrap CI, * where the paired t-test's p < 0.05)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = metrics_for(corpus)
    significance = _significance(rows)
    fig, axes = plt.subplots(2 if significance else 1, len(keys), figsize=(6 * len(keys), 9 if significance else 4.5),
                             squeeze=False)
    x = np.arange(len(rows))
    if significance:
        for ax, key in zip(axes[1], keys):
            _plot_differences(ax, rows, key, x)
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


def _plot_differences(ax, rows: list[RowResult], key: str, x: np.ndarray) -> None:
    """Paired differences (points) to the row above and to the full model, with bootstrap CIs."""
    for offset, side, label in ((-0.2, "vs_above", "vs the row above"), (0.2, "vs_full", "vs the full model")):
        found = [getattr(r, side).get(key) for r in rows]
        means = [100 * c.mean if c else np.nan for c in found]
        errs = np.array([[100 * (c.mean - c.low), 100 * (c.high - c.mean)] if c else [0.0, 0.0] for c in found]).T
        ax.bar(x + offset, means, 0.4, yerr=errs, capsize=3, label=label)
        for xi, c in zip(x + offset, found):
            if c is not None and c.p_t is not None and c.p_t < 0.05:
                ax.annotate("*", (xi, 100 * c.high), ha="center", va="bottom")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, [r.row for r in rows], rotation=30, ha="right")
    ax.set_ylabel(f"paired Δ test {key.upper()} (points)")
    ax.legend(loc="best")


def build_report(uri: str, parent, out_dir: str | Path = DEFAULT_OUT) -> dict[str, Path]:
    """Write `<table>-<corpus>.md/.csv/.png` under `out_dir` from the parent run's children."""
    table, corpus = parent.data.tags[TABLE_TAG], parent.data.tags.get("corpus", "demo")
    rows = collect_rows(uri, parent)
    if not rows:
        raise SystemExit(f"MLflow run {parent.info.run_id} has no row runs")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{table}-{corpus}.{ext}" for ext in ("md", "csv", "png")}
    paths["md"].write_text(markdown(rows, table, corpus, parent.info.run_id, parent.info.status), encoding="utf-8")
    why = unfinished(parent.info.status)
    if why:
        logger.warning("grid run %s is %s: the report shows the rows so far", parent.info.run_id, why)
    write_csv(rows, corpus, paths["csv"])
    plot(rows, table, corpus, paths["png"])
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
