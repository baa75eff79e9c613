"""Training throughput (utterances/s) of each Table III variant at full size, through the trainer's own step.

Each row times whole epochs of `tfmamba.training.loop.train_epoch` (forward, CE + CMDT for tf_cmdt, backward,
gradient clipping, AdamW, the LR schedule, the loss read back one step late) over identical random batches,
bf16 autocast on CUDA. `--steps` picks how a step runs:

- `trainer`: the trainer as it is, batches in pinned host memory (what its loader gives on a GPU);
- `pageable`: the same with batches in ordinary host memory (a loader without `pin_memory`: the step pins each
  batch itself before its copy to the GPU);
- `graphed`: the same step captured once as a CUDA graph and replayed (fused, capturable AdamW with a tensor
  LR, so the schedule still applies): what the step costs without Python's and the driver's launch overhead;
- `compiled`: the trainer's step with `compile=True` (`training.loop.CompiledSteps`: `torch.compile(model)` with
  the batch and its length symbolic, an unpadded batch passed without its lengths);
- `compiled_graphed`: `graphed` around that compiled model (fused kernels, replayed);
- `cuda_graphs`: the trainer's step with `compile=True, cuda_graphs=True`: the compiled forward and backward
  replayed as CUDA graphs, one per batch shape (padded lengths rounded up), the loss, clipping and AdamW eager:
  what a real fold gets, padded batches included (`--lengths iemocap`).

`--lengths iemocap` gives the batches real padding: clip durations IEMOCAP-shaped (log-normal around 4.5 s at
50 frames/s, 1-30 s), cropped to `--frames` as the trainer crops, and batched by length as its sampler does
(each batch padded to its longest clip). `--filter` picks how the frequency filter treats a padded batch
(`FrequencyFilter.padded`: one FFT per distinct length, or every row's DFT as two batched matmuls), and
`--unpadded-filter` a batch with nothing padded (`FrequencyFilter.unpadded`: the FFT, or the DFT; "auto" takes the
DFT in a compiled step). Each
`trainer` row also counts the ATen ops one step dispatches, eagerly: on a GPU each is a kernel launch.

On CUDA each row also gives the model's FLOPs per step (counted by `torch.utils.flop_counter` on the torch
SSD, FFTs not counted), the achieved TFLOP/s and the model FLOP utilisation against the card's bf16 dense
matrix peak, both the datasheet's and the one measured here (an 8192^3 bf16 matmul).

Writes benchmarks/results/train_throughput-<device>.json and .md (or under --out).

    python benchmarks/train_throughput.py                                    # CPU, torch SSD
    python benchmarks/train_throughput.py --device cuda --variants tf_cmdt --backends torch mamba_ssm \\
        --steps trainer pageable graphed compiled
    python benchmarks/train_throughput.py --device cuda --variants tf_cmdt --lengths iemocap --filter grouped dft
    python benchmarks/train_throughput.py --device cuda --variants tf_cmdt --steps compiled_graphed \\
        --unpadded-filter fft dft
    python benchmarks/train_throughput.py --device cuda --variants tf_cmdt --backends torch mamba_ssm \\
        --steps compiled cuda_graphs --lengths iemocap
    python benchmarks/train_throughput.py --quick                            # tiny smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, clip_frames, iemocap_seconds, machine_info  # noqa: E402
from _timing import markdown_table, median_seconds, sync  # noqa: E402

from tfmamba.config import TrainConfig  # noqa: E402
from tfmamba.features.dataset import pad_collate  # noqa: E402
from tfmamba.model import VARIANTS, ModelConfig, TFMamba  # noqa: E402
from tfmamba.modules.frequency_filter import PADDED_MODES, UNPADDED_MODES, set_filter_modes  # noqa: E402
from tfmamba.training.input_norm import InputNorm  # noqa: E402
from tfmamba.training.loaders import batch_dtype  # noqa: E402
from tfmamba.training.loop import (LaggedValues, batch_losses, make_cmdt, make_optimizer,  # noqa: E402
                                   make_scheduler, parameter_groups, step_module, to_device, train_epoch)
from tfmamba.training.distributed import Dist  # noqa: E402

SSD_VARIANTS = {"temporal", "tf", "tf_cmdt", "dual_temporal"}
STEPS = ("trainer", "pageable", "graphed", "compiled", "compiled_graphed", "cuda_graphs")
# Dense bf16 matrix peak by the vendor's datasheet (SXM parts), TFLOP/s.
DATASHEET_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "A10G": 70.0}
NOT_DISTRIBUTED = Dist()


LENGTHS = ("full", "iemocap")


def batch_lengths(count: int, batch: int, frames: int, how: str, seed: int = 0) -> list[list[int]]:
    """Clip lengths of `count` batches: all `frames` ("full"), or IEMOCAP-shaped durations cropped to `frames`
    and cut into batches of neighbouring lengths from one sorted pool of 50 batches, as `LengthBucketSampler`
    does ("iemocap"); the batches are spread evenly over the pool, short to long."""
    if how == "full":
        return [[frames] * batch for _ in range(count)]
    rng = np.random.default_rng(seed)
    pool = np.sort(np.minimum(frames, clip_frames(iemocap_seconds(rng, batch * 50))))
    picks = np.linspace(0, 49, count).round().astype(int)
    return [pool[i * batch: (i + 1) * batch].tolist() for i in picks]


def random_batches(count: int, batch: int, frames: int, input_dim: int, num_classes: int, pinned: bool,
                   lengths: str = "full", gpu: bool = False) -> list[dict]:
    """`count` host batches as the trainer's loader yields them (`pad_collate` of the store's float16 frames, in
    `batch_dtype(gpu)`: float16 for a GPU, float32 for a CPU; lengths as `batch_lengths`)."""
    out = []
    for i, sizes in enumerate(batch_lengths(count, batch, frames, lengths)):
        items = [{"features": torch.randn(n, input_dim).half(), "label": (j + i) % num_classes, "utt_id": f"b{i}u{j}"}
                 for j, n in enumerate(sizes)]
        collated = pad_collate(items, dtype=batch_dtype(gpu))
        features, labels = collated["features"], collated["labels"]
        if pinned:
            features, labels = features.pin_memory(), labels.pin_memory()
        out.append({"features": features, "lengths": collated["lengths"], "labels": labels})
    return out


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched inside the `with` block (autograd's backward ops included)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - the dispatch protocol
        self.count += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(epoch: Callable[[], None], steps: int) -> float:
    """ATen ops one step of `epoch` (an eager step over `steps` batches) dispatches, on average."""
    with OpCounter() as counter:
        epoch()
    return counter.count / steps


def trainer_epoch(config: TrainConfig, model: nn.Module, device: torch.device, batches: list[dict],
                  steps_per_epoch: int) -> Callable[[], None]:
    """An epoch of the trainer's own `train_epoch` over `batches`."""
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    cmdt = make_cmdt(config)

    def epoch() -> None:
        train_epoch(config, model, InputNorm(), batches, optimizer, scheduler, device, 1, NOT_DISTRIBUTED, cmdt)

    return epoch


