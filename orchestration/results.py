"""After `tuner.fit()`: close the MLflow runs, pick the best trial, log its model, print the summary and
write it to `<fold outputs>/summary.json` (also an artifact of the sweep's MLflow run), with the Ray node
each fold ran on."""

from __future__ import annotations

import json
import logging
import re
import shlex
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestration import mlflow_runs, mlflow_ui
from orchestration.console import ended, trial_label, trial_number, wall_metric
from orchestration.trial import TIME_ATTR, SweepContext, fold_metric
from tfmamba.model_uris import BEST_MODEL_TAG

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")
NODE_TAGS = ("node_id", "node_ip", "hostname")  # set on each fold run by its worker (fold_worker.py)


def failure_message(error: BaseException) -> str:
    """A failed trial's error as the trial raised it (`trial X, fold 1 failed: DeviceMemoryError: ...`), not as Ray
    wraps it: a RayTaskError's text opens with `ray::ImplicitFunc.train() (pid=..., actor_id=...)` in terminal
    colours, then a traceback, which the summary's one line and the trial run's `error` tag used to show instead."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and cause is not error:
        return failure_message(cause)
    return ANSI_CODES.sub("", str(error)).strip() or type(error).__name__


@dataclass
class TrialSummary:
    trial_id: str
    run_id: str | None
    status: str  # one of STATUS_ORDER: complete | stopped early | interrupted | failed
    config: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None = None
    folds: list[dict[str, Any]] = field(default_factory=list)  # fold, seed, run_id, status and NODE_TAGS
    label: str = ""  # `t03 λ=0.32 τ=0.11 ω=0.33 d=16` (console.trial_label), also the trial run's MLflow name


@dataclass
class SweepSummary:
    trials: list[TrialSummary]
    best: TrialSummary | None
    best_model_uri: str | None
    parent_run_id: str
    wall_seconds: float
    fold_seconds: float
    parallel_slots: int
    interrupted: bool = False
    resumed: bool = False  # --resume: some folds trained before this run's wall began
    summary_path: str | None = None
    registered: Any = None  # registry.Registered, with --register
    objectives: list[tuple[str, str]] = field(default_factory=list)  # with several: the Pareto search's
    pareto: list[TrialSummary] = field(default_factory=list)  # its front, best on the first objective first

    @property
    def overhead_ratio(self) -> float | None:
        """Sweep wall time (from its data being ready) / (sum of fold training times / fold slots): 1.0 means no
        Ray overhead. None for a sweep interrupted or resumed: its wall does not span the folds it counts."""
        if not self.fold_seconds or self.interrupted or self.resumed:
            return None
        return self.wall_seconds / (self.fold_seconds / self.parallel_slots)


def unfinished_trials(tune_path: str) -> set[str]:
    """The trials Tune's saved state holds as not ended: after a Ctrl-C, those it was running (it saves them
    RUNNING, for `--resume`, and only then stops them, just as the scheduler stops a trial); empty after a run to
    its end."""
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(tune_path).trials
    except Exception as err:  # the results are in MLflow either way; only the interruption would go unseen
        logger.warning("could not read Tune's saved state at %s to tell an interruption: %s", tune_path, err)
        return set()
    return {trial.trial_id for trial in trials if trial.status not in ("TERMINATED", "ERROR")}


def collect_trials(results, ctx: SweepContext, unfinished: set[str] = frozenset()) -> list[TrialSummary]:
    """One summary per Tune result, matched to its MLflow trial run; a trial in `unfinished` (`unfinished_trials`)
    was interrupted."""
    runs = {r.data.tags.get("trial_id"): r.info.run_id for r in
            mlflow_runs.find_runs(ctx.tracking_uri, ctx.experiment_id, {"sweep_id": ctx.sweep_id,
                                                                         "run_kind": mlflow_runs.TRIAL})}
    trials = []
    for result in results:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or result.path.rstrip("/").split("/")[-1]
        done = int(metrics.get(TIME_ATTR, 0))
        if result.error is not None:
            status = "failed"
        elif done >= len(ctx.folds):
            status = "complete"
        elif trial_id in unfinished:
            status = "interrupted"
        else:
            status = "stopped early"
        config = {k: v for k, v in (metrics.get("config") or {}).items()}
        label = trial_label(trial_number(Path(result.path).name), config)
        trials.append(TrialSummary(trial_id, runs.get(trial_id), status, config, metrics,
                                   failure_message(result.error) if result.error is not None else None, label=label))
    return trials


def fold_placements(ctx: SweepContext) -> dict[str, list[dict[str, Any]]]:
    """Each trial's fold runs (by trial id) with the Ray node their rank-0 worker ran on, from MLflow tags."""
    placements: dict[str, list[dict[str, Any]]] = {}
    for run in mlflow_runs.find_runs(ctx.tracking_uri, ctx.experiment_id,
                                     {"sweep_id": ctx.sweep_id, "run_kind": mlflow_runs.FOLD}):
        tags = run.data.tags
        placements.setdefault(tags.get("trial_id", ""), []).append(
            {"fold": int(tags.get("fold", 0)), "seed": tags.get("seed"), "run_id": run.info.run_id,
             "status": run.info.status, **{key: tags.get(key) for key in NODE_TAGS}})
    for folds in placements.values():
        folds.sort(key=lambda f: (f["fold"], f["seed"] or ""))
    return placements


