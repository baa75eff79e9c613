"""The ablation report's significance columns, rebuilt from MLflow alone, on a grid with known differences, and the
sweep's best fold run chosen on the corpus's metric. Runs are written into a real local MLflow SQLite store, as the
sweep writes them (parent `sweep` run, a `trial` child per row, `fold` children of each row); no Ray."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from orchestration import mlflow_runs

FOLDS, SEEDS = (1, 2, 3), (0, 1)
UNITS = [(f, s) for f in FOLDS for s in SEEDS]
RNG = np.random.default_rng(7)
BASE = 0.50 + 0.04 * RNG.standard_normal(len(UNITS))
# Test UA per (fold, seed): attention is the baseline + 5 points (with noise), tf_cmdt (the full model) the
# attention row + 1 point, dual_temporal the full model - 3 points, temporal identical to attention.
NOISE = 0.005 * RNG.standard_normal((3, len(UNITS)))
GRID = {
    "baseline": BASE,
    "attention": BASE + 0.05 + NOISE[0],
    "temporal": BASE + 0.05 + NOISE[0],
    "tf_cmdt": BASE + 0.06 + NOISE[1],
    "dual_temporal": BASE + 0.03 + NOISE[2],
}


def write_grid(uri: str) -> str:
    """A finished table3 grid on 'demo' in MLflow; returns the parent run id."""
    experiment = mlflow_runs.ensure_experiment(uri, "t3-significance")
    parent = mlflow_runs.get_or_create_run(uri, experiment, mlflow_runs.sweep_tags("g"), "table3")
    mlflow_runs.set_tags(uri, parent, {"table": "table3", "corpus": "demo", "rows": ",".join(GRID)})
    for row, values in GRID.items():
        trial = f"trial-{row}"
        run = mlflow_runs.get_or_create_run(uri, experiment, mlflow_runs.trial_tags("g", trial), row,
                                            parent_run_id=parent)
        mlflow_runs.set_tags(uri, run, {"row": row})
        mlflow_runs.log_metrics(uri, run, {"test_ua_mean": values.mean(), "test_ua_std": values.std(),
                                           "test_wa_mean": values.mean(), "test_wa_std": values.std(),
                                           "folds_done": len(FOLDS), "seeds": len(SEEDS), "n_params": 1000.0})
        for (fold, seed), value in zip(UNITS, values):
            tags = mlflow_runs.fold_tags("g", trial, fold) | {"seed": str(seed)}
            fold_run = mlflow_runs.get_or_create_run(uri, experiment, tags, f"{trial}-fold{fold}-seed{seed}",
                                                     parent_run_id=run)
            mlflow_runs.log_metrics(uri, fold_run, {"test_ua": value, "test_wa": value})
            mlflow_runs.end_run(uri, fold_run)
        mlflow_runs.end_run(uri, run)
    mlflow_runs.end_run(uri, parent)
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    return uri, write_grid(uri)


def cells(markdown: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return rows[0], {row[0]: row for row in rows[1:]}


def test_significance_columns_from_mlflow_alone(store, tmp_path: Path) -> None:
    from orchestration.table_report import build_report, collect_rows, find_parent_run

    uri, parent_id = store
    parent = find_parent_run(uri, "t3-significance", "table3")
    assert parent.info.run_id == parent_id
    rows = {r.row: r for r in collect_rows(uri, parent)}
    assert len(rows["attention"].runs["ua"]) == len(UNITS)

    def expect(row: str, other: str):
        diff = GRID[row] - GRID[other]
        return diff.mean(), stats.ttest_rel(GRID[row], GRID[other]).pvalue, stats.wilcoxon(diff).pvalue

    for row, side, other in [("attention", "vs_above", "baseline"), ("attention", "vs_full", "tf_cmdt"),
                             ("tf_cmdt", "vs_above", "temporal"), ("dual_temporal", "vs_above", "tf_cmdt"),
                             ("baseline", "vs_full", "tf_cmdt")]:
        found = getattr(rows[row], side)["ua"]
        mean, p_t, p_w = expect(row, other)
        assert found.other == other and found.n == len(UNITS)
        assert found.mean == pytest.approx(mean) and found.p_t == pytest.approx(p_t)
        assert found.p_wilcoxon == pytest.approx(p_w)
        diff = GRID[row] - GRID[other]
        assert diff.min() <= found.low <= mean <= found.high <= diff.max()
    assert rows["attention"].vs_above["ua"].mean == pytest.approx(0.05, abs=0.005)
    assert rows["attention"].vs_above["ua"].low > 0 and rows["attention"].vs_above["ua"].p_t < 0.001
    assert rows["dual_temporal"].vs_full["ua"].high < 0  # 3 points below the full model, the CI says so
    same = rows["temporal"].vs_above["ua"]  # identical on every run
    assert (same.mean, same.low, same.high, same.p_t, same.p_wilcoxon) == (0.0, 0.0, 0.0, 1.0, 1.0)
    assert not rows["baseline"].vs_above and not rows["tf_cmdt"].vs_full

    paths = build_report(uri, parent, tmp_path / "reports")
    markdown = paths["md"].read_text(encoding="utf-8")
    header, table = cells(markdown)
    assert {"WA vs above", "WA vs full", "UA vs above", "UA vs full"} <= set(header)
    attention = table["+ Self-Attention Encoder"]
    c = rows["attention"].vs_above["ua"]
    assert attention[header.index("UA vs above")] == (f"{100 * c.mean:+.1f} [{100 * c.low:+.1f}, {100 * c.high:+.1f}]"
                                                      f" p<0.001")
    assert table["+ Temporal-Domain Mamba"][header.index("UA vs above")] == "+0.0 [+0.0, +0.0] p=1.000"
    assert table["Baseline"][header.index("UA vs above")] == "—"
    assert table["+ CMDT Loss (Full model)"][header.index("UA vs full")] == "—"
    assert "paired t-test p" in markdown and "mean ± std over folds × seeds" in markdown

    with paths["csv"].open(encoding="utf-8") as fh:
        by_row = {r["row"]: r for r in csv.DictReader(fh)}
    dual = by_row["dual_temporal"]
    assert dual["ua_vs_full_row"] == "tf_cmdt" and int(dual["ua_vs_full_n"]) == len(UNITS)
    assert float(dual["ua_vs_full_diff"]) == pytest.approx(100 * (GRID["dual_temporal"] - GRID["tf_cmdt"]).mean(),
                                                           abs=0.01)
    assert float(dual["ua_vs_full_p_wilcoxon"]) == pytest.approx(expect("dual_temporal", "tf_cmdt")[2], abs=1e-4)
    assert by_row["baseline"]["ua_vs_above_row"] == "" and by_row["baseline"]["ua_vs_full_row"] == "tf_cmdt"
    assert paths["png"].stat().st_size > 10_000


def test_rows_without_fold_runs_keep_the_plain_table() -> None:
    from orchestration.table_report import RowResult, compare_rows, markdown

    rows = [RowResult("tf", "+ Frequency-Domain Mamba", 1e6, 20.79, 3, ours={"wa": (0.5, 0.01), "ua": (0.5, 0.01)}),
            RowResult("tf_cmdt", "+ CMDT Loss (Full model)", 1e6, 20.79, 3, ours={"wa": (0.6, 0.01), "ua": (0.6, 0.01)},
                      runs={"ua": {(1, ""): 0.6}})]  # one pair is not enough to compare
    compare_rows(rows, ("wa", "ua"))
    header, _ = cells(markdown(rows, "table3", "demo", "abc"))
    assert not any("vs" in h for h in header)


def test_the_sweep_picks_its_best_fold_run_on_the_corpus_metric(tmp_path: Path) -> None:
    from orchestration.results import best_fold_run
    from orchestration.search_space import load_search_space
    from orchestration.trial import METRIC, SweepContext, objective

    space = load_search_space("demo")
    assert objective("meld", space) == ("valid_wf1_mean", "max")
    assert objective("iemocap", space) == objective("demo") == (METRIC, "max") == ("valid_ua_mean", "max")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = mlflow_runs.ensure_experiment(uri, "meld-sweep")
    for fold, (ua, wf1) in enumerate([(0.60, 0.40), (0.50, 0.45)], start=1):
        run = mlflow_runs.get_or_create_run(uri, experiment, mlflow_runs.fold_tags("s", "t1", fold), f"fold{fold}")
        mlflow_runs.log_metrics(uri, run, {"valid_ua_best": ua, "valid_wf1_best": wf1})
    names = {}
    for corpus in ("meld", "iemocap"):
        metric, mode = objective(corpus, space)
        ctx = SweepContext(sweep_id="s", space=space, manifest_dir="", cache="", folds=(1, 2), out_root="",
                           train_storage="", tracking_uri=uri, experiment_id=experiment, parent_run_id="",
                           metric=metric, mode=mode)
        names[corpus] = mlflow_runs.client(uri).get_run(best_fold_run(ctx, "t1")).info.run_name
    assert names == {"meld": "fold2", "iemocap": "fold1"}


def test_the_report_names_a_missing_or_unreachable_store_and_creates_none(tmp_path: Path) -> None:
    """`report.py` only reads: a SQLite store that is not there is named (it used to create an empty one and
    report no experiment), a down server too (it used to wait ~2 minutes and end in a traceback)."""
    from servers import free_port

    from orchestration.report import main

    missing = tmp_path / "elsewhere.db"
    with pytest.raises(SystemExit, match=rf"sqlite:///{missing}: no such file {missing}"):
        main(["--mlflow-uri", f"sqlite:///{missing}", "--out", str(tmp_path / "reports")])
    assert not missing.exists()
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit, match=rf"MLflow tracking store {down}: cannot reach it"):
        main(["--mlflow-uri", down, "--out", str(tmp_path / "reports")])
    assert not (tmp_path / "reports").exists()


def test_a_run_id_that_is_not_a_grid_run_or_an_out_that_cannot_be_written_is_named(store, tmp_path: Path) -> None:
    """`--run-id` of a row's run or of a sweep (picked in the MLflow UI) ended in `KeyError: 'table'`, an unknown id
    in MLflow's traceback, and an `--out` that cannot be written failed only after the runs were read."""
    from orchestration.report import main

    uri, parent = store
    client = mlflow_runs.client(uri)
    experiment = client.get_run(parent).info.experiment_id
    row = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'", max_results=1)[0].info.run_id
    sweep = mlflow_runs.get_or_create_run(uri, experiment, mlflow_runs.sweep_tags("s"), "a-sweep")
    out = ["--mlflow-uri", uri, "--out", str(tmp_path / "reports")]
    with pytest.raises(SystemExit, match=f"^report: run {row} is a row of the grid run {parent}: --run-id {parent}$"):
        main([*out, "--run-id", row])
    with pytest.raises(SystemExit, match=f"^report: run {sweep} \\(a-sweep, a sweep run\\) is not an ablation grid's "
                                         "run \\(it has no 'table' tag\\)"):
        main([*out, "--run-id", sweep])
    with pytest.raises(SystemExit, match=f"^report: no run nosuch at {uri} \\(Run with id=nosuch not found\\)$"):
        main([*out, "--run-id", "nosuch"])
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SystemExit, match=f"^report: --out {blocker}/reports: {blocker} is a file, not a folder$"):
        main(["--mlflow-uri", uri, "--out", str(blocker / "reports"), "--run-id", parent])
    assert not (tmp_path / "reports").exists()