def graphed_epoch(config: TrainConfig, model: nn.Module, device: torch.device, batches: list[dict],
                  steps_per_epoch: int, warmup: int = 3) -> Callable[[], None]:
    """An epoch of the trainer's step captured as one CUDA graph (forward, losses, backward, clipping, AdamW)
    and replayed per batch after copying it into the graph's input buffers. The warm-up steps (on a side
    stream, as CUDA graphs need) are real updates."""
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay),
                                  lr=torch.tensor(config.lr, device=device), weight_decay=config.weight_decay,
                                  fused=True, capturable=True)
    for group in optimizer.param_groups:
        group["initial_lr"] = config.lr  # a float: the schedule then sets the tensor LR without reading it back
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    cmdt = make_cmdt(config)
    static = to_device(batches[0], InputNorm(), device)
    static.features, static.labels = static.features.clone(), static.labels.clone()

    def step() -> torch.Tensor:
        loss, ce, cmdt_value = batch_losses(config, model, static, cmdt, device)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        return torch.stack([loss, ce, cmdt_value]).detach().double()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            optimizer.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        terms = step()

    def epoch() -> None:
        lagged = LaggedValues(device)
        for i, raw in enumerate(batches):
            static.features.copy_(raw["features"], non_blocking=True)
            static.labels.copy_(raw["labels"], non_blocking=True)
            graph.replay()
            scheduler.step()
            lagged.push(i, terms)
        lagged.pop()

    return epoch


