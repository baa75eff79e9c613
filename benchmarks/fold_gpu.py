"""A whole fold through the trainer (`train_fold`: loading, training, evaluation, checkpoints), its wall time
against the GPU's busy time: does the data loader keep the GPU fed?

The corpus is synthetic and IEMOCAP-shaped: 1024-dim float16 features at 50 frames/s, clip durations
log-normal around 4.5 s (1-30 s), 4 balanced classes, split 70/15/15; training clips cropped to `max_frames`
(600) as the trainer does, batches of 32 from its length buckets. Each `--num-workers` value, eager and with
`--compile on` (`TrainConfig.compile`: the training steps through `torch.compile`) and `--compile graphs` (also
`cuda_graphs`: the compiled steps replayed as CUDA graphs, one per batch shape), trains the same fold from the
same seed; a compiled fold's wall includes its compilation (its first epoch's report shows it against the
second's; `warm_epoch_s` is the median epoch from the third on, after compiling and recording CUDA graphs, its
validation included). A compiled row also keeps why Dynamo compiled again (the guards that failed, from its
`recompiles` log) and where it split a graph, so graphs beyond those expected can be traced to their cause.
On CUDA a thread samples the GPU's utilisation (`torch.cuda.utilization`, the share of time a kernel
was running, from NVML) every 50 ms during the fold: the share of samples with the GPU busy over the whole fold
and up to each report, so that a process's first epoch (compiling kernels for new shapes) shows apart from the
warm ones.

Writes benchmarks/results/fold_gpu-<device>.json and .md (or under --out).

    python benchmarks/fold_gpu.py --device cuda                 # 1600 clips, 3 epochs, num_workers 0 and 2
    python benchmarks/fold_gpu.py --device cuda --num-workers 2 --compile off on --ssd-backend torch
    python benchmarks/fold_gpu.py --device cuda --num-workers 2 --compile on graphs   # what CUDA graphs buy a fold
    python benchmarks/fold_gpu.py --quick                       # tiny smoke run (CI)
    python benchmarks/fold_gpu.py --clips 160 --epochs 2 --num-workers 0 --compile on \\
        --set d_model=32 --set batch_size=16                    # a compiled fold on a CPU: its graphs, its time
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, synthetic_corpus  # noqa: E402
from _sampler import PeriodicSampler  # noqa: E402
from _timing import markdown_table  # noqa: E402

from tfmamba.config import TrainConfig, parse_overrides  # noqa: E402
from tfmamba.training.fold import train_fold  # noqa: E402


def utilisation_sampler(device: torch.device) -> PeriodicSampler[float]:
    """`torch.cuda.utilization()` every 50 ms while in the `with` block (nothing on a CPU): (time.perf_counter(),
    percent) pairs."""
    return PeriodicSampler(lambda: float(torch.cuda.utilization(device)), 0.05, enabled=device.type == "cuda")


def mean_between(samples: list[tuple[float, float]], edges: list[float],
                 value: Callable[[float], float] = float) -> list[float | None]:
    """The mean of `value(percent)` over the samples in each interval between consecutive `edges` (None for an
    interval with no sample): a process's first epoch, which compiles kernels, apart from the rest."""
    means = []
    for low, high in zip(edges, edges[1:]):
        inside = [value(percent) for at, percent in samples if low <= at < high]
        means.append(statistics.fmean(inside) if inside else None)
    return means


def busy_share_between(samples: list[tuple[float, float]], edges: list[float]) -> list[float | None]:
    """The share of samples with a kernel running (utilisation > 0) in each interval between consecutive `edges`.
    NVML's utilisation is the share of its last sample period (1/6 to 1 s) with any kernel running: a warm epoch
    shows busy in every sample whether its kernels leave gaps or not, so the mean utilisation goes with it."""
    return mean_between(samples, edges, lambda percent: float(percent > 0))


class RecompileLog(logging.Handler):
    """While in the `with` block: each message of Dynamo's `recompiles` log (a function compiled again, with the
    guard that failed) and the graph breaks counted (reason -> count)."""

    LOGGER = "torch._dynamo.guards.__recompiles"  # torch._logging's artifact logger for "recompiles"

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reasons: list[str] = []
        self.graph_breaks: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.reasons.append(record.getMessage())

    def __enter__(self) -> RecompileLog:
        self._breaks_before = dict(counters["graph_break"])
        torch._logging.set_logs(recompiles=True)
        logging.getLogger(self.LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)
        torch._logging.set_logs()
        self.graph_breaks = {reason: count - self._breaks_before.get(reason, 0)
                             for reason, count in counters["graph_break"].items()
                             if count > self._breaks_before.get(reason, 0)}


