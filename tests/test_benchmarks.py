"""Benchmarks' smoke test: `run_all.py --quick` produces sane JSON and markdown (never asserts a time)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_run_all_quick_writes_sane_results(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = ["ssd-cpu-quick", "train_throughput-cpu-quick", "latency-cpu-quick", "fold_gpu-cpu-quick",
             "loader_throughput-cpu-quick", "checkpoint_cost-quick", "feature_cache_quick", "sweep_overhead-quick"]
    for name in names:
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["machine"]["torch"], name
        assert (tmp_path / f"{name}.md").read_text().count("|") > 4, name

    ssd = json.loads((tmp_path / "ssd-cpu-quick.json").read_text())
    for row in ssd["records"]:
        assert row["torch_chunked_ms"] > 0
        if "max_abs_diff_chunked_vs_sequential" in row:
            assert row["max_abs_diff_chunked_vs_sequential"] < 1e-4
    assert 0 < ssd["ssd_share"]["ssd_share_of_forward"] < 1

    throughput = json.loads((tmp_path / "train_throughput-cpu-quick.json").read_text())
    assert {r["variant"] for r in throughput["records"]} == {"baseline", "attention", "temporal", "tf", "tf_cmdt",
                                                             "dual_temporal"}
    assert all(math.isfinite(r["utt_per_s"]) and r["utt_per_s"] > 0 for r in throughput["records"])

    latency = json.loads((tmp_path / "latency-cpu-quick.json").read_text())
    assert all(r["tf_mamba_ms"] > 0 and r["ratio_vs_transformer_same_params"] > 0 for r in latency["records"])
    params = latency["params"]
    assert abs(params["transformer_same_params"] - params["tf_mamba"]) / params["tf_mamba"] < 0.05
    assert (tmp_path / "latency-cpu-quick.png").stat().st_size > 1000

    fold = json.loads((tmp_path / "fold_gpu-cpu-quick.json").read_text())
    assert [r["num_workers"] for r in fold["records"]] == [0, 2]
    assert all(r["status"] == "ok" and 0 < r["train_seconds"] <= r["fold_wall_s"] for r in fold["records"])
    assert all(len(r["reports_at_s"]) == r["epochs"] + 1 and r["reports_at_s"] == sorted(r["reports_at_s"])
               for r in fold["records"]), "a report per epoch and one with the test metrics, in order"

    loaders = json.loads((tmp_path / "loader_throughput-cpu-quick.json").read_text())
    assert [r["num_workers"] for r in loaders["records"]] == [0, 1, 2]
    for row in loaders["records"]:
        assert all(p["utterances"] == loaders["train_clips"] for p in row["passes"]["train"]), "every clip, every pass"
        assert row["train"]["utt_per_s"] > 0 and row["valid"]["utt_per_s"] > 0

    checkpoint = json.loads((tmp_path / "checkpoint_cost-quick.json").read_text())
    assert checkpoint["checkpoint_mb"] > 0 and len(checkpoint["write_s"]) == 5 and checkpoint["write_warm_median_s"] > 0

    cache = json.loads((tmp_path / "feature_cache_quick.json").read_text())
    assert cache["ratio_with_open"] > 1 and cache["max_abs_diff_cache_vs_fresh"] < 1e-2

    overhead = json.loads((tmp_path / "sweep_overhead-quick.json").read_text())
    assert overhead["fold_runs"] == 1 and overhead["sizes"]["fold_slots"] >= 1
    fold = overhead["folds"][0]
    assert 0 < fold["train_seconds"] < fold["run_seconds"] <= overhead["sweep_wall_seconds"]
    assert overhead["ray_overhead_ratio"] > 1 and overhead["trainer_startup_median_seconds"] > 0
    phases = overhead["cpu_busy"]
    parts = [phases[k] for k in ("start_up", "every_slot_in_a_fold", "fewer_folds_than_slots", "end") if phases[k]]
    assert all(0 <= p["busy_share"] <= 1 and p["idle_core_seconds"] >= 0 for p in parts)
    assert sum(p["seconds"] for p in parts) == pytest.approx(phases["whole_process"]["seconds"], rel=1e-6)


def test_train_throughput_pads_batches_like_iemocap_and_counts_each_filters_ops(tmp_path):
    """The padded rows: real padding, both ways of filtering it, and fewer ops per step as one DFT."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--quick",
                           "--variants", "tf_cmdt", "--lengths", "iemocap", "--frames", "120", "--batch", "12",
                           "--filter", "grouped", "dft", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["filter"]: r for r in json.loads((tmp_path / "train_throughput-cpu-quick.json").read_text())["records"]}
    assert set(rows) == {"grouped", "dft"}
    assert all(0 < r["padding"] < 0.5 and r["utt_per_s"] > 0 and r["lengths"] == "iemocap" for r in rows.values())
    assert rows["dft"]["ops_per_step"] < rows["grouped"]["ops_per_step"]
    table = (tmp_path / "train_throughput-cpu-quick.md").read_text()
    assert "| tf_cmdt | torch | trainer | dft, auto | iemocap (" in table