MATMULS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")


def kernel_profile(epoch: Callable[[], None], steps: int, top: int = 15) -> dict:
    """One epoch under torch.profiler: the GPU's busy time per step (the sum of its kernels' times), the `top`
    kernels by time, each with its ms per step and share of the busy time, the matrix products by shape
    (`matmul_shapes`), which name the product behind a slow kernel, and the host's busy time and its largest
    operations (`host_operations`), which name what the host does while the GPU waits."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        start = time.perf_counter()
        epoch()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cuda_time_total", row_limit=25), flush=True)
    kernels = device_kernels(averages)
    busy = max(sum(e.self_device_time_total for e in kernels) / 1e3, 1e-9)  # ms
    ranked = sorted(kernels, key=lambda e: -e.self_device_time_total)[:top]
    return {"gpu_busy_ms_per_step": busy / steps, "wall_ms_per_step": 1e3 * wall / steps,
            "top_kernels": [{"kernel": e.key[:100], "calls_per_step": e.count / steps,
                             "ms_per_step": e.self_device_time_total / 1e3 / steps,
                             "share": e.self_device_time_total / 1e3 / busy} for e in ranked],
            "matmuls": matmul_shapes(prof, steps), "host": host_operations(prof.events(), steps)}


def host_operations(events: list, steps: int, top: int = 12) -> dict:
    """The host's side of a profiled epoch: its top-level operations (those no other profiled operation called: a
    compiled graph's call, one of autograd's backward nodes, the optimiser's step, an eager op), grouped by name,
    the most time first, each with its calls and ms per step (the operations it called included); and their sum per
    step, the host's time inside operations (Python between them not counted). When the host bounds a step (the
    step's wall above the GPU's busy time), this says what the host spends that time on. Times include the
    profiler's own cost of recording each operation."""
    totals: dict[str, list[float]] = {}
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CPU or event.cpu_parent is not None:
            continue
        total = totals.setdefault(event.name, [0.0, 0])
        total[0] += event.cpu_time_total / 1e3
        total[1] += 1
    ranked = sorted(totals.items(), key=lambda item: -item[1][0])
    return {"host_busy_ms_per_step": sum(ms for ms, _ in totals.values()) / steps,
            "top_operations": [{"operation": name[:100], "calls_per_step": calls / steps, "ms_per_step": ms / steps}
                               for name, (ms, calls) in ranked[:top]]}


def device_kernels(averages: list) -> list:
    """The GPU's own kernels and copies among the profiler's averaged events: not the annotations the profiler also
    places on the GPU's timeline (`## Call CompiledFxGraph ... ##` around a compiled graph's kernels,
    `Optimizer.step#...`), whose times overlap the kernels inside them and would count them twice."""
    return [e for e in averages if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
            and not getattr(e, "is_user_annotation", False)]


def matmul_shapes(prof: "torch.profiler.profile", steps: int, top: int = 12) -> list[dict]:
    """The profiled matrix products (ATen mm, bmm, addmm, baddbmm) grouped by input shapes, the most device time
    first (then CPU time): per step, their calls, the device's ms and the host's. Products replayed inside a CUDA
    graph are not seen, only the graph's launch."""
    products = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in MATMULS]
    products.sort(key=lambda e: (-e.device_time_total, -e.cpu_time_total))
    return [{"op": e.key, "input_shapes": e.input_shapes, "calls_per_step": e.count / steps,
             "device_ms_per_step": e.device_time_total / 1e3 / steps, "cpu_ms_per_step": e.cpu_time_total / 1e3 / steps}
            for e in products[:top]]


def padding_share(batches: list[dict]) -> float:
    """The share of the batches' frames that are padding."""
    frames = sum(b["features"].shape[0] * b["features"].shape[1] for b in batches)
    return 1.0 - sum(int(b["lengths"].sum()) for b in batches) / frames