def nodes_used(trials: list[TrialSummary]) -> Counter:
    """How many fold runs ran on each Ray node id."""
    return Counter(f["node_id"] for t in trials for f in t.folds if f.get("node_id"))


def write_summary(summary: SweepSummary, ctx: SweepContext) -> Path:
    """`summary.json` in the sweep's fold output folder: trials, their metrics and where each fold ran."""
    path = Path(ctx.out_root) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"sweep_id": ctx.sweep_id, "sweep_run_id": summary.parent_run_id, "wall_seconds": summary.wall_seconds,
            "interrupted": summary.interrupted, "best_trial_id": summary.best.trial_id if summary.best else None,
            "best_model_uri": summary.best_model_uri, "nodes": dict(nodes_used(summary.trials)),
            "trials": [asdict(t) for t in summary.trials]}
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    return path


def close_runs(trials: list[TrialSummary], ctx: SweepContext) -> None:
    """Final status of every trial run; fold runs a stopped trial left RUNNING become KILLED."""
    uri = ctx.tracking_uri
    for trial in trials:
        if trial.run_id is None:
            continue
        if trial.status == "interrupted":
            _await_resume(trial, ctx)
            continue
        if trial.status == "failed":
            mlflow_runs.set_tags(uri, trial.run_id, {"error": trial.error or "failed"})
        mlflow_runs.set_tags(uri, trial.run_id, {"outcome": trial.status}
                             | ({"pruned": "true"} if trial.status == "stopped early" else {}))
        if trial.status == "stopped early":  # ended when the scheduler stopped it (trial._pruned), unless the
            if mlflow_runs.get_run(uri, trial.run_id).info.status == "RUNNING":  # trial's process went first
                mlflow_runs.end_run(uri, trial.run_id, "FINISHED")
            continue
        mlflow_runs.end_run(uri, trial.run_id, "FAILED" if trial.status == "failed" else "FINISHED")
    mlflow_runs.mark_stale_runs(uri, ctx.experiment_id, ctx.sweep_id)


def _await_resume(trial: TrialSummary, ctx: SweepContext) -> None:
    """A trial a Ctrl-C stopped, to go on with `--resume`. Its process took the stop for the scheduler's
    (`trial._pruned`): its runs lose the `pruned` tag, and the trial run waits as KILLED, outcome `interrupted`."""
    uri = ctx.tracking_uri
    folds = mlflow_runs.find_runs(uri, ctx.experiment_id, mlflow_runs.trial_tags(ctx.sweep_id, trial.trial_id)
                                  | {"run_kind": mlflow_runs.FOLD})
    for run in [mlflow_runs.get_run(uri, trial.run_id), *folds]:
        if "pruned" in run.data.tags:
            mlflow_runs.delete_tag(uri, run.info.run_id, "pruned")
    mlflow_runs.set_tags(uri, trial.run_id, {"outcome": "interrupted"})
    mlflow_runs.end_run(uri, trial.run_id, "KILLED")