def test_gpu_busy_share_up_to_each_report(monkeypatch):
    """fold_gpu.py's per-report share of utilisation samples with the GPU busy (a first epoch apart from warm ones)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from fold_gpu import busy_share_between

    samples = [(0.5, 0.0), (1.5, 0.0), (2.5, 90.0), (3.5, 40.0), (4.5, 0.0), (5.5, 70.0)]
    assert busy_share_between(samples, [0.0, 2.0, 4.0, 6.0, 9.0]) == [0.0, 1.0, 0.5, None]


def test_a_warm_epoch_is_the_median_from_the_third_on(monkeypatch):
    """fold_gpu.py's warm epoch leaves out the first (compiling) and second (recording CUDA graphs) epochs."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from fold_gpu import warm_epoch_seconds

    assert warm_epoch_seconds([184.42, 185.73, 186.19, 186.58, 187.04]) == pytest.approx(0.46)
    assert warm_epoch_seconds([90.0, 91.9]) is None


def test_cpu_busy_share_over_spans_interpolates_the_machines_tick_counters(monkeypatch):
    """_cpu_busy's share of core-time busy over spans, read between /proc/stat samples (here written by hand)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from _cpu_busy import CpuSampler

    cpu = CpuSampler()
    cpu._tick = 100
    cpu.samples = [(10.0, (0, 0)), (11.0, (200, 0)), (12.0, (400, 200))]  # (all, idle) ticks of 2 cores
    assert cpu.busy([(10.0, 11.0)]) == {"seconds": 1.0, "busy_share": 1.0, "idle_core_seconds": 0.0}
    assert cpu.busy([(11.0, 12.0)])["busy_share"] == 0.0
    half = cpu.busy([(10.5, 11.0), (11.0, 11.5)])
    assert half == {"seconds": 1.0, "busy_share": 0.5, "idle_core_seconds": 1.0}
    assert cpu.busy([(11.5, 11.5)]) is None


def test_sweep_phases_tell_every_slot_training_from_a_lane_left_idle(monkeypatch):
    """sweep_overhead.py's spans with a fold run open on every slot vs fewer: a gap between a lane's folds and a last
    fold alone count as fewer."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from sweep_overhead import slot_spans

    folds = [{"start_epoch": 0.0, "end_epoch": 10.0}, {"start_epoch": 1.0, "end_epoch": 9.0},
             {"start_epoch": 9.5, "end_epoch": 20.0}, {"start_epoch": 10.0, "end_epoch": 25.0}]
    every, fewer = slot_spans(folds, 2)
    assert every == [(1.0, 9.0), (9.5, 10.0), (10.0, 20.0)]
    assert fewer == [(0.0, 1.0), (9.0, 9.5), (20.0, 25.0)]