def mean_step_flops(model_config: ModelConfig, config: TrainConfig, lengths: list[list[int]],
                    device: torch.device) -> float:
    """The mean FLOPs of a step over batches of these clip lengths: `step_flops` at each batch's padded shape
    (batch x its longest clip), counted once per distinct shape. The model computes on padded frames too."""
    shapes = [(len(row), max(row)) for row in lengths]
    counted = {shape: step_flops(model_config, config, *shape, device) for shape in sorted(set(shapes))}
    return sum(counted[shape] for shape in shapes) / len(shapes)


def step_flops(model_config: ModelConfig, config: TrainConfig, batch: int, frames: int, device: torch.device) -> int:
    """FLOPs of one training step's forward and backward at batch x frames, unpadded, counted on the torch SSD
    (FFTs are not counted, nor the padded filter's DFT that stands in for them)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = TFMamba(ModelConfig.from_dict({**model_config.to_dict(), "ssd_backend": "torch"})).to(device).train()
    raw = random_batches(1, batch, frames, model_config.input_dim, model_config.num_classes, pinned=False)[0]
    with FlopCounterMode(display=False) as counter:
        loss, _, _ = batch_losses(config, model, to_device(raw, InputNorm(), device), make_cmdt(config), device)
        loss.backward()
    return counter.get_total_flops()


def measured_bf16_tflops(device: torch.device, n: int = 8192) -> float:
    """The card's bf16 dense matmul rate measured here (mean of 10 products after 3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 10 * 2 * n**3 / (time.perf_counter() - start) / 1e12