def best_fold_run(ctx: SweepContext, trial_id: str) -> str:
    """The fold run of `trial_id` best on the sweep's validation metric (its weights become the sweep's model)."""
    runs = mlflow_runs.find_runs(ctx.tracking_uri, ctx.experiment_id,
                                 {"sweep_id": ctx.sweep_id, "run_kind": mlflow_runs.FOLD, "trial_id": trial_id})
    key, sign = fold_metric(ctx.metric), _sign(ctx)
    return max(runs, key=lambda r: sign * r.data.metrics.get(key, -sign * float("inf"))).info.run_id


def _sign(ctx: SweepContext) -> float:
    """+1 where larger values of the sweep's metric are better, -1 where smaller are."""
    return 1.0 if ctx.mode == "max" else -1.0


def _metric_name(ctx: SweepContext) -> str:
    """`valid_wf1_mean` -> `WF1`."""
    return ctx.metric.removeprefix("valid_").removesuffix("_mean").upper()


def finish_sweep(results, ctx: SweepContext, wall_seconds: float, parallel_slots: int,
                 register: str | None = None, objectives: list[tuple[str, str]] | None = None,
                 unfinished: set[str] = frozenset(), resumed: bool = False) -> SweepSummary:
    """Close runs, log the best model once (registered under `register`, if given), record the outcome on the
    sweep run. `unfinished`: the trials a Ctrl-C interrupted (`unfinished_trials`)."""
    from orchestration.model_export import log_best_model

    uri = ctx.tracking_uri
    interrupted = bool(unfinished) or results.num_terminated + results.num_errors < len(results)
    trials = collect_trials(results, ctx, unfinished)
    close_runs(trials, ctx)
    placements = fold_placements(ctx)
    for trial in trials:
        trial.folds = placements.get(trial.trial_id, [])
    complete = [t for t in trials if t.status == "complete" and ctx.metric in t.metrics]
    best = max(complete, key=lambda t: _sign(ctx) * t.metrics[ctx.metric]) if complete and not interrupted else None
    fold_seconds = sum(float(t.metrics.get("train_seconds_sum", 0.0)) for t in trials)
    summary = SweepSummary(trials, best, None, ctx.parent_run_id, wall_seconds, fold_seconds, parallel_slots,
                           interrupted, resumed=resumed)
    if objectives and len(objectives) > 1:
        summary.objectives = list(objectives)
        summary.pareto = pareto_front(complete, objectives, ctx)
    parent_tags = mlflow_runs.get_run(uri, ctx.parent_run_id).data.tags
    if best is not None and best.run_id is not None:
        if parent_tags.get("best_trial_id") == best.trial_id and parent_tags.get(BEST_MODEL_TAG):
            summary.best_model_uri = parent_tags[BEST_MODEL_TAG]
        else:
            summary.best_model_uri = log_best_model(uri, best.run_id, best_fold_run(ctx, best.trial_id),
                                                    registered_name=None)
        if register and parent_tags.get("registered_model_version", "").split("/")[0] != register:
            summary.registered = _register(summary.best_model_uri, register, best, ctx, parent_tags)
            mlflow_runs.set_tags(uri, ctx.parent_run_id, {"registered_model_version": f"{register}/{summary.registered.version}"})
        mlflow_runs.set_tags(uri, ctx.parent_run_id, {"best_trial_id": best.trial_id, "best_trial_run_id": best.run_id,
                                                       BEST_MODEL_TAG: summary.best_model_uri})
        # the best trial's metrics under the trial runs' own names (BestSoFar logged them stepped as trials ended)
        mlflow_runs.log_metrics(uri, ctx.parent_run_id,
                                {k: v for k, v in best.metrics.items() if k.endswith(("_mean", "_std"))},
                                step=len(trials))
    extra: dict[str, float] = {wall_metric(resumed): wall_seconds, "fold_train_seconds_sum": fold_seconds,
                               "fold_slots": parallel_slots}
    if summary.overhead_ratio is not None:
        extra["ray_overhead_ratio"] = summary.overhead_ratio
    mlflow_runs.log_metrics(uri, ctx.parent_run_id, extra)
    path = write_summary(summary, ctx)
    summary.summary_path = str(path)
    try:
        mlflow_runs.log_artifact(uri, ctx.parent_run_id, path)
    except Exception as err:  # the file is written; an artifact store hiccup must not fail a finished sweep
        logger.warning("could not log %s to MLflow: %s", path, err)
    status = "KILLED" if interrupted else "FINISHED" if best is not None else "FAILED"
    mlflow_runs.end_run(uri, ctx.parent_run_id, status)
    return summary


