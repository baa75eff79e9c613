"""The paper's Fig. 3 claim, measured: inference latency of TF-Mamba vs Transformer encoders.

Compares the full TF-Mamba (`tf`, 20.6 M parameters) with (a) a Transformer encoder stack of about
the same size, (b) one 1.81x its size (ShiftFormer-sized, the paper's comparison) and (c) the
`attention` variant, at batch 1 and 32 over 250-4000 frames (warm-up, then the best of repeats in
which the models take turns, so background load hits them alike). Writes
benchmarks/results/latency-<device>.{json,md,png} plus a profile of where TF-Mamba's time goes
(projections, SSD, frequency filter).

    python benchmarks/latency.py                 # CPU
    python benchmarks/latency.py --device cuda
    python benchmarks/latency.py --quick         # tiny smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
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
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.classifier = EmotionClassifier(d_model, num_classes, classifier_dims)

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        mask = lengths_to_mask(lengths, features.shape[1])
        return self.classifier(masked_mean(self.encoder(features, src_key_padding_mask=~mask), mask))


def transformer_of_size(target: int, d_model: int, num_layers: int, **kwargs) -> TransformerBaseline:
    """A TransformerBaseline whose feed-forward width makes it about `target` parameters."""
    fixed = count_parameters(TransformerBaseline(d_model, num_layers, ffn_dim=1, **kwargs))
    per_unit = count_parameters(TransformerBaseline(d_model, num_layers, ffn_dim=2, **kwargs)) - fixed
    return TransformerBaseline(d_model, num_layers, ffn_dim=max(1, 1 + round((target - fixed) / per_unit)), **kwargs)


def profile_tf_mamba(model: nn.Module, feats: Tensor, lengths: Tensor) -> dict[str, float]:
    """Share of TF-Mamba's forward time in projections (matmuls), SSD, frequency filter, attention."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(feats, lengths)
    events = {e.key: e for e in prof.key_averages()}
    total = sum(e.self_cpu_time_total for e in events.values())
    ranges = {name: events[name].cpu_time_total for name in ("ssd", "frequency_filter") if name in events}
    matmul = sum(events[k].self_cpu_time_total for k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear")
                 if k in events)
    attention = sum(e.self_cpu_time_total for k, e in events.items() if "attention" in k and k.startswith("aten::"))
    shares = {f"{k}_share": v / total for k, v in ranges.items()}
    shares["matmul_share_incl_ssd"] = matmul / total
    shares["attention_kernel_share"] = attention / total
    return shares


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--max-frames-batched", type=int, default=None,
                        help="batches > 1 stop at this length (default 1000 on CPU, 2000 on CUDA: the Transformers' "
                             "attention at 32 x 4000 frames needs more than an 80 GB GPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny models and lengths (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device(args.device)
    max_batched = args.max_frames_batched or (2000 if device.type == "cuda" else 1000)
    torch.manual_seed(0)
    d_model, sizes, lengths, batches, repeats = 1024, {}, args.lengths, args.batches, args.repeats
    if args.quick:
        d_model, lengths, batches, repeats = 32, [64, 128], [1], 1
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
        for length in lengths:
            if batch > 1 and length > max_batched:
                continue
            feats = torch.randn(batch, length, d_model, device=device)
            lens = torch.full((batch,), length, device=device)
            row = {"batch": batch, "frames": length}
            calls = {name: (lambda m=model: m(feats, lens)) for name, model in models.items()}
            with torch.no_grad():
                best = interleaved_seconds(calls, device, warmup=1, repeats=repeats if batch == 1 else max(1, repeats // 2))
            row |= {f"{name}_ms": 1e3 * seconds for name, seconds in best.items()}
            for ref in ("transformer_same_params", "transformer_1.81x", "attention_variant"):
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

    tag = device.type + ("-quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "latency", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(),
               "params": params, "records": records, "crossover_frames_vs_same_params": crossover,
               "profile_tf_mamba_batch1": {"frames": profile_len, **profile}}
    (args.out / f"latency-{tag}.json").write_text(json.dumps(payload, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rows = [r for r in records if r["batch"] == batch]
        for name in models:
            ax.plot([r["frames"] for r in rows], [r[f"{name}_ms"] for r in rows], marker="o",
                    label=f"{name} ({params[name] / 1e6:.1f} M)")
        ax.set(xscale="log", yscale="log", xlabel="frames", ylabel="latency (ms)", title=f"batch {batch}, {device.type}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / f"latency-{tag}.png", dpi=100)

    m = payload["machine"]
    names = list(models)
    lines = [f"# Inference latency ({device.type}), the paper's Fig. 3", "",
             f"{payload['date']}; {m['cpu']}, {m['cores']} cores, torch {m['torch']}, device {m['device']}; "
             f"best of {repeats} interleaved runs (batch 1), {max(1, repeats // 2)} (larger batches).", "",
             "Parameters: " + ", ".join(f"{n} {params[n] / 1e6:.2f} M" for n in names) + ".", ""]
    lines += markdown_table(["batch", "frames"] + [f"{n} ms" for n in names] + ["TF-Mamba / same-size", "TF-Mamba / 1.81x"],
                            [[r["batch"], r["frames"]] + [f"{r[f'{n}_ms']:.1f}" for n in names]
                             + [f"{r['ratio_vs_transformer_same_params']:.2f}", f"{r['ratio_vs_transformer_1.81x']:.2f}"]
                             for r in records])
    lines += ["", f"Crossover (first length where TF-Mamba beats the same-size Transformer), by batch: {crossover}."]
    if profile:
        lines += ["", f"Where TF-Mamba's CPU time goes (batch 1, {profile_len} frames): "
                  + ", ".join(f"{k.replace('_share', '')} {100 * v:.0f}%" for k, v in profile.items()) + "."]
    lines += ["", f"![latency](latency-{tag}.png)"]
    (args.out / f"latency-{tag}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / f'latency-{tag}.json'}, .md and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