def datasheet_tflops(name: str) -> float | None:
    return next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="default 32 on CUDA (the paper's), 8 on CPU")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per utterance, the crop with --lengths iemocap (default 300, ~6 s of WavLM at 50 Hz)")
    parser.add_argument("--backends", nargs="+", default=["torch"], help="SSD backends to time: torch, mamba_ssm")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--steps", nargs="+", default=["trainer"], choices=STEPS, help="how a step runs (see above)")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="timed steps per epoch (20 CUDA, 2 CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per row (the median is kept)")
    parser.add_argument("--lengths", default="full", choices=LENGTHS,
                        help="full: every clip has --frames frames; iemocap: real padding (see above)")
    parser.add_argument("--filter", nargs="+", default=["auto"], choices=PADDED_MODES,
                        help="how the frequency filter treats a padded batch (FrequencyFilter.padded)")
    parser.add_argument("--unpadded-filter", nargs="+", default=["auto"], choices=UNPADDED_MODES,
                        help="how it treats a batch with nothing padded (FrequencyFilter.unpadded)")
    parser.add_argument("--profile", action="store_true",
                        help="CUDA: profile one more epoch per row: GPU busy time per step, the top kernels, the "
                             "matrix products by input shape, and the host's busy time and its largest operations")
    parser.add_argument("--quick", action="store_true", help="tiny model (smoke test); batch 4 x 32 frames unless given")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if not cuda and {"graphed", "pageable", "compiled_graphed", "cuda_graphs"} & set(args.steps):
        parser.error("--steps graphed, compiled_graphed, cuda_graphs and pageable measure CUDA effects: "
                     "use --device cuda")
    if args.lengths != "full" and {"graphed", "compiled_graphed"} & set(args.steps):
        parser.error("a CUDA graph replays one batch shape: --steps graphed and compiled_graphed need --lengths full")
    batch = args.batch or (4 if args.quick else 32 if cuda else 8)
    frames, sizes, repeats = args.frames or (32 if args.quick else 300), {}, args.repeats
    per_epoch = args.steps_per_epoch or (20 if cuda else 2)
    if args.quick:
        repeats, per_epoch = 1, 2
        sizes = dict(d_model=32, d_state=8, headdim=16, num_heads=4, ffn_dim=16, input_dim=32, chunk_size=16)
    device_name = machine_info()["device"]
    peak_measured = measured_bf16_tflops(device) if cuda else None
    peak_datasheet = datasheet_tflops(device_name) if cuda else None
    records: list[dict] = []
    tag = device.type + ("-quick" if args.quick else "")
    started_at = time.strftime("%Y-%m-%d %H:%M:%S")

    def write_results() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {"benchmark": "train_throughput", "date": started_at, "machine": machine_info(),
                   "bf16_peak_tflops_measured": peak_measured, "bf16_peak_tflops_datasheet": peak_datasheet,
                   "records": records}
        (args.out / f"train_throughput-{tag}.json").write_text(json.dumps(payload, indent=2) + "\n")
        (args.out / f"train_throughput-{tag}.md").write_text("\n".join(markdown(payload, batch, frames, cuda)) + "\n")

    for variant in args.variants:
        config = TrainConfig(cmdt_weight=0.1 if variant == "tf_cmdt" else 0.0, amp=True, epochs=1000)
        model_config = ModelConfig.from_dict({**config.model.to_dict(), "variant": variant, **sizes})
        flops = mean_step_flops(model_config, config, batch_lengths(per_epoch, batch, frames, args.lengths),
                                device) if cuda else None
        for backend in args.backends if variant in SSD_VARIANTS else ["-"]:
            for step, padded, unpadded in [(step, mode, whole) for step in args.steps for mode in args.filter
                                           for whole in args.unpadded_filter]:
                torch.manual_seed(0)
                settings = model_config.to_dict() | ({"ssd_backend": backend} if backend != "-" else {})
                model = TFMamba(ModelConfig.from_dict(settings)).to(device).train()
                set_filter_modes(model, padded=padded, unpadded=unpadded)
                batches = random_batches(per_epoch, batch, frames, model_config.input_dim, model_config.num_classes,
                                         pinned=cuda and step != "pageable", lengths=args.lengths, gpu=cuda)
                row = {"variant": variant, "ssd_backend": backend, "step": step, "filter": padded,
                       "unpadded_filter": unpadded, "batch": batch, "frames": frames, "lengths": args.lengths,
                       "steps_per_epoch": per_epoch, "padding": padding_share(batches)}
                try:
                    started = time.perf_counter()
                    compiled = config.replace(compile=step.startswith("compiled") or step == "cuda_graphs",
                                              cuda_graphs=step == "cuda_graphs", ssd_backend=settings["ssd_backend"])
                    net = step_module(compiled, model, device)  # the model itself, or the trainer's CompiledSteps
                    if step.endswith("graphed"):
                        epoch = graphed_epoch(config, net, device, batches, per_epoch)
                    else:
                        epoch = trainer_epoch(config, net, device, batches, per_epoch)
                    # with cuda_graphs a shape's first step runs the compiled code, its second records its graphs
                    warmup = 2 if step == "cuda_graphs" else 1
                    seconds = median_seconds(epoch, device, warmup=warmup, repeats=repeats) / per_epoch
                    row["setup_s"] = time.perf_counter() - started - seconds * per_epoch * repeats
                    row |= {"step_ms": 1e3 * seconds, "utt_per_s": batch / seconds}
                    if step == "trainer":
                        row["ops_per_step"] = ops_per_step(epoch, per_epoch)
                    if args.profile and cuda:
                        row["profile"] = kernel_profile(epoch, per_epoch)
                except Exception as err:  # one mode failing on a machine must not lose the others' rows
                    row["error"] = f"{type(err).__name__}: {err}"[:500]
                    traceback.print_exc()
                if cuda and "step_ms" in row:
                    row["flops_per_step"] = flops
                    row["tflops"] = flops / (row["step_ms"] / 1e3) / 1e12
                    row["mfu_measured_peak"] = row["tflops"] / peak_measured
                    if peak_datasheet:
                        row["mfu_datasheet_peak"] = row["tflops"] / peak_datasheet
                    row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
                    torch.cuda.reset_peak_memory_stats(device)
                records.append(row)
                print(json.dumps(row), flush=True)
                write_results()  # after every row: a run stopped at its time limit keeps what it finished
                del model, batches
                if cuda:
                    torch.cuda.empty_cache()
    print(f"wrote {args.out / f'train_throughput-{tag}.json'} and .md")
    return 0


def markdown(payload: dict, batch: int, frames: int, cuda: bool) -> list[str]:
    m = payload["machine"]
    lines = [f"# Training throughput ({m['device']})", "",
             f"{payload['date']}; {m['cpu']}, {m['cores']} cores, torch {m['torch']}, device {m['device']}; "
             f"batch {batch} x {frames} frames, {'bf16 autocast, ' if cuda else ''}the trainer's step "
             "(CE + CMDT for tf_cmdt, clipping, AdamW, LR schedule). Lengths `full`: no padding; `iemocap`: "
             "IEMOCAP-shaped clips cropped to the frames, batched by length (padding: the share of padded frames). "
             "Ops: ATen ops per eager step (a kernel launch each on a GPU).", ""]
    if cuda:
        lines += [f"bf16 dense matmul peak: {payload['bf16_peak_tflops_measured']:.0f} TFLOP/s measured here, "
                  f"{payload['bf16_peak_tflops_datasheet']} by the datasheet. MFU = the model's counted FLOPs per "
                  "step (at each batch's padded shape) / step time / peak.", ""]
    header = ["variant", "SSD backend", "step", "filter (padded, unpadded)", "lengths (padding)", "ops", "step ms",
              "utt/s"]
    header += ["TFLOP/s", "MFU (measured peak)", "MFU (datasheet)"] if cuda else []
    rows = []
    for r in payload["records"]:
        filters = f"{r.get('filter', 'auto')}, {r.get('unpadded_filter', 'auto')}"
        what = [r["variant"], r["ssd_backend"], r["step"], filters,
                f"{r.get('lengths', 'full')} ({100 * r.get('padding', 0.0):.0f}%)"]
        if "error" in r:
            rows.append(what + ["", "failed", r["error"][:80]] + ([""] * 4 if cuda else [""]))
            continue
        ops = f"{r['ops_per_step']:.0f}" if "ops_per_step" in r else "-"
        row = what + [ops, f"{r['step_ms']:.1f}", f"{r['utt_per_s']:.1f}"]
        if cuda:
            row += [f"{r['tflops']:.0f}", f"{100 * r['mfu_measured_peak']:.1f}%",
                    f"{100 * r['mfu_datasheet_peak']:.1f}%" if "mfu_datasheet_peak" in r else "-"]
        rows.append(row)
    lines += markdown_table(header, rows)
    for r in payload["records"]:
        if "profile" not in r:
            continue
        prof = r["profile"]
        what = (f"{r['variant']}, SSD {r['ssd_backend']}, step {r['step']}, filter "
                f"({r.get('filter', 'auto')}, {r.get('unpadded_filter', 'auto')})")
        lines += ["", f"Kernels of {what}: the GPU is busy {prof['gpu_busy_ms_per_step']:.1f} ms of each "
                  f"{prof['wall_ms_per_step']:.1f} ms step (profiled epoch).", ""]
        lines += markdown_table(["kernel", "calls / step", "ms / step", "share of busy"],
                                [[f"`{k['kernel']}`", f"{k['calls_per_step']:g}", f"{k['ms_per_step']:.2f}",
                                  f"{100 * k['share']:.1f}%"] for k in prof["top_kernels"]])
        if prof.get("host"):
            host = prof["host"]
            lines += ["", f"Host operations of {what} (top-level: each with the operations it called): the host "
                      f"spends {host['host_busy_ms_per_step']:.1f} ms of each {prof['wall_ms_per_step']:.1f} ms step in "
                      "them (profiled epoch, the profiler's cost included, Python between operations not).", ""]
            lines += markdown_table(["operation", "calls / step", "ms / step"],
                                    [[f"`{o['operation']}`", f"{o['calls_per_step']:g}", f"{o['ms_per_step']:.2f}"]
                                     for o in host["top_operations"]])
        if prof.get("matmuls"):
            lines += ["", f"Matrix products of {what} by input shapes (none inside a CUDA graph):", ""]
            lines += markdown_table(["op", "input shapes", "calls / step", "GPU ms / step", "host ms / step"],
                                    [[m["op"], f"`{m['input_shapes']}`", f"{m['calls_per_step']:g}",
                                      f"{m['device_ms_per_step']:.2f}", f"{m['cpu_ms_per_step']:.2f}"]
                                     for m in prof["matmuls"]])
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