def pareto_front(complete: list[TrialSummary], objectives: list[tuple[str, str]], ctx: SweepContext
                 ) -> list[TrialSummary]:
    """The complete trials no other beats on every objective, tagged `pareto` in MLflow."""
    from orchestration.pareto import front

    by_id = {t.trial_id: t for t in complete}
    keep = front({t.trial_id: t.metrics for t in complete}, objectives)
    for trial in complete:
        if trial.run_id is not None:
            mlflow_runs.set_tags(ctx.tracking_uri, trial.run_id, {"pareto": str(trial.trial_id in keep).lower()})
    return [by_id[k] for k in keep]


def _register(model_uri: str, name: str, best: TrialSummary, ctx: SweepContext, parent_tags: dict[str, str]):
    """The best model as a new version of `name`, tagged with its sweep, trial, objective, corpus and features."""
    from orchestration.registry import register

    tags = {"sweep": ctx.sweep_id, "trial": best.trial_id, "trial_run": best.run_id or "",
            "corpus": parent_tags.get("corpus", ""), "feature_extractor": parent_tags.get("cache.extractor", "")}
    return register(ctx.tracking_uri, model_uri, name, tags, ctx.metric, ctx.mode, float(best.metrics[ctx.metric]))


STATUS_ORDER = ("complete", "stopped early", "interrupted", "failed")


def ranked_trials(trials: list[TrialSummary], ctx: SweepContext) -> list[TrialSummary]:
    """Complete trials first, best first, then the rest by status: a trial stopped early averages fewer folds, and
    its mean, over the folds it ran, must not read as a better trial than the best one above it."""
    def key(t: TrialSummary) -> tuple[int, float]:
        rank = STATUS_ORDER.index(t.status) if t.status in STATUS_ORDER else len(STATUS_ORDER)
        value = t.metrics.get(ctx.metric)
        return rank, -_sign(ctx) * float(value) if value is not None else float("inf")
    return sorted(trials, key=key)


def _pm(metrics: dict[str, Any], split: str, key: str) -> str:
    mean, std = metrics.get(f"{split}_{key}_mean"), metrics.get(f"{split}_{key}_std")
    return "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}"


def serve_command(model_uri: str, tracking_uri: str) -> str:
    """`mlflow models serve` of `model_uri`, with the store to find it in unless it is MLflow's default from here
    (./mlflow.db): without it the command looked in ./mlflow.db and found no such model."""
    store = "" if tracking_uri == mlflow_runs.resolve_tracking_uri(None, env={}) else \
        f"MLFLOW_TRACKING_URI={shlex.quote(tracking_uri)} "
    return f"{store}mlflow models serve -m {model_uri} --env-manager local"


