"""The paper's Fig. 3 claim, measured: inference latency of TF-Mamba vs Transformer encoders.

Compares the full TF-Mamba (`tf`, 20.6 M parameters) with (a) a Transformer encoder stack of about
the same size, (b) one 1.81x its size (ShiftFormer-sized, the paper's comparison) and (c) the
`attention` variant. Each Transformer is called the fastest honest way PyTorch offers: at batch 1
nothing is padded, so no mask is passed and `nn.TransformerEncoder`'s fused fast path runs (the
masked call, which takes the slower masked-softmax path, is timed beside it); a padded batch
(lengths spread evenly over 30-100% of the frames) passes its key-padding mask, timed both on the
padded tensor and as a nested tensor (PyTorch skips the padding). Warm-up, then the best of repeats
in which the models take turns, so background load hits them alike. Writes
benchmarks/results/latency-<device>.{json,md,png} plus a profile of where TF-Mamba's time goes.

    python benchmarks/latency.py                 # CPU: batch 1 at 250-4000 frames, padded batch 32 at 1000
    python benchmarks/latency.py --device cuda
    python benchmarks/latency.py --quick         # tiny smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info  # noqa: E402
from _timing import interleaved_seconds, markdown_table  # noqa: E402

from tfmamba.model import EmotionClassifier, build_model, count_parameters, lengths_to_mask, masked_mean  # noqa: E402


class TransformerBaseline(nn.Module):
    """Post-norm Transformer encoder layers + the same pooling and classifier as TF-Mamba."""

    def __init__(self, d_model: int, num_layers: int, ffn_dim: int, num_heads: int = 8, num_classes: int = 4,
                 classifier_dims: tuple[int, ...] = (512, 256)) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, num_heads, ffn_dim, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=True)
        self.classifier = EmotionClassifier(d_model, num_classes, classifier_dims)

    def forward(self, features: Tensor, lengths: Tensor, call: str = "fast") -> Tensor:
        """call "fast": no mask when nothing is padded (else the mask, on the padded tensor); "masked": always
        the mask on the padded tensor; "nested": the mask, and PyTorch runs a nested tensor without the padding."""
        if call not in CALLS:
            raise ValueError(f"unknown Transformer call {call!r}; choose one of {CALLS}")
        mask = lengths_to_mask(lengths.to(features.device), features.shape[1])
        self.encoder.use_nested_tensor = call == "nested"
        if call == "fast" and bool((lengths >= features.shape[1]).all()):
            encoded = self.encoder(features)
        else:
            encoded = self.encoder(features, src_key_padding_mask=~mask)
        return self.classifier(masked_mean(encoded, mask))


CALLS = ("fast", "masked", "nested")


def transformer_of_size(target: int, d_model: int, num_layers: int, **kwargs) -> TransformerBaseline:
    """A TransformerBaseline whose feed-forward width makes it about `target` parameters."""
    fixed = count_parameters(TransformerBaseline(d_model, num_layers, ffn_dim=1, **kwargs))
    per_unit = count_parameters(TransformerBaseline(d_model, num_layers, ffn_dim=2, **kwargs)) - fixed
    return TransformerBaseline(d_model, num_layers, ffn_dim=max(1, 1 + round((target - fixed) / per_unit)), **kwargs)


def profile_tf_mamba(model: nn.Module, feats: Tensor, lengths: Tensor, runs: int = 3) -> dict[str, object]:
    """Where TF-Mamba's forward time goes (the least disturbed of `runs` profiles): shares of matmuls
    (projections and the SSD's batched products), the attention kernel, the SSD and frequency-filter
    ranges, and the top operators with their input shapes."""
    from torch.profiler import ProfilerActivity, profile

    best = None
    for _ in range(runs):
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(feats, lengths)
        events = prof.key_averages(group_by_input_shape=True)
        total = sum(e.self_cpu_time_total for e in events)
        if best is None or total < best[0]:
            best = (total, events)
    total, events = best
    by_name: dict[str, float] = {}
    for e in events:
        by_name[e.key] = by_name.get(e.key, 0.0) + e.self_cpu_time_total
    ranges = {name: sum(e.cpu_time_total for e in events if e.key == name) for name in ("ssd", "frequency_filter")}
    matmul = sum(v for k, v in by_name.items() if k in ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm"))
    attention = sum(v for k, v in by_name.items() if "attention" in k or "softmax" in k)
    shares: dict[str, object] = {f"{k}_share": v / total for k, v in ranges.items() if v}
    shares["matmul_incl_ssd_share"] = matmul / total
    shares["attention_kernel_share"] = attention / total
    shares["total_ms"] = total / 1e3
    shares["top_ops"] = [{"op": e.key, "shapes": str(e.input_shapes)[:120], "calls": e.count,
                          "ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total}
                         for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]]
    return shares


def spread_lengths(batch: int, frames: int) -> Tensor:
    """`batch` lengths spread evenly over 30-100% of `frames` (the longest is `frames`), in a fixed shuffled order."""
    lengths = torch.linspace(0.3 * frames, frames, batch).round().long().clamp(min=1)
    return lengths[torch.randperm(batch, generator=torch.Generator().manual_seed(0))]


def candidates(models: dict[str, nn.Module], feats: Tensor, lens: Tensor, padded: bool) -> dict[str, object]:
    """The timed calls of one row: TF-Mamba and the attention variant as they are; each Transformer by its
    default call (fast path unpadded, its mask when padded) and beside it the masked (unpadded) or nested
    (padded) call."""
    calls = {}
    for name, model in models.items():
        if isinstance(model, TransformerBaseline):
            calls[name] = lambda m=model: m(feats, lens, "fast")
            other = "nested" if padded else "masked"
            calls[f"{name}_{other}"] = lambda m=model, c=other: m(feats, lens, c)
        else:
            calls[name] = lambda m=model: m(feats, lens)
    return calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000],
                        help="frames of the batch-1 rows")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--batched-lengths", type=int, nargs="+", default=None,
                        help="frames of the longest utterance in batches > 1 (default 1000 on CPU, 1000 2000 on "
                             "CUDA: the Transformers' attention at 32 x 4000 frames needs more than an 80 GB GPU)")
    parser.add_argument("--batch-padding", choices=("spread", "none"), default="spread",
                        help="batches > 1: lengths spread over 30-100%% of the frames (default) or all full")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds at batch 1 (half, >= 2, above)")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="wall: wall time with torch's default threads (the deployment figure); thread: torch on "
                             "one thread, timed by that thread's CPU time, which other processes' load does not "
                             "stretch (writes latency-<device>-thread.*; CPU only)")
    parser.add_argument("--quick", action="store_true", help="tiny models and lengths (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.clock == "thread" and device.type != "cpu":
        parser.error("--clock thread measures CPU time: use it with --device cpu")
    clock = time.perf_counter
    if args.clock == "thread":
        torch.set_num_threads(1)
        clock = time.thread_time
    batched_lengths = args.batched_lengths or ([1000, 2000] if device.type == "cuda" else [1000])
    torch.manual_seed(0)
    d_model, sizes, lengths, batches, repeats = 1024, {}, args.lengths, args.batches, args.repeats
    if args.quick:
        d_model, lengths, batched_lengths, batches, repeats = 32, [64, 128], [64], [1, 4], 1
        sizes = dict(d_model=32, d_state=8, headdim=16, num_heads=4, ffn_dim=16, input_dim=32, classifier_dims=(32, 16))
    tf_mamba = build_model("tf", ssd_backend="auto", **sizes)
    n_tf = count_parameters(tf_mamba)
    models = {
        "tf_mamba": tf_mamba,
        "attention_variant": build_model("attention", **sizes),
        "transformer_same_params": transformer_of_size(n_tf, d_model, 2, num_heads=tf_mamba.config.num_heads,
                                                       classifier_dims=tf_mamba.config.classifier_dims),
        "transformer_1.81x": transformer_of_size(int(1.81 * n_tf), d_model, 3, num_heads=tf_mamba.config.num_heads,
                                                 classifier_dims=tf_mamba.config.classifier_dims),
    }
    params = {name: count_parameters(m) for name, m in models.items()}
    for m in models.values():
        m.to(device).eval()
    print(json.dumps({"params": params}), flush=True)

    records = []
    for batch in batches:
        padded = batch > 1 and args.batch_padding == "spread"
        for length in (lengths if batch == 1 else batched_lengths):
            feats = torch.randn(batch, length, d_model, device=device)
            # On the host, as a deployment has them: every model decides what is padded without a GPU sync.
            lens = spread_lengths(batch, length) if padded else torch.full((batch,), length)
            row = {"batch": batch, "frames": length, "padding": "30-100%" if padded else "none",
                   "mean_length": float(lens.float().mean()), "load_before": os.getloadavg()[0]}
            calls = candidates(models, feats, lens, padded)
            with torch.no_grad():
                best = interleaved_seconds(calls, device, warmup=1, repeats=repeats if batch == 1 else max(2, repeats // 2),
                                           clock=clock)
            row |= {f"{name}_ms": 1e3 * seconds for name, seconds in best.items()}
            row["load_after"] = os.getloadavg()[0]
            for ref in calls:
                if ref != "tf_mamba":
                    row[f"ratio_vs_{ref}"] = row["tf_mamba_ms"] / row[f"{ref}_ms"]
            records.append(row)
            print(json.dumps(row), flush=True)

    crossover = {}
    for batch in batches:
        rows = [r for r in records if r["batch"] == batch]
        faster = [r["frames"] for r in rows if r["ratio_vs_transformer_same_params"] < 1.0]
        crossover[str(batch)] = min(faster) if faster else None
    profile_len = 1000 if not args.quick else lengths[-1]
    profile = profile_tf_mamba(tf_mamba, torch.randn(1, profile_len, d_model, device=device),
                               torch.tensor([profile_len], device=device)) if device.type == "cpu" else {}

    tag = device.type + ("-thread" if args.clock == "thread" else "") + ("-quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "latency", "clock": args.clock, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "machine": machine_info(),
               "params": params, "records": records, "crossover_frames_vs_same_params": crossover,
               "profile_tf_mamba_batch1": {"frames": profile_len, **profile}}
    (args.out / f"latency-{tag}.json").write_text(json.dumps(payload, indent=2) + "\n")
    write_plot(args.out / f"latency-{tag}.png", records, params, device.type)
    (args.out / f"latency-{tag}.md").write_text("\n".join(markdown(payload, repeats, tag, device.type)) + "\n")
    print(f"wrote {args.out / f'latency-{tag}.json'}, .md and .png")
    return 0


def write_plot(path: Path, records: list[dict], params: dict[str, int], device: str) -> None:
    """Latency against frames, one panel per (batch, padding), one line per timed call."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["batch"], r["padding"]) for r in records})
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
    for ax, (batch, padding) in zip(axes[0], groups):
        rows = [r for r in records if (r["batch"], r["padding"]) == (batch, padding)]
        for key in [k for k in rows[0] if k.endswith("_ms")]:
            name = key[:-3]
            base = next((m for m in params if name.startswith(m)), name)
            ax.plot([r["frames"] for r in rows], [r[key] for r in rows], marker="o",
                    label=f"{name} ({params[base] / 1e6:.1f} M)")
        ax.set(xscale="log", yscale="log", xlabel="frames (longest)", ylabel="latency (ms)",
               title=f"batch {batch}, padding {padding}, {device}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markdown(payload: dict, repeats: int, tag: str, device: str) -> list[str]:
    """The results as markdown: one table per (batch, padding), the crossover and the profile."""
    m, params, records = payload["machine"], payload["params"], payload["records"]
    loads = [r[k] for r in records for k in ("load_before", "load_after")]
    lines = [f"# Inference latency ({device}), the paper's Fig. 3", "",
             f"{payload['date']}; {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
             f"device {m['device']}; best of {repeats} interleaved runs (batch 1), {max(2, repeats // 2)} (larger "
             f"batches); 1-minute load average {min(loads):.1f}-{max(loads):.1f} during the rows.", "",
             "Clock: " + ("wall time." if payload["clock"] == "wall" else
                          "CPU time of the one thread torch runs on (`--clock thread`): the work's own time, "
                          "not stretched by other processes' load."), "",
             "Parameters: " + ", ".join(f"{n} {params[n] / 1e6:.2f} M" for n in params) + ".", "",
             "Transformer calls: *fast* = no mask when nothing is padded (the fused fast path), *masked* = with a "
             "key-padding mask on the padded tensor, *nested* = with the mask, run as a nested tensor without the "
             "padding. Lengths are passed on the host; on a CPU, TF-Mamba runs each utterance over its own frames "
             "at inference.", ""]
    for batch, padding in sorted({(r["batch"], r["padding"]) for r in records}):
        rows = [r for r in records if (r["batch"], r["padding"]) == (batch, padding)]
        times = [k for k in rows[0] if k.endswith("_ms")]
        ratios = [k for k in rows[0] if k.startswith("ratio_vs_transformer")]
        lines += [f"Batch {batch}, padding {padding}" + (f" (mean length {rows[0]['mean_length']:.0f} of "
                                                        f"{rows[0]['frames']})" if padding != "none" else "") + ":", ""]
        header = ["frames"] + [k[:-3].replace("transformer_", "tr_") + " ms" for k in times]
        header += ["tf / " + k[len("ratio_vs_transformer_"):] for k in ratios]
        lines += markdown_table(header, [[r["frames"]] + [f"{r[k]:.1f}" for k in times] + [f"{r[k]:.2f}" for k in ratios]
                                         for r in rows])
        lines += [""]
    lines += ["Ratios without a suffix are against the Transformer's default call: fast when nothing is padded, "
              "masked when it is.", "",
              f"Crossover (first length where TF-Mamba beats the same-size Transformer), by batch: "
              f"{payload['crossover_frames_vs_same_params']}."]
    prof = payload["profile_tf_mamba_batch1"]
    if prof.get("top_ops"):
        shares = {k: v for k, v in prof.items() if k.endswith("_share")}
        lines += ["", f"Where TF-Mamba's CPU time goes (batch 1, {prof['frames']} frames, {prof['total_ms']:.0f} ms "
                  "profiled): " + ", ".join(f"{k.replace('_share', '')} {100 * v:.0f}%" for k, v in shares.items())
                  + ". Top operators:", ""]
        lines += markdown_table(["op", "input shapes", "calls", "ms", "share"],
                                [[o["op"], f"`{o['shapes']}`", o["calls"], f"{o['ms']:.1f}", f"{100 * o['share']:.1f}%"]
                                 for o in prof["top_ops"]])
    lines += ["", f"![latency](latency-{tag}.png)"]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
