"""Feature cache benchmark: one epoch read from the cache vs re-running the encoder on the same clips.

The encoder is the WavLM-Large architecture (hidden 1024, 24 layers, 16 heads, ffn 4096, layer-norm
conv feature extractor, stable layer norm) with random weights, saved to a temp folder and loaded
by path exactly as `tfmamba features` would load a downloaded model; it runs on CPU. An epoch is
audio loading + extraction + padded batches (re-extraction) against opening the cache + a
DataLoader with FeatureDataset, LengthBucketSampler and pad_collate (cache). `--quick` uses a tiny
WavLM and a handful of clips as a smoke test. Results: benchmarks/results/feature_cache{,_quick}.{json,md}.

    python benchmarks/feature_cache.py [--quick] [--clips N] [--batch-size B]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_results  # noqa: E402

from tfmamba.audio import load_audio  # noqa: E402
from tfmamba.features.build import build_cache  # noqa: E402
from tfmamba.features.dataset import FeatureDataset, LengthBucketSampler, pad_collate  # noqa: E402
from tfmamba.features.factory import get_extractor  # noqa: E402
from tfmamba.features.store import FeatureStore  # noqa: E402

WAVLM_LARGE = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
               "feat_extract_norm": "layer", "do_stable_layer_norm": True, "conv_bias": True}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "conv_dim": (32,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
        "feat_extract_norm": "layer", "do_stable_layer_norm": True}


def make_clips(folder: Path, n: int, low: float, high: float, seed: int = 0) -> pd.DataFrame:
    """n clips of low..high seconds: a gliding tone with harmonics plus noise, at 16 kHz."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        seconds = float(rng.uniform(low, high))
        t = np.arange(int(seconds * 16000)) / 16000
        f0 = rng.uniform(100, 250) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        phase = 2 * np.pi * np.cumsum(f0) / 16000
        wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.1 + 0.01 * rng.standard_normal(t.size)
        path = folder / f"clip{i:03d}.wav"
        soundfile.write(path, wave.astype(np.float32), 16000)
        rows.append({"utt_id": f"clip{i:03d}", "path": str(path), "duration": seconds, "label": "neu"})
    return pd.DataFrame(rows)


def save_model(folder: Path, config: dict) -> float:
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    start = time.perf_counter()
    torch.manual_seed(0)
    WavLMModel(WavLMConfig(**config)).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(folder)
    return time.perf_counter() - start


def extraction_epoch(table: pd.DataFrame, extractor, batch_size: int) -> float:
    """One epoch without a cache: load, extract and pad every clip, in the same length-sorted batches."""
    start = time.perf_counter()
    order = table.sort_values("duration")
    for i in range(0, len(order), batch_size):
        rows = order.iloc[i: i + batch_size]
        outs = extractor([load_audio(p) for p in rows["path"]])
        batch = pad_collate([{"features": torch.from_numpy(o), "label": 0, "utt_id": u}
                             for o, u in zip(outs, rows["utt_id"])])
        float(batch["features"].sum())
    return time.perf_counter() - start


def cache_epoch(store: FeatureStore, batch_size: int, epoch: int) -> float:
    """One training epoch read from an open store: dataset, bucketed shuffled batches, padding."""
    start = time.perf_counter()
    data = FeatureDataset(store, store.utt_ids, [0] * len(store))
    sampler = LengthBucketSampler(data.lengths, batch_size, shuffle=True, seed=0)
    sampler.set_epoch(epoch)
    for batch in torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=pad_collate):
        float(batch["features"].sum())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny WavLM, 8 clips: a smoke test")
    parser.add_argument("--clips", type=int, default=None, help="number of clips (default 32, quick 8)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and markdown")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n = args.clips or (8 if args.quick else 32)
    config, arch = (TINY, "tiny WavLM (hidden 32, 2 layers)") if args.quick else (WAVLM_LARGE, "WavLM-Large architecture")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = make_clips(tmp, n, 1.0, 2.0) if args.quick else make_clips(tmp, n, 2.0, 4.0)
        build_s = save_model(tmp / "model", config)
        start = time.perf_counter()
        extractor = get_extractor(str(tmp / "model"), device="cpu")
        load_s = time.perf_counter() - start
        params = sum(p.numel() for p in extractor.model.parameters())
        report = build_cache(table, "benchmark", extractor, str(tmp / "cache"), batch_size=args.batch_size,
                             progress=False)
        extract_s = extraction_epoch(table, extractor, args.batch_size)
        start = time.perf_counter()
        store = FeatureStore.open(str(tmp / "cache"), expect_extractor=str(tmp / "model"))
        open_s = time.perf_counter() - start
        first_s = open_s + cache_epoch(store, args.batch_size, 0)
        later_s = min(cache_epoch(store, args.batch_size, e) for e in (1, 2, 3))
        (direct,) = extractor([load_audio(table["path"][0])])
        max_diff = float(np.abs(store.get(table["utt_id"][0]).astype(np.float32) - direct).max())
    audio_s = float(table["duration"].sum())
    results = {
        "encoder": arch, "parameters": params, "clips": n, "audio_seconds": round(audio_s, 1),
        "batch_size": args.batch_size, "model_build_and_save_s": round(build_s, 2), "model_load_s": round(load_s, 2),
        "cache_write_s": round(report.seconds, 2), "cache_bytes": report.cache_bytes,
        "write_utts_per_s": round(report.utts_per_s, 2), "write_mb_per_s": round(report.mb_per_s, 2),
        "extraction_epoch_s": round(extract_s, 3), "cache_open_s": round(open_s, 4),
        "cache_epoch_s_with_open": round(first_s, 4), "cache_epoch_s_open_store": round(later_s, 4),
        "ratio_with_open": round(extract_s / first_s, 1), "ratio_open_store": round(extract_s / later_s, 1),
        "max_abs_diff_cache_vs_fresh": max_diff, "goal_ratio": 50,
    }
    rows = [
        ("encoder", f"{arch}, {params:,} parameters, random weights, CPU"),
        ("clips", f"{n} clips, {audio_s:.1f} s of audio, batch size {args.batch_size}"),
        ("re-extraction epoch (load + encoder + pad)", f"{extract_s:.2f} s"),
        ("cache epoch incl. opening the cache", f"{first_s * 1e3:.1f} ms"),
        ("cache epoch, store already open", f"{later_s * 1e3:.1f} ms"),
        ("**speed-up (incl. open)**", f"**{extract_s / first_s:.0f}x** (goal >= 50x)"),
        ("speed-up (store open)", f"{extract_s / later_s:.0f}x"),
        ("cache on disk", f"{report.cache_bytes / 1e6:.2f} MB (float16)"),
        ("cache write", f"{report.seconds:.1f} s: {report.utts_per_s:.2f} utt/s, {report.mb_per_s:.2f} MB/s"),
        ("model build + save / load by path", f"{build_s:.1f} s / {load_s:.1f} s"),
        ("max abs difference cache vs fresh (float16 rounding)", f"{max_diff:.3g}"),
    ]
    name = "feature_cache_quick" if args.quick else "feature_cache"
    json_path, md_path = write_results(name, "Feature cache vs re-extraction", results, rows, out=args.out)
    print(md_path.read_text())
    print(f"results: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
