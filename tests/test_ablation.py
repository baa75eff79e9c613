"""Tables III and II: the grid files, and end to end on a tiny demo corpus: the six-row Tune grid (1 fold x 1 epoch,
tiny model) on a local Ray, MLflow in a temp SQLite store, then the report rebuilt from MLflow alone; Table II's
demo rows on their own caches over two seeds, one row failing on a broken cache and resumed."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_sweep import TINY, compared_runs, interrupt_after_a_fold, run_tree

ROOT = Path(__file__).resolve().parent.parent
ABLATION = ROOT / "orchestration" / "ablation.py"
REPORT = ROOT / "orchestration" / "report.py"
ROWS = ("Baseline", "+ Self-Attention Encoder", "+ Temporal-Domain Mamba", "+ Frequency-Domain Mamba",
        "+ CMDT Loss (Full model)", "Dual Temporal-Domain Mamba")


def test_table3_grid_rows_and_settings(caplog: pytest.LogCaptureFixture) -> None:
    from ray.tune.search.variant_generator import generate_variants

    from orchestration.grid import load_grid
    from tfmamba.model import VARIANTS

    grid = load_grid("table3", demo=True, overrides={"epochs": 1})
    assert grid.table == "table3" and tuple(grid.rows) == VARIANTS
    assert grid.space.base == "demo" and grid.space.fixed["epochs"] == 1
    weights = {name: grid.space.trial_config(row).cmdt_weight for name, row in grid.rows.items()}
    assert weights == {"baseline": 0.0, "attention": 0.0, "temporal": 0.0, "tf": 0.0, "tf_cmdt": 0.1,
                       "dual_temporal": 0.1}
    assert grid.space.trial_config(grid.rows["tf"]).model.variant == "tf"
    space = grid.param_space()
    assert space["row"] == {"grid_search": list(VARIANTS)}
    sample_log = logging.getLogger("ray.tune.search.sample")  # where Tune warns of deprecated sample_from calls
    sample_log.addHandler(caplog.handler)
    try:
        variants = [config for _, config in generate_variants(space)]  # as Tune resolves the grid
    finally:
        sample_log.removeHandler(caplog.handler)
    assert [(c["row"], c["cmdt_weight"], c["variant"]) for c in variants] == [
        (name, weights[name], name) for name in VARIANTS]
    assert not caplog.records, caplog.text
    assert load_grid("table3", demo=False).space.base == "paper"


@pytest.mark.parametrize("demo_rows", [False, True])
def test_dual_temporal_row_differs_from_the_full_model_only_in_the_branch(demo_rows: bool) -> None:
    """The paper's frequency-branch gains are the full model minus the dual row: same settings, CMDT included."""
    from orchestration.grid import load_grid

    grid = load_grid("table3", demo=demo_rows)
    full = grid.space.trial_config(grid.rows["tf_cmdt"]).to_dict()
    dual = grid.space.trial_config(grid.rows["dual_temporal"]).to_dict()
    assert {k for k in full if full[k] != dual[k]} == {"variant"}
    assert dual["cmdt_weight"] == full["cmdt_weight"] == 0.1


def test_grid_errors_name_the_problem(tmp_path: Path) -> None:
    from orchestration.grid import load_grid
    from orchestration.search_space import SearchSpaceError

    bad = tmp_path / "bad.yaml"
    for text, message in [("rows: {a: 3}", "rows must map"),
                          ("rows: {a: {variant: tf, lr_typo: 1}}", "unknown setting"),
                          ("rows: {a: {variant: nope}}", "variant"),
                          ("rows: {a: {variant: tf}}\nextra: 1", "unknown key")]:
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(SearchSpaceError, match=message):
            load_grid(bad, demo=True)


