"""SSD backends: chunked torch SSD vs the step-by-step recurrence vs mamba-ssm (CUDA), at the full model's shapes.

Writes benchmarks/results/ssd-<device>.json and .md (or under --out). Reports forward and
forward+backward times, speed-ups, max abs differences, and the SSD's share of the full
model's forward time (two branches each run one SSD).

    python benchmarks/ssd.py                  # CPU
    python benchmarks/ssd.py --device cuda    # adds mamba-ssm when it imports
    python benchmarks/ssd.py --quick          # tiny smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info  # noqa: E402
from _timing import interleaved_seconds, markdown_table  # noqa: E402

from tfmamba.model import build_model  # noqa: E402
from tfmamba.ssd import _import_mamba_chunk_scan, mamba_ssm_scan, mixer_like_inputs, ssd_scan, ssd_scan_sequential  # noqa: E402

FULL = dict(nheads=32, headdim=64, ngroups=1, dstate=128)


def make_inputs(batch: int, seqlen: int, device: torch.device, nheads: int, headdim: int, ngroups: int, dstate: int,
                requires_grad: bool) -> dict[str, object]:
    inputs, extras = mixer_like_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, device=device)
    for t in inputs.values():
        t.requires_grad_(requires_grad)
    return {**inputs, **extras}


def run_method(fn, inputs: dict, chunk: int, backward: bool):
    def call():
        y = fn(**inputs, chunk_size=chunk)
        if backward:
            y.float().square().mean().backward()
        return y

    return call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 1 on CPU, 16 on CUDA)")
    parser.add_argument("--seqlens", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--chunk", type=int, default=64, help="chunk size of the torch SSD")
    parser.add_argument("--max-sequential", type=int, default=2000, help="longest seqlen for the slow recurrence")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and markdown")
    args = parser.parse_args()

    device = torch.device(args.device)
    shapes = dict(FULL)
    batch = args.batch or (16 if device.type == "cuda" else 1)
    seqlens, repeats = args.seqlens, 5
    if args.quick:
        shapes, batch, seqlens, repeats = dict(nheads=4, headdim=8, ngroups=1, dstate=8), 1, [64, 128], 1
    has_mamba = device.type == "cuda" and _import_mamba_chunk_scan() is not None
    methods = {"torch_chunked": (ssd_scan, args.chunk), "sequential": (ssd_scan_sequential, args.chunk)}
    if has_mamba:
        methods["mamba_ssm"] = (mamba_ssm_scan, 256)

    records = []
    for seqlen in seqlens:
        for backward in (False, True):
            inputs = make_inputs(batch, seqlen, device, requires_grad=backward, **shapes)
            row = {"seqlen": seqlen, "pass": "fwd+bwd" if backward else "fwd"}
            chosen = {name: spec for name, spec in methods.items()
                      if name != "sequential" or (seqlen <= args.max_sequential and not (backward and seqlen > 500))}
            calls = {name: run_method(fn, inputs, chunk, backward) for name, (fn, chunk) in chosen.items()}
            outputs = {}
            with torch.enable_grad() if backward else torch.no_grad():
                best = interleaved_seconds(calls, device, warmup=1, repeats=repeats,
                                           repeats_of={"sequential": min(repeats, 2)})
                if not backward:
                    outputs = {name: fn(**inputs, chunk_size=chunk).float() for name, (fn, chunk) in chosen.items()}
            row |= {f"{name}_ms": 1e3 * seconds for name, seconds in best.items()}
            if "sequential" in outputs:
                row["max_abs_diff_chunked_vs_sequential"] = (outputs["torch_chunked"] - outputs["sequential"]).abs().max().item()
            if "mamba_ssm" in outputs:
                row["max_abs_diff_mamba_vs_torch"] = (outputs["mamba_ssm"] - outputs["torch_chunked"]).abs().max().item()
            if "sequential_ms" in row:
                row["chunked_speedup_vs_sequential"] = row["sequential_ms"] / row["torch_chunked_ms"]
            if "mamba_ssm_ms" in row:
                row["mamba_speedup_vs_torch"] = row["torch_chunked_ms"] / row["mamba_ssm_ms"]
            records.append(row)
            print(json.dumps(row), flush=True)

    # Share of the full model's forward time spent in its two SSD scans (batch 1, the longest seqlen <= 1000).
    share_len = max([s for s in seqlens if s <= 1000] or seqlens[:1])
    model_kwargs = {} if not args.quick else dict(d_model=16, d_state=8, headdim=8, num_heads=2, ffn_dim=8, input_dim=16)
    model = build_model("tf", ssd_backend="torch", chunk_size=args.chunk, **model_kwargs).to(device).eval()
    feats = torch.randn(1, share_len, model.config.input_dim, device=device)
    lengths = torch.tensor([share_len], device=device)
    ssd_inputs = make_inputs(1, share_len, device, requires_grad=False, **shapes)
    with torch.no_grad():
        best = interleaved_seconds({"model": lambda: model(feats, lengths),
                                    "ssd": run_method(ssd_scan, ssd_inputs, args.chunk, False)}, device, repeats=repeats)
    model_ms, one_ssd_ms = 1e3 * best["model"], 1e3 * best["ssd"]
    share = {"seqlen": share_len, "model_forward_ms": model_ms, "ssd_ms_per_branch": one_ssd_ms,
             "ssd_share_of_forward": 2 * one_ssd_ms / model_ms}
    print(json.dumps(share), flush=True)

    tag = device.type + ("-quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "ssd", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(),
               "batch": batch, "shapes": shapes, "chunk": args.chunk, "mamba_ssm": has_mamba,
               "records": records, "ssd_share": share}
    (args.out / f"ssd-{tag}.json").write_text(json.dumps(payload, indent=2) + "\n")
    names = list(methods)
    header = ["seqlen", "pass"] + [f"{n} ms" for n in names] + ["chunked / sequential", "mamba / torch", "max |diff|"]
    rows = []
    for r in records:
        diff = r.get("max_abs_diff_mamba_vs_torch", r.get("max_abs_diff_chunked_vs_sequential", ""))
        rows.append([r["seqlen"], r["pass"]] + [f"{r[f'{n}_ms']:.2f}" if f"{n}_ms" in r else "-" for n in names]
                    + [f"{r['chunked_speedup_vs_sequential']:.1f}x" if "chunked_speedup_vs_sequential" in r else "-",
                       f"{r['mamba_speedup_vs_torch']:.1f}x" if "mamba_speedup_vs_torch" in r else "-",
                       f"{diff:.2e}" if diff != "" else "-"])
    m = payload["machine"]
    lines = [f"# SSD backends ({device.type})", "", f"{payload['date']}; {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
             f"device {m['device']}; batch {batch}, heads {shapes['nheads']} x headdim {shapes['headdim']}, "
             f"dstate {shapes['dstate']}, torch chunk {args.chunk}; best of {repeats} interleaved runs "
             "(the recurrence: 2).", ""]
    lines += markdown_table(header, rows)
    lines += ["", f"SSD share of the full `tf` model's forward (batch 1, {share_len} frames, two SSD scans): "
              f"{100 * share['ssd_share_of_forward']:.0f}% ({2 * one_ssd_ms:.1f} of {model_ms:.1f} ms)."]
    (args.out / f"ssd-{tag}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / f'ssd-{tag}.json'} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
