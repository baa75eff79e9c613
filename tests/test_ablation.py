"""Table III: the grid file, and end to end on a tiny demo corpus: the six-row Tune grid (1 fold x 1 epoch, tiny
model) on a local Ray, MLflow in a temp SQLite store, then the report rebuilt from MLflow alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_sweep import TINY

ROOT = Path(__file__).resolve().parent.parent
ABLATION = ROOT / "orchestration" / "ablation.py"
REPORT = ROOT / "orchestration" / "report.py"
ROWS = ("Baseline", "+ Self-Attention Encoder", "+ Temporal-Domain Mamba", "+ Frequency-Domain Mamba",
        "+ CMDT Loss (Full model)", "Dual Temporal-Domain Mamba")



def test_table3_grid_rows_and_settings() -> None:
    from orchestration.grid import load_grid
    from tfmamba.model import VARIANTS

    grid = load_grid("table3", demo=True, overrides={"epochs": 1})
    assert grid.table == "table3" and tuple(grid.rows) == VARIANTS
    assert grid.space.base == "demo" and grid.space.fixed["epochs"] == 1
    weights = {name: grid.space.trial_config(row).cmdt_weight for name, row in grid.rows.items()}
    assert weights == {"baseline": 0.0, "attention": 0.0, "temporal": 0.0, "tf": 0.0, "tf_cmdt": 0.1,
                       "dual_temporal": 0.0}
    assert grid.space.trial_config(grid.rows["tf"]).variant == "tf"
    space = grid.param_space()
    assert space["variant"] == {"grid_search": list(VARIANTS)}
    assert space["cmdt_weight"].func({"config": {"variant": "tf_cmdt"}}) == 0.1
    assert load_grid("table3", demo=False).space.base == "paper"


def test_grid_errors_name_the_problem(tmp_path: Path) -> None:
    from orchestration.grid import load_grid
    from orchestration.search_space import SearchSpaceError

    bad = tmp_path / "bad.yaml"
    for text, message in [("rows: {a: {cmdt_weight: 0.1}}", "every row needs a 'variant'"),
                          ("rows: {a: {variant: tf, lr_typo: 1}}", "unknown setting"),
                          ("rows: {a: {variant: tf}, b: {variant: tf}}", "its own variant"),
                          ("rows: {a: {variant: nope}}", "variant"),
                          ("rows: {a: {variant: tf}}\nextra: 1", "unknown key")]:
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(SearchSpaceError, match=message):
            load_grid(bad, demo=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    from tfmamba.demo import ensure_demo_data

    return ensure_demo_data(tmp_path_factory.mktemp("demo"), clips_per_speaker=12, progress=False)


def run_cli(command: list[str], cwd: Path, timeout: float = 420) -> str:
    done = subprocess.run(command, cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    return output


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_meld_table_reports_wf1_beside_the_paper() -> None:
    from orchestration.report import RowResult, markdown

    rows = [RowResult("tf_cmdt", "+ CMDT Loss (Full model)", 20_500_000, 20.79, 3, ours={"wf1": (0.471, 0.004)},
                      paper={"wf1": 48.5})]
    header, row = table_rows(markdown(rows, "table3", "meld", "abc"))
    assert header == ["Row", "Folds", "Params (ours)", "Params (paper)", "WF1 ours", "WF1 paper", "ΔWF1"]
    assert row == ["+ CMDT Loss (Full model)", "3", "20.50M", "20.79M", "47.1 ± 0.4", "48.5", "-1.4"]


@pytest.mark.slow
def test_table3_demo_grid_and_report(demo, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [arg for item in TINY for arg in ("--set", item)]
    output = run_cli([sys.executable, str(ABLATION), "--demo", "--manifest", str(demo.manifest_dir), "--cache",
                      str(demo.cache), "--folds", "1", "--storage-path", str(tmp_path / "ray"), "--name", "t3",
                      "--mlflow-uri", uri, "--experiment", "t3-test", *sets], tmp_path)
    report = tmp_path / "reports" / "table3-demo.md"
    assert f"md: {report}" in output and "MLflow parent run:" in output
    assert (tmp_path / "reports" / "table3-demo.png").stat().st_size > 10_000
    markdown = report.read_text(encoding="utf-8")
    header, *rows = table_rows(markdown)
    assert {"Params (ours)", "Params (paper)", "WA ours", "WA paper", "UA ours", "UA paper", "ΔUA"} <= set(header)
    assert [row[0] for row in rows] == list(ROWS)
    paper_ua = [row[header.index("UA paper")] for row in rows]
    assert paper_ua == ["65.3", "69.9", "72.3", "74.3", "75.7", "72.7"]
    assert all("±" in row[header.index("UA ours")] and row[header.index("Folds")] == "1" for row in rows)
    csv_lines = (tmp_path / "reports" / "table3-demo.csv").read_text(encoding="utf-8").splitlines()
    assert len(csv_lines) == 7 and csv_lines[0].startswith("row,label,folds,params_ours,params_paper")

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("t3-test")
    parent = client.search_runs([experiment.experiment_id], "tags.run_kind = 'sweep'")
    assert len(parent) == 1 and parent[0].info.run_name == "table3" and parent[0].info.status == "FINISHED"
    parent_id = parent[0].info.run_id
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(run.info.run_name for run in children) == sorted(
        ("baseline", "attention", "temporal", "tf", "tf_cmdt", "dual_temporal"))
    weights = {run.info.run_name: float(run.data.params["cmdt_weight"]) for run in children}
    assert weights["tf"] == 0.0 and weights["tf_cmdt"] == 0.1
    params = {run.info.run_name: run.data.metrics["n_params"] for run in children}
    assert params["baseline"] < params["attention"] < params["temporal"] < params["tf"] == params["tf_cmdt"]
    for run in children:
        folds = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        assert [f.data.tags["fold"] for f in folds] == ["1"] and folds[0].info.status == "FINISHED"

    rebuilt = tmp_path / "rebuilt"
    run_cli([sys.executable, str(REPORT), "--experiment", "t3-test", "--mlflow-uri", uri, "--out", str(rebuilt)],
            tmp_path)
    assert (rebuilt / "table3-demo.md").read_text(encoding="utf-8") == markdown
    assert (rebuilt / "table3-demo.png").exists()
