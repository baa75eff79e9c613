"""Training throughput (utterances/s) of each Table III variant at full size: forward, CE (+ CMDT for
tf_cmdt), backward and an AdamW step on random features, bf16 autocast on CUDA.

Writes benchmarks/results/train_throughput-<device>.json and .md (or under --out).

    python benchmarks/train_throughput.py                          # CPU, torch SSD
    python benchmarks/train_throughput.py --device cuda --backends torch mamba_ssm
    python benchmarks/train_throughput.py --quick                  # tiny smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info  # noqa: E402
from _timing import markdown_table, median_seconds  # noqa: E402

from tfmamba.losses import cmdt_loss  # noqa: E402
from tfmamba.model import VARIANTS, build_model  # noqa: E402

SSD_VARIANTS = {"temporal", "tf", "tf_cmdt", "dual_temporal"}


def train_step_fn(model, optimizer, feats, lengths, labels, device, use_cmdt: bool):
    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(feats, lengths)
            loss = F.cross_entropy(out.logits.float(), labels)
            if use_cmdt:
                loss = loss + 0.1 * cmdt_loss(out.sequence, out.mask, labels, temperature=0.1)
        loss.backward()
        optimizer.step()

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="default 32 on CUDA (the paper's), 8 on CPU")
    parser.add_argument("--frames", type=int, default=300, help="frames per utterance (~6 s of WavLM at 50 Hz)")
    parser.add_argument("--backends", nargs="+", default=["torch"], help="SSD backends to time: torch, mamba_ssm")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny model, tiny batch (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device(args.device)
    batch = args.batch or (32 if device.type == "cuda" else 8)
    frames, sizes, repeats = args.frames, {}, args.repeats
    if args.quick:
        batch, frames, repeats = 4, 32, 1
        sizes = dict(d_model=32, d_state=8, headdim=16, num_heads=4, ffn_dim=16, input_dim=32, chunk_size=16)
    records = []
    for variant in args.variants:
        for backend in args.backends if variant in SSD_VARIANTS else ["-"]:
            torch.manual_seed(0)
            kwargs = dict(sizes)
            if backend != "-":
                kwargs["ssd_backend"] = backend
            model = build_model(variant, **kwargs).to(device).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
            feats = torch.randn(batch, frames, model.config.input_dim, device=device)
            lengths = torch.full((batch,), frames, device=device)
            labels = torch.arange(batch, device=device) % model.config.num_classes
            step = train_step_fn(model, optimizer, feats, lengths, labels, device, variant == "tf_cmdt")
            seconds = median_seconds(step, device, warmup=1, repeats=repeats)
            row = {"variant": variant, "ssd_backend": backend, "batch": batch, "frames": frames,
                   "step_ms": 1e3 * seconds, "utt_per_s": batch / seconds}
            if device.type == "cuda":
                row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
                torch.cuda.reset_peak_memory_stats(device)
            records.append(row)
            print(json.dumps(row), flush=True)
            del model, optimizer

    tag = device.type + ("-quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "train_throughput", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "machine": machine_info(), "records": records}
    (args.out / f"train_throughput-{tag}.json").write_text(json.dumps(payload, indent=2) + "\n")
    m = payload["machine"]
    lines = [f"# Training throughput ({device.type})", "",
             f"{payload['date']}; {m['cpu']}, {m['cores']} cores, torch {m['torch']}, device {m['device']}; "
             f"batch {batch} x {frames} frames, {'bf16 autocast, ' if device.type == 'cuda' else ''}AdamW.", ""]
    lines += markdown_table(["variant", "SSD backend", "step ms", "utt/s"],
                            [[r["variant"], r["ssd_backend"], f"{r['step_ms']:.1f}", f"{r['utt_per_s']:.1f}"]
                             for r in records])
    (args.out / f"train_throughput-{tag}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / f'train_throughput-{tag}.json'} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