def warm_epoch_seconds(epoch_marks: list[float]) -> float | None:
    """The median epoch from the third on (`epoch_marks`: seconds since the fold's start at each epoch's report):
    the first compiles kernels, the second may still record CUDA graphs for shapes first seen late in the first.
    None with fewer than three epochs."""
    durations = [b - a for a, b in zip([0.0, *epoch_marks], epoch_marks)]
    return statistics.median(durations[2:]) if len(durations) >= 3 else None


class EpochClock:
    """A fold's reporter that prints when each epoch's report arrives (seconds since the fold started): a run
    stopped at its time limit still shows how far it got, and the first epoch's start-up (kernel compiles for new
    shapes) shows against the second's."""

    def __init__(self, label: dict[str, object]) -> None:
        self.label, self.start, self.marks, self.checkpoints = label, time.perf_counter(), [], 0
        self.epoch_marks: list[float] = []

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self.marks.append(round(time.perf_counter() - self.start, 2))
        self.checkpoints += checkpoint_dir is not None
        if not metrics.get("done"):
            self.epoch_marks.append(self.marks[-1])
        name = "test" if metrics.get("done") else f"epoch {metrics.get('epoch', 0):.0f}"
        print(json.dumps({**self.label, "report": name, "seconds": self.marks[-1]}), flush=True)

    def resume_dir(self) -> Path | None:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clips", type=int, default=1600, help="utterances in the corpus (70%% train)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per fold (the first of a process also compiles kernels: 3 leave two warm ones)")
    parser.add_argument("--num-workers", type=int, nargs="+", default=[0, 2], help="loader workers to compare")
    parser.add_argument("--compile", nargs="+", choices=("off", "on", "graphs"), default=["off"],
                        help="train eagerly (off), through torch.compile (on), and/or compiled and replayed as CUDA "
                             "graphs (graphs: cuda_graphs=true, CUDA only) (default: off)")
    parser.add_argument("--variant", default="tf_cmdt")
    parser.add_argument("--ssd-backend", default="auto", help="auto (mamba-ssm on CUDA when importable), torch, mamba_ssm")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a training or model setting (repeatable), e.g. --set d_model=32 --set batch_size=16")
    parser.add_argument("--quick", action="store_true", help="tiny corpus and model (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type != "cuda" and "graphs" in args.compile:
        parser.error("--compile graphs replays CUDA graphs: use --device cuda")
    dim, clips, epochs = 1024, args.clips, args.epochs
    model = {"variant": args.variant, "ssd_backend": args.ssd_backend}
    if args.quick:
        dim, clips, epochs = 16, 48, 1
        model |= dict(d_model=16, d_state=8, headdim=8, num_heads=2, ffn_dim=16, classifier_dims=[16], chunk_size=16)
    model |= parse_overrides(args.overrides)
    store, manifest, fold = synthetic_corpus(clips, dim)
    records = []
    for workers, how in [(w, c) for w in args.num_workers for c in args.compile]:
        label = {"num_workers": workers, "compile": how != "off", "cuda_graphs": how == "graphs"}
        config = TrainConfig().replace(epochs=epochs, patience=0, **label, **model)
        graphs_before = counters["stats"]["unique_graphs"]
        with tempfile.TemporaryDirectory() as out_dir, utilisation_sampler(device) as sampler, \
                RecompileLog() as recompiles:
            clock = EpochClock(label)
            result = train_fold(config, fold, store, clock, manifest=manifest, out_dir=out_dir, device=str(device),
                                progress=False)
            wall = time.perf_counter() - clock.start
        row = {**label, "ssd_backend": args.ssd_backend, "epochs": epochs, "train_clips": len(fold.train), "eval_clips":
               len(fold.valid) + len(fold.test), "fold_wall_s": wall, "train_seconds": result.train_seconds,
               "train_utt_per_s_of_wall": epochs * len(fold.train) / wall, "status": result.status,
               "reports_at_s": clock.marks, "checkpoints": clock.checkpoints,
               "compiled_graphs": counters["stats"]["unique_graphs"] - graphs_before}
        warm = warm_epoch_seconds(clock.epoch_marks)
        if warm is not None:
            row |= {"warm_epoch_s": round(warm, 3), "warm_train_utt_per_s": len(fold.train) / warm}
        if config.compile:
            row |= {"recompile_reasons": recompiles.reasons, "graph_breaks": recompiles.graph_breaks}
        if sampler.samples:
            percents = [percent for _, percent in sampler.samples]
            edges = [clock.start] + [clock.start + mark for mark in clock.marks]
            row |= {"gpu_utilisation_mean_pct": statistics.fmean(percents),
                    "gpu_busy_share_of_wall": statistics.fmean(p > 0 for p in percents),
                    "gpu_busy_share_by_report": busy_share_between(sampler.samples, edges),
                    "gpu_utilisation_by_report": mean_between(sampler.samples, edges),
                    "samples": len(percents)}
        records.append(row)
        print(json.dumps(row), flush=True)
        write_results(args, records, clips, epochs)  # after every fold: a run stopped at its limit keeps them
    print(f"wrote {args.out / f'fold_gpu-{result_tag(args)}.json'} and .md")
    return 0


def compiled_cell(row: dict) -> str:
    """"no", or "yes (N)" with the graphs Dynamo compiled, and whether they were replayed as CUDA graphs."""
    if not row["compile"]:
        return "no"
    return f"yes ({row['compiled_graphs']})" + (", CUDA graphs" if row.get("cuda_graphs") else "")


def warm_cell(row: dict) -> str:
    if "warm_epoch_s" not in row:
        return "-"
    return f"{row['warm_epoch_s']:.2f} ({row['warm_train_utt_per_s']:.0f})"


def by_report_cell(row: dict, whole: str, by_report: str, form: str) -> str:
    """The whole fold's figure `row[whole]`, then each report's `row[by_report]`, each formatted with `form`."""
    if whole not in row:
        return "-"
    parts = ["-" if value is None else format(value, form) for value in row.get(by_report, [])]
    return format(row[whole], form) + (f" ({', '.join(parts)})" if parts else "")


def result_tag(args: argparse.Namespace) -> str:
    return torch.device(args.device).type + ("-quick" if args.quick else "")


def write_results(args: argparse.Namespace, records: list[dict], clips: int, epochs: int) -> None:
    """benchmarks/results/fold_gpu-<device>.json and .md (or under --out) with the folds trained so far."""
    tag = result_tag(args)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "fold_gpu", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(),
               "variant": args.variant, "clips": clips, "overrides": args.overrides, "records": records}
    (args.out / f"fold_gpu-{tag}.json").write_text(json.dumps(payload, indent=2) + "\n")
    m = payload["machine"]
    lines = [f"# A whole fold on {m['device']}", "",
             f"{payload['date']}; {m['cpu']}, {m['cores']} cores, torch {m['torch']}; {args.variant}, {clips} "
             f"synthetic IEMOCAP-shaped clips, {epochs} epochs, batch 32, max_frames 600, SSD {args.ssd_backend}"
             + (f"; overridden: {', '.join(args.overrides)}" if args.overrides else "") + ".", ""]
    lines += markdown_table(["loader workers", "compiled (graphs)", "fold wall s", "training s", "train utt/s of wall",
                             "warm epoch s (utt/s)", "epoch reports at s", "checkpoints",
                             "GPU utilisation % (whole fold; up to each report)",
                             "GPU busy (whole fold; up to each report)"],
                            [[r["num_workers"], compiled_cell(r), f"{r['fold_wall_s']:.1f}",
                              f"{r['train_seconds']:.1f}",
                              f"{r['train_utt_per_s_of_wall']:.1f}", warm_cell(r),
                              ", ".join(map(str, r["reports_at_s"])),
                              r.get("checkpoints", "-"),
                              by_report_cell(r, "gpu_utilisation_mean_pct", "gpu_utilisation_by_report", ".0f"),
                              by_report_cell(r, "gpu_busy_share_of_wall", "gpu_busy_share_by_report", ".0%")]
                             for r in records])
    for r in records:
        if r.get("recompile_reasons") or r.get("graph_breaks"):
            lines += ["", f"Recompiles and graph breaks of the fold with {r['num_workers']} workers, "
                      f"{compiled_cell(r)}:", "", "```", *r.get("recompile_reasons", []),
                      *(f"graph break x{n}: {reason}" for reason, n in r.get("graph_breaks", {}).items()), "```"]
    (args.out / f"fold_gpu-{tag}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