def test_recompiles_are_logged_with_their_failed_guard_and_graph_breaks_counted(monkeypatch):
    """fold_gpu.py's `RecompileLog` keeps why Dynamo compiled a function again and where it split a graph, and
    only inside its block."""
    import torch
    import torch._dynamo

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from fold_gpu import RecompileLog

    def scaled(x: torch.Tensor, factor: int) -> torch.Tensor:
        y = x * factor
        torch._dynamo.graph_break()
        return y + 1

    torch._dynamo.reset()
    compiled = torch.compile(scaled, backend="eager")
    with RecompileLog() as log:
        compiled(torch.ones(3), 2)
        compiled(torch.ones(3), 3)  # the constant 2 was specialised: compiled again
    compiled(torch.ones(3), 4)
    assert len(log.reasons) == 1 and "Recompiling function scaled" in log.reasons[0] and "factor" in log.reasons[0]
    assert sum(log.graph_breaks.values()) >= 1, log.graph_breaks


def test_profiled_matrix_products_are_named_by_their_shapes(monkeypatch):
    """train_throughput.py's profile names the products behind the kernels: a step's matmuls grouped by input
    shapes, each with its calls per step (here on the CPU, where the times are the host's)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from train_throughput import matmul_shapes

    weights, batches = torch.randn(16, 24), torch.randn(3, 8, 16)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(2):  # two steps
            torch.bmm(batches, batches.transpose(1, 2))
            torch.mm(batches[0], weights)
            torch.mm(batches[1], weights)
    rows = {(m["op"], str(m["input_shapes"])): m for m in matmul_shapes(prof, steps=2)}
    assert rows[("aten::mm", "[[8, 16], [16, 24]]")]["calls_per_step"] == 2
    assert rows[("aten::bmm", "[[3, 8, 16], [3, 16, 8]]")]["calls_per_step"] == 1
    assert all(m["cpu_ms_per_step"] > 0 and m["device_ms_per_step"] == 0 for m in rows.values())


def test_the_hosts_side_of_a_profile_counts_each_top_level_operation_once(monkeypatch):
    """train_throughput.py's host table: the operations no other one called, each with what it called (an
    optimiser's step, not the kernels' ops inside it twice), per step; their sum is the host's busy time."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from train_throughput import host_operations

    a = torch.randn(64, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):  # two steps
            with record_function("Optimizer.step#AdamW.step"):
                torch.mm(a, a)
                torch.mm(a, a)
            torch.add(a, a)
    host = host_operations(prof.events(), steps=2)
    rows = {o["operation"]: o for o in host["top_operations"]}
    assert set(rows) == {"Optimizer.step#AdamW.step", "aten::add"}, rows  # the mm ran inside the step
    assert rows["Optimizer.step#AdamW.step"]["calls_per_step"] == 1 and rows["aten::add"]["calls_per_step"] == 1
    mms = sum(e.cpu_time_total for e in prof.events() if e.name == "aten::mm") / 1e3 / 2
    assert rows["Optimizer.step#AdamW.step"]["ms_per_step"] >= mms > 0
    assert host["host_busy_ms_per_step"] == pytest.approx(sum(o["ms_per_step"] for o in rows.values()))


def test_the_gpus_busy_time_counts_kernels_not_the_annotations_around_them(monkeypatch):
    """train_throughput.py's busy time sums kernels only: a compiled graph's annotation on the GPU's timeline spans
    the kernels it launched, so counting it too reported a GPU busier than the step was long (16.4 of 13.9 ms)."""
    import torch
    from torch.autograd.profiler_util import EventList, FunctionEvent

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from train_throughput import device_kernels

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = EventList([
        FunctionEvent(0, "## Call CompiledFxGraph f1 ##", 0, 0, 100, device_type=cuda, stack=[],
                      is_user_annotation=True),
        FunctionEvent(1, "triton_poi_fused_add", 0, 10, 40, device_type=cuda, stack=[]),
        FunctionEvent(2, "triton_poi_fused_add", 0, 50, 80, device_type=cuda, stack=[]),
        FunctionEvent(3, "aten::add", 0, 0, 5, device_type=cpu, stack=[]),
    ])
    events._build_tree()
    kernels = device_kernels(events.key_averages())
    assert [(e.key, e.count) for e in kernels] == [("triton_poi_fused_add", 2)]