def print_summary(summary: SweepSummary, ctx: SweepContext, experiment: str, tune_path: str) -> None:
    counts = {s: sum(t.status == s for t in summary.trials) for s in STATUS_ORDER}
    counts = {s: n for s, n in counts.items() if n or s == "complete"}
    how = ended(summary.wall_seconds, summary.interrupted, summary.resumed)
    lines = ["", f"=== Sweep {ctx.sweep_id} {how}: {len(summary.trials)} trials "
             f"({', '.join(f'{n} {s}' for s, n in counts.items())}) x {len(ctx.folds)} folds ==="]
    name, key = _metric_name(ctx), _metric_name(ctx).lower()
    lines.append(f"Trials (validation {name}, the sweep's metric, mean ± std over the folds each finished):")
    ranked = ranked_trials(summary.trials, ctx)
    complete = [t.run_id for t in ranked if t.status == "complete" and t.run_id]  # best first, side by side
    for t in ranked:
        lines.append(f"  {t.label or t.trial_id}  {int(t.metrics.get(TIME_ATTR, 0))}/{len(ctx.folds)} folds  "
                     f"{_pm(t.metrics, 'valid', key)}  {t.status}{'  ' + t.error.splitlines()[0] if t.error else ''}")
    best = summary.best
    if summary.interrupted:
        lines.append(f"Continue it with the same command plus: --resume --name {ctx.sweep_id}")
    elif best is None:
        lines.append("No trial finished all its folds; see the errors above and in MLflow.")
    else:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.config.items())
        lines += [f"Best trial {best.label.split(' ')[0] or best.trial_id} ({best.trial_id}): {params}",
                  f"  {'mean ± std over folds':<23}" + "   ".join(f"{k.upper()}" for k in ("wa", "ua", "wf1")),
                  f"  {'valid (optimised ' + name + ')':<23}{_pm(best.metrics, 'valid', 'wa')}   "
                  f"{_pm(best.metrics, 'valid', 'ua')}"
                  f"   {_pm(best.metrics, 'valid', 'wf1')}",
                  f"  {'test (not used)':<23}{_pm(best.metrics, 'test', 'wa')}   {_pm(best.metrics, 'test', 'ua')}"
                  f"   {_pm(best.metrics, 'test', 'wf1')}",
                  f"Best model (mlflow.pyfunc.load_model): {summary.best_model_uri}   "
                  f"(also runs:/{best.run_id}/model)"]
        if summary.registered is not None:
            reg = summary.registered
            alias = f"models:/{reg.name}@champion"
            lines.append(f"Registered as {reg.uri}" + (f", now {alias}" if reg.champion else
                                                      f" ({alias} stays on a version as good or better)")
                         + f"; serve it: {serve_command(alias, ctx.tracking_uri)}")
    if summary.pareto:
        names = [name for name, _ in summary.objectives]
        lines.append(f"Pareto front ({', '.join(f'{n} {m}' for n, m in summary.objectives)}; tagged pareto=true "
                     "in MLflow, plot: the sweep run's optuna/pareto_front.png):")
        for t in summary.pareto:
            lines.append(f"  {t.label or t.trial_id}  " + "  ".join(
                f"{n}={t.metrics[n]:.4g}" for n in names))
    if summary.overhead_ratio is not None:
        lines.append(f"Fold training {summary.fold_seconds:.0f} s over {summary.parallel_slots} fold slot(s): "
                     f"Ray overhead ratio {summary.overhead_ratio:.2f} "
                     f"(wall {summary.wall_seconds:.0f} s / {summary.fold_seconds / summary.parallel_slots:.0f} s)")
    nodes = nodes_used(summary.trials)
    if nodes:
        lines.append(f"Folds ran on {len(nodes)} Ray node(s): "
                     + ", ".join(f"{node[:12]} ({n} fold run{'s' if n > 1 else ''})" for node, n in nodes.items()))
    if summary.summary_path:
        lines.append(f"Summary (trials, metrics, the node of each fold): {summary.summary_path}")
    lines += [f"MLflow: experiment {experiment!r}, sweep run {summary.parent_run_id}"
              + (f", best trial run {best.run_id}" if best else ""),
              f"Tune results: {tune_path}   Train runs: {ctx.train_storage}   fold outputs: {ctx.out_root}",
              f"Compare the trials: {mlflow_ui.ui_command(ctx.tracking_uri, ctx.experiment_id, complete)}", ""]
    print("\n".join(lines), flush=True)
