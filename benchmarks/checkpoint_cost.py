"""What a fold's checkpoint costs: its size and the time to write it, against the GPU epoch it follows.

The checkpoint is the trainer's (`tfmamba.checkpoint.save_checkpoint` with the model's weights, the best
weights, AdamW's state after a step, the scheduler and the RNGs) for the full-size `tf_cmdt` model on 1024-dim
features, written `--repeats` times into one folder as the epochs of a fold write it (each write replaces the
last). With `checkpoint_seconds` 0 a fold writes one after every epoch, and a sweep also copies it to Ray's
storage (a bucket on a cluster), which this does not measure. The epoch it is set against is an IEMOCAP fold's
training at the graphed step's rate from a `train_throughput.py` result (default: the H200's).

Writes benchmarks/results/checkpoint_cost.json and .md (or under --out).

    python benchmarks/checkpoint_cost.py [--repeats 5] [--dir /path/on/the/disk/to/measure]
    python benchmarks/checkpoint_cost.py --quick      # tiny model (CI smoke run)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, STEP_RESULTS, step_rate, write_results  # noqa: E402

from tfmamba.checkpoint import cpu_state_dict, rng_state, save_checkpoint  # noqa: E402
from tfmamba.config import TrainConfig  # noqa: E402
from tfmamba.model import TFMamba  # noqa: E402
from tfmamba.training.loop import make_optimizer, make_scheduler  # noqa: E402

IEMOCAP_TRAIN_CLIPS = 4400  # a leave-one-session-out fold of IEMOCAP's 5531 clips trains on ~4/5 of them


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="checkpoints written (the first is cold)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write them (default: a temp folder)")
    parser.add_argument("--step-results", type=Path, default=STEP_RESULTS,
                        help="a train_throughput result whose IEMOCAP-length rows give a GPU epoch's length")
    parser.add_argument("--quick", action="store_true", help="tiny model (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    tiny = dict(d_model=16, d_state=8, headdim=8, num_heads=2, ffn_dim=16, classifier_dims=[16])
    overrides = tiny if args.quick else {}
    config = TrainConfig().replace(**overrides)
    model = TFMamba(config.model_config(4, 16 if args.quick else 1024))
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, 100)
    model(torch.randn(2, 40, model.config.input_dim), None).logits.sum().backward()
    optimizer.step()  # AdamW's moments exist from the first step on
    seconds = []
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for epoch in range(1, args.repeats + 1):
            start = time.perf_counter()
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}
            written = save_checkpoint(Path(folder) / "last", model, cpu_state_dict(model), state, {"epoch": epoch})
            seconds.append(time.perf_counter() - start)
        megabytes = sum(f.stat().st_size for f in written.iterdir()) / 1e6
    warm = statistics.median(seconds[1:] or seconds)
    results = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "checkpoint_mb": megabytes,
               "write_s": seconds, "write_warm_median_s": warm, "quick": args.quick}
    rows = [("model", f"{config.model.variant}, {results['params_m']:.2f} M parameters"),
            ("checkpoint", f"{megabytes:.0f} MB (weights, best weights, AdamW's moments, scheduler, RNGs)"),
            ("write, first (cold)", f"{seconds[0] * 1000:.0f} ms"),
            (f"write, median of the next {len(seconds) - 1}", f"{warm * 1000:.0f} ms")]
    step = step_rate(args.step_results)
    if step:
        epoch_s = IEMOCAP_TRAIN_CLIPS / step["utt_per_s"]
        results |= {"gpu_step": step, "gpu_epoch_s": epoch_s}
        rows += [("an IEMOCAP fold's training epoch on the GPU", f"{epoch_s:.2f} s ({IEMOCAP_TRAIN_CLIPS} clips at "
                  f"{step['utt_per_s']:.0f} utt/s, {step['step']} on {step['device']})"),
                 ("a warm write per epoch, against that epoch", f"{warm / epoch_s:.0%}")]
    name = "checkpoint_cost" + ("-quick" if args.quick else "")
    json_path, md_path = write_results(name, "A fold's checkpoint: size and write time", results, rows, out=args.out)
    print(f"{megabytes:.0f} MB, {warm * 1000:.0f} ms a write; wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