def test_table2_grid_rows_caches_and_paper_numbers(tmp_path: Path) -> None:
    from orchestration.grid import load_grid
    from orchestration.search_space import SearchSpaceError
    from tfmamba.paper import paper_numbers

    paper = paper_numbers()["table2"]
    assert list(paper) == ["wav2vec2-base", "wav2vec2-large", "hubert-base", "hubert-large", "wavlm-base",
                           "wavlm-large", "whisper-base", "whisper-large"]
    assert (paper["wavlm-large"]["iemocap_ua"], paper["whisper-base"]["iemocap_wa"], paper["hubert-large"]["meld_wf1"]
            ) == (75.7, 62.8, 42.9)
    grid = load_grid("table2", demo=False)
    assert list(grid.rows) == list(paper) and grid.space.params == {}
    assert all(grid.space.trial_config(row).model.variant == "tf_cmdt" and grid.space.trial_config(row).cmdt_weight == 0.1
               for row in grid.rows.values())
    caches = grid.row_caches(str(tmp_path), {"whisper-large": "s3://bucket/whisper"})
    assert caches["wavlm-large"] == str(tmp_path / "wavlm-large") and caches["whisper-large"] == "s3://bucket/whisper"
    assert grid.info["hubert-large"].extractor == "facebook/hubert-large-ll60k"
    assert list(grid.select(["wavlm-large", "hubert-base"]).rows) == ["hubert-base", "wavlm-large"]
    with pytest.raises(SearchSpaceError, match="no row"):
        grid.select(["wavlm-xl"])
    assert list(grid.select("wavlm-large, hubert-base".split(",")).rows) == ["hubert-base", "wavlm-large"]
    with pytest.raises(SearchSpaceError, match="no rows given to run"):  # `--rows "$ROWS"` unset ran every row
        grid.select("".split(","))
    demo_grid = load_grid("table2", demo=True)
    assert list(demo_grid.rows) == ["fbank", "tiny-wav2vec2", "tiny-hubert", "tiny-wavlm"]
    assert {n: i.paper_row for n, i in demo_grid.info.items()} == {
        "fbank": None, "tiny-wav2vec2": "wav2vec2-base", "tiny-hubert": "hubert-base", "tiny-wavlm": "wavlm-base"}
    assert demo_grid.param_space() == {"row": {"grid_search": list(demo_grid.rows)}}


def test_seeds_repeat_each_fold_and_aggregate() -> None:
    from orchestration.rows import parse_seeds
    from orchestration.trial import SweepContext, parse_unit, summarize, unit_key

    assert parse_seeds("3") == (0, 1, 2) and parse_seeds("4,7") == (4, 7) and parse_seeds(None) == ()
    for empty in ("", " ", ","):  # an unset shell variable: '' ran each fold once, ' ' was an IndexError
        with pytest.raises(SystemExit, match="give at least one seed"):
            parse_seeds(empty)
    ctx = SweepContext("s", None, "m", "c", (1,), "o", "t", "u", "e", "p", seeds=(0, 1))
    assert ctx.units() == [(1, 0), (1, 1)] and SweepContext("s", None, "m", "c", (1, 2), "o", "t", "u", "e",
                                                            "p").units() == [(1, None), (2, None)]
    assert [parse_unit(unit_key(u)) for u in [(1, 0), (3, None)]] == [(1, 0), (3, None)]
    runs = {(1, 0): {"test": {"wf1": 0.40}}, (1, 1): {"test": {"wf1": 0.46}}}
    summary = summarize(runs, seeds=2)
    assert summary["folds_done"] == 1 and summary["runs_done"] == 2 and summary["seeds"] == 2
    assert summary["test_wf1_mean"] == pytest.approx(0.43) and summary["test_wf1_std"] == pytest.approx(0.03)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    from tfmamba.demo import ensure_demo_data

    return ensure_demo_data(tmp_path_factory.mktemp("demo"), clips_per_speaker=12, progress=False)


def test_table2_missing_cache_stops_before_training_with_the_command(demo, tmp_path: Path) -> None:
    from orchestration.ablation import main

    with pytest.raises(SystemExit, match=r"(?s)no feature cache for row\(s\) \['hubert-large'\].*"
                                         r"tfmamba features --manifest .* --extractor facebook/hubert-large-ll60k "
                                         rf"--out {tmp_path}/hubert-large"):
        main(["--table", "2", "--manifest", str(demo.manifest_dir), "--caches-root", str(tmp_path),
              "--rows", "wavlm-large,hubert-large", "--row-cache", f"wavlm-large={demo.cache}"])
    with pytest.raises(SystemExit, match="unknown row"):
        main(["--table", "2", "--manifest", str(demo.manifest_dir), "--row-cache", "wavlm-xl=/x"])


