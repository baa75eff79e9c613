"""The fold's loaders alone, no model: how many utterances a second they hand on, against the GPU step's rate.

A fold's training loader (`tfmamba.training.loaders.train_loader`: length buckets of 32, clips cropped to 600
frames, padded in the store's float16 as for a GPU) and its validation loader (`eval_loader`: whole clips), over
the IEMOCAP-shaped synthetic corpus of `fold_gpu.py`, with 0 and more loader workers, each for a few epochs as
the trainer runs them. A loader slower than the training step leaves the GPU idle whatever the model; a faster
one means a fold's wall beyond the GPU's busy time is not the loader's. The step's rate is read from a
`train_throughput.py` result (by default the H200's: the trainer's compiled step replayed as CUDA graphs over the
same padded batch shapes, `results/train_throughput-cuda-graphs-padded.json`).

Each batch is handed on as the trainer's would be. On CUDA it is pinned by the loader (in its pinning thread)
and copied to the GPU (`device_batches`). Without a GPU nothing can be pinned, so the main process copies the
batch's features once into a reused buffer instead: the same bytes read as pinning would read. With workers a
batch comes from the workers through shared memory. The main process's CPU time a batch (its threads, not the
workers') is the host time the loader takes from the thread that launches the GPU's work.

Writes benchmarks/results/loader_throughput-<device>.json and .md (or under --out).

    python benchmarks/loader_throughput.py                      # CPU: 1600 clips, 3 epochs, workers 0 1 2
    python benchmarks/loader_throughput.py --device cuda        # pinned, copied to the GPU
    python benchmarks/loader_throughput.py --quick              # tiny smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, STEP_RESULTS, machine_info, step_rate, synthetic_corpus  # noqa: E402
from _timing import markdown_table  # noqa: E402

from tfmamba.config import TrainConfig  # noqa: E402
from tfmamba.training.input_norm import InputNorm  # noqa: E402
from tfmamba.training.loaders import eval_loader, fold_datasets, train_loader  # noqa: E402
from tfmamba.training.loop import device_batches  # noqa: E402

class HandOn:
    """What happens to each batch after the loader: on CUDA the trainer's `device_batches` (the loader pinned it;
    copied to the GPU on a side stream), else a copy of its features into a reused host buffer (pinning's read)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffer = torch.empty(0, dtype=torch.float16)

    def batches(self, loader: Iterable[dict]) -> Iterator[dict]:
        if self.device.type == "cuda":
            for raw, _ in device_batches(loader, InputNorm(), self.device):
                yield raw
            torch.cuda.synchronize(self.device)
            return
        for raw in loader:
            features = raw["features"].reshape(-1)
            if self.buffer.numel() < features.numel():
                self.buffer = torch.empty(features.numel(), dtype=features.dtype)
            self.buffer[: features.numel()].copy_(features)
            yield raw


def time_pass(loader: Iterable[dict], hand_on: HandOn) -> dict:
    """One pass over `loader`: batches, utterances, padded frames, wall, first batch and main-process CPU time."""
    start, cpu_start = time.perf_counter(), time.process_time()
    first = None
    batches = utterances = frames = real = 0
    for raw in hand_on.batches(loader):
        if first is None:
            first = time.perf_counter() - start
        batches += 1
        utterances += len(raw["labels"])
        frames += raw["features"].shape[0] * raw["features"].shape[1]
        real += int(raw["lengths"].sum())
    wall = time.perf_counter() - start
    return {"batches": batches, "utterances": utterances, "wall_s": wall, "first_batch_ms": 1000 * (first or 0.0),
            "main_cpu_ms_per_batch": 1000 * (time.process_time() - cpu_start) / max(batches, 1),
            "padding": 1 - real / max(frames, 1)}


def warm_summary(passes: list[dict]) -> dict:
    """Rates over the warm passes (all but the first, which pays the first page faults and the workers' start)."""
    warm = passes[1:] or passes
    wall, batches = sum(p["wall_s"] for p in warm), sum(p["batches"] for p in warm)
    return {"utt_per_s": sum(p["utterances"] for p in warm) / wall, "ms_per_batch": 1000 * wall / batches,
            "main_cpu_ms_per_batch": statistics.fmean(p["main_cpu_ms_per_batch"] for p in warm),
            "first_batch_ms": statistics.fmean(p["first_batch_ms"] for p in warm)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: pinned batches copied to the GPU")
    parser.add_argument("--clips", type=int, default=1600, help="utterances in the corpus (70%% train, 15%% valid)")
    parser.add_argument("--epochs", type=int, default=3, help="passes over each loader (the first is cold)")
    parser.add_argument("--num-workers", type=int, nargs="+", default=[0, 1, 2], help="loader workers to compare")
    parser.add_argument("--step-results", type=Path, default=STEP_RESULTS,
                        help="a train_throughput result whose IEMOCAP-length rows give the step's rate to compare")
    parser.add_argument("--quick", action="store_true", help="tiny corpus (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device(args.device)
    dim, clips, epochs = (16, 96, 2) if args.quick else (1024, args.clips, args.epochs)
    store, manifest, fold = synthetic_corpus(clips, dim)
    hand_on = HandOn(device)
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator is found")  # CPU: pinning is skipped
    records = []
    for workers in args.num_workers:
        config = TrainConfig().replace(num_workers=workers)
        data = fold_datasets(config, fold, manifest, store)
        loader, sampler = train_loader(config, data.train, 1, 0, gpu=True)
        valid = eval_loader(config, data.valid, 1, 0, gpu=True)
        passes: dict[str, list[dict]] = {"train": [], "valid": []}
        for epoch in range(1, epochs + 1):
            sampler.set_epoch(epoch)
            data.train.set_epoch(epoch)
            passes["train"].append(time_pass(loader, hand_on))
            passes["valid"].append(time_pass(valid, hand_on))
        row = {"num_workers": workers, "batch_size": config.batch_size, "max_frames": config.max_frames,
               "train": warm_summary(passes["train"]), "valid": warm_summary(passes["valid"]), "passes": passes}
        records.append(row)
        print(f"workers {workers}: train {row['train']['utt_per_s']:.0f} utt/s ({row['train']['ms_per_batch']:.1f} ms "
              f"a batch), valid {row['valid']['utt_per_s']:.0f} utt/s", flush=True)
    step = step_rate(args.step_results)
    write_results(args, device, clips, len(fold.train), epochs, records, step)
    return 0


def write_results(args: argparse.Namespace, device: torch.device, clips: int, train_clips: int, epochs: int,
                  records: list[dict], step: dict | None) -> None:
    """benchmarks/results/loader_throughput-<device>.json and .md (or under --out)."""
    tag = device.type + ("-quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "loader_throughput", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(),
               "clips": clips, "train_clips": train_clips, "epochs": epochs, "gpu_step": step, "records": records}
    json_path, md_path = args.out / f"loader_throughput-{tag}.json", args.out / f"loader_throughput-{tag}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    m = payload["machine"]
    how = ("pinned by the loader and copied to the GPU" if device.type == "cuda"
           else "not pinned (no GPU): the main process copies each batch's features once instead")
    lines = [f"# The fold's loaders alone, {m['device']}", "",
             f"{payload['date']}; {m['cpu']}, {m['cores']} cores, torch {m['torch']}; {clips} synthetic IEMOCAP-shaped "
             f"clips ({payload['train_clips']} training), {epochs} passes a loader (the rates are of the warm ones, "
             f"after the first), batches of float16 features, {how}.", ""]
    if step:
        lines += [f"The step to feed: {step['step']} ({step['ssd_backend']}) on {step['device']}, "
                  f"{step['utt_per_s']:.0f} utt/s ({step['step_ms']:.2f} ms a batch of 32), from {step['file']}.", ""]
    header = ["loader workers", "train utt/s", "ms a batch", "main-process CPU ms a batch", "first batch ms",
              "valid utt/s"] + (["train loader / GPU step"] if step else [])
    lines += markdown_table(header, [[r["num_workers"], f"{r['train']['utt_per_s']:.0f}",
                                      f"{r['train']['ms_per_batch']:.1f}", f"{r['train']['main_cpu_ms_per_batch']:.1f}",
                                      f"{r['train']['first_batch_ms']:.0f}", f"{r['valid']['utt_per_s']:.0f}"]
                                     + ([f"{r['train']['utt_per_s'] / step['utt_per_s']:.2f}x"] if step else [])
                                     for r in records])
    md_path.write_text("\n".join(lines) + "\n")
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    raise SystemExit(main())