def test_grid_refuses_to_start_when_results_cannot_be_written(demo, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestration.ablation import main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"(?s)cannot write the results, nothing was started.*is a file, not a folder"):
        main(["--manifest", str(demo.manifest_dir), "--cache", str(demo.cache), "--rows", "baseline",
              "--storage-path", str(blocker / "ray"), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    # the report is written after the last row: a folder it cannot go to is named before the first
    with pytest.raises(SystemExit, match=rf"(?s)nothing was started.*report folder \(--out\) {blocker}/reports: "
                                         rf"{blocker} is a file, not a folder"):
        main(["--manifest", str(demo.manifest_dir), "--cache", str(demo.cache), "--rows", "baseline",
              "--storage-path", str(tmp_path / "ray"), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
              "--out", str(blocker / "reports")])
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()


def run_cli(command: list[str], cwd: Path, timeout: float = 420) -> str:
    done = subprocess.run(command, cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    return output


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.mark.slow
def test_a_grid_stopped_by_sigterm_says_so_and_resumes(demo, tmp_path: Path) -> None:
    """SIGTERM (a batch job's time limit, `docker stop`) during a grid's second fold stops it as Ctrl-C does (the
    sweep's test presses Ctrl-C): no report of a half-trained row and no `stopped early` (the rows were `stopped
    early` and the parent run FAILED), but how to go on; `--resume` then writes the report."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [arg for item in [*TINY, "epochs=8"] for arg in ("--set", item)]
    command = [sys.executable, str(ABLATION), "--demo", "--manifest", str(demo.manifest_dir), "--cache",
               str(demo.cache), "--rows", "baseline", "--folds", "1,2", "--storage-path", str(tmp_path / "ray"),
               "--name", "g", "--parallel-folds", "1", "--mlflow-uri", uri, "--experiment", "tfmamba-sweeps", *sets]
    output = interrupt_after_a_fold(command, tmp_path, uri, tmp_path / "ray", "g", signal.SIGTERM)
    assert "SIGTERM: stopping as on Ctrl-C" in output and "Traceback" not in output, output[-3000:]
    assert "table3 g interrupted after" in output and "(rows not finished: baseline)" in output, output[-3000:]
    assert "continue it with the same command plus --resume --name g" in output
    assert not (tmp_path / "reports").exists()
    partial = run_cli([sys.executable, str(REPORT), "--experiment", "tfmamba-sweeps", "--mlflow-uri", uri, "--out",
                       str(tmp_path / "partial")], tmp_path)  # a report rebuilt from the interrupted grid says so
    assert "**Not a finished grid: its run is interrupted (`--resume` finishes it).**" in partial
    tree = run_tree(uri, "g")
    assert tree["sweep"][0].info.status == "KILLED" and tree["trial"][0].data.tags["outcome"] == "interrupted"
    assert not [run for run in tree["trial"] + tree["fold"] if "pruned" in run.data.tags]
    other = subprocess.run([*command, "--resume", "--folds", "1", "--rows", "baseline,tf"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 1, other.stderr[-3000:]
    assert ("--folds 1 (started with --folds 1,2), --rows baseline,tf (started with --rows baseline)"
            in other.stderr), other.stderr[-3000:]
    output = run_cli([*command, "--resume"], tmp_path)
    assert (tmp_path / "reports" / "table3-demo.md").is_file() and "table3 resumed, finished after another" in output
    tree = run_tree(uri, "g")
    assert tree["sweep"][0].info.status == "FINISHED" and tree["trial"][0].data.tags["outcome"] == "complete"
    assert {"wall_seconds", "resumed_wall_seconds"} <= set(tree["sweep"][0].data.metrics)  # each part's own wall


def test_meld_table_reports_wf1_beside_the_paper() -> None:
    from orchestration.table_report import RowResult, markdown

    rows = [RowResult("tf_cmdt", "+ CMDT Loss (Full model)", 20_500_000, 20.79, 1, ours={"wf1": (0.471, 0.004)},
                      paper={"wf1": 48.5}, seeds=5)]
    text = markdown(rows, "table3", "meld", "abc")
    header, row = table_rows(text)
    assert header == ["Row", "Folds", "Seeds", "Params (ours)", "Params (paper)", "WF1 ours", "WF1 paper", "ΔWF1"]
    assert row == ["+ CMDT Loss (Full model)", "1", "5", "20.50M", "20.79M", "47.1 ± 0.4", "48.5", "-1.4"]
    assert "mean ± std over folds × seeds" in text


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
    # the console: a line per row start, fold and end, as the sweep's (was ~550 lines of Tune tables and worker logs)
    assert "tf_cmdt  λ=0.10  started" in output and "baseline fold 1/1  ua mean" in output, output
    assert "Trial status:" not in output and "(RayTrainWorker" not in output and "spec dict" not in output
    assert len(output.splitlines()) < 60, output
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
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI overview
    assert (f"Compare the rows: mlflow ui --backend-store-uri {uri} --port 5000   # then open http://127.0.0.1:5000/"
            f"#/experiments/{experiment.experiment_id}?workflowType=machine_learning") in output
    assert parent[0].data.tags["mlflow.source.git.commit"] in parent[0].data.tags["git_commit"]
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
    run_of = {run.info.run_name: run.info.run_id for run in children}
    assert compared_runs(output, experiment.experiment_id) == [  # the rows side by side, in the table's order
        run_of[row] for row in ("baseline", "attention", "temporal", "tf", "tf_cmdt", "dual_temporal")]

    rebuilt = tmp_path / "rebuilt"
    run_cli([sys.executable, str(REPORT), "--experiment", "t3-test", "--mlflow-uri", uri, "--out", str(rebuilt)],
            tmp_path)
    assert (rebuilt / "table3-demo.md").read_text(encoding="utf-8") == markdown
    assert (rebuilt / "table3-demo.png").exists()


@pytest.mark.slow
def test_table2_demo_rows_own_caches_seeds_and_resume(demo, tmp_path: Path) -> None:
    """Two Table II demo rows (fbank, a tiny random WavLM) x 1 fold x 2 seeds; the WavLM row first reads a broken
    cache (--row-cache) and fails, then --resume reruns only that row on its real cache: no MLflow run twice."""
    from mlflow.tracking import MlflowClient

    broken = tmp_path / "broken-cache"
    broken.mkdir()
    shutil.copy(demo.cache / "features.json", broken / "features.json")  # a cache whose shards are gone
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [arg for item in TINY for arg in ("--set", item)]
    command = [sys.executable, str(ABLATION), "--demo", "--table", "2", "--manifest", str(demo.manifest_dir),
               "--cache", str(demo.cache), "--rows", "fbank,tiny-wavlm", "--folds", "1", "--seeds", "2",
               "--storage-path", str(tmp_path / "ray"), "--name", "t2", "--mlflow-uri", uri,
               "--experiment", "t2-test", *sets]
    first = subprocess.run([*command, "--row-cache", f"tiny-wavlm={broken}"], cwd=tmp_path, env=dict(os.environ),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 1, (first.stdout + first.stderr)[-6000:]
    assert "fbank fold run 2/2" in first.stdout and "tiny-wavlm FAILED" in first.stdout, first.stdout
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("t2-test")

    def runs(kind: str) -> list:
        return client.search_runs([experiment.experiment_id], f"tags.run_kind = '{kind}'", max_results=100)

    fbank_folds = {r.info.run_id: r.info.end_time for r in runs("fold") if r.info.status == "FINISHED"}
    assert len(fbank_folds) == 2 and [r.info.status for r in runs("trial")].count("FAILED") == 1

    output = run_cli([*command, "--resume"], tmp_path, timeout=600)
    report = tmp_path / "reports" / "table2-demo.md"
    assert f"md: {report}" in output
    parents, trials, folds = runs("sweep"), runs("trial"), runs("fold")
    assert len(parents) == 1 and parents[0].info.run_name == "table2" and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in trials) == ["fbank", "tiny-wavlm"]
    assert len(folds) == 4 and all(r.info.status == "FINISHED" for r in [*trials, *folds])
    by_row = {r.info.run_id: r.info.run_name for r in trials}
    assert sorted((by_row[r.data.tags["mlflow.parentRunId"]], r.data.tags["seed"], r.data.params["seed"])
                  for r in folds) == [("fbank", "0", "0"), ("fbank", "1", "1"),
                                      ("tiny-wavlm", "0", "0"), ("tiny-wavlm", "1", "1")]
    assert {r.info.run_id: r.info.end_time for r in folds if r.info.run_id in fbank_folds} == fbank_folds
    dims = {r.info.run_name: r.data.tags["features"] for r in trials}
    assert dims == {"fbank": "fbank (80)", "tiny-wavlm": "tiny:wavlm (32)"}

    markdown = report.read_text(encoding="utf-8")
    assert "mean ± std over folds × seeds" in markdown
    header, *rows = table_rows(markdown)
    assert header == ["Row", "Features", "Folds", "Seeds", "Params (ours)", "WA ours", "WA paper", "ΔWA", "WA vs above",
                      "WA vs full", "UA ours", "UA paper", "ΔUA", "UA vs above", "UA vs full"]
    assert [row[0] for row in rows] == ["fbank", "tiny-wavlm (paper: WavLM-base)"]
    assert [(row[2], row[3], row[header.index("UA paper")]) for row in rows] == [("1", "2", "n/a"),
                                                                                  ("1", "2", "70.3")]
    rebuilt = tmp_path / "rebuilt"
    run_cli([sys.executable, str(REPORT), "--experiment", "t2-test", "--table", "2", "--mlflow-uri", uri,
             "--out", str(rebuilt)], tmp_path)
    assert (rebuilt / "table2-demo.md").read_text(encoding="utf-8") == markdown
