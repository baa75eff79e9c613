"""Shared helpers for benchmark scripts: machine description and writing results as JSON + a markdown table."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FRAME_RATE = 50.0  # WavLM frames per second
# The graphed GPU training step over IEMOCAP-shaped padded batches (H200, fifteenth round): the rate a fold's
# loader and checkpoints are set against.
STEP_RESULTS = RESULTS / "train_throughput-cuda-graphs-padded.json"


def iemocap_seconds(rng, count: int):
    """Durations of `count` IEMOCAP-shaped clips (a numpy array, seconds): log-normal around 4.5 s, clipped to
    1-30 s; `rng` a numpy Generator."""
    import numpy as np

    return np.clip(rng.lognormal(np.log(4.5), 0.6, size=count), 1.0, 30.0)


def clip_frames(seconds):
    """Frame counts (int64, at least 1) of clips of these durations at FRAME_RATE."""
    import numpy as np

    return np.maximum(1, (seconds * FRAME_RATE).astype(np.int64))


SYNTHETIC_LABELS = ["neu", "hap", "ang", "sad"]


def synthetic_corpus(clips: int, dim: int, seed: int = 0):
    """An IEMOCAP-shaped corpus of random float16 features in memory: (FeatureStore, Manifest, Fold), clip
    durations `iemocap_seconds`, 4 balanced classes, the fold split 70/15/15."""
    import numpy as np
    import pandas as pd

    from tfmamba.corpora.folds import Fold
    from tfmamba.corpora.manifest import Manifest
    from tfmamba.features.store import FeatureStore

    rng = np.random.default_rng(seed)
    seconds = iemocap_seconds(rng, clips)
    lengths = clip_frames(seconds)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    features = rng.standard_normal((int(offsets[-1]), dim), dtype=np.float32).astype(np.float16)
    ids = [f"u{i:05d}" for i in range(clips)]
    labels = SYNTHETIC_LABELS
    rows = [{"utt_id": u, "label": labels[i % len(labels)], "speaker": f"s{i % 10}", "session": 1 + i % 5,
             "path": f"/synthetic/{u}.wav", "duration": float(s)} for i, (u, s) in enumerate(zip(ids, seconds))]
    meta = {"extractor": "synthetic", "revision": "1", "layer": None, "dim": dim, "frame_rate": FRAME_RATE}
    store = FeatureStore(features, offsets, ids, meta, uri="memory://synthetic")
    manifest = Manifest(table=pd.DataFrame(rows), corpus="synthetic", labels=list(labels))
    cut1, cut2 = int(0.70 * clips), int(0.85 * clips)
    return store, manifest, Fold(index=1, name="synthetic", train=ids[:cut1], valid=ids[cut1:cut2], test=ids[cut2:])


def step_rate(path: Path) -> dict | None:
    """The graphed training step's rate over IEMOCAP-shaped padded batches from a train_throughput result."""
    if not path.exists():
        return None
    payload = json.loads(path.read_text())
    rows = [r for r in payload["records"] if r.get("lengths") == "iemocap"]
    if not rows:
        return None
    best = max(rows, key=lambda r: r["utt_per_s"])
    return {"file": path.name, "device": payload["machine"]["device"], "step": best["step"],
            "ssd_backend": best["ssd_backend"], "utt_per_s": best["utt_per_s"], "step_ms": best["step_ms"]}


def machine_info() -> dict:
    """CPU, core count, Python, torch version and threads, and the GPU if any."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def write_results(name: str, title: str, results: dict, rows: list[tuple[str, str]], notes: str = "",
                  out: Path = RESULTS) -> tuple[Path, Path]:
    """Write OUT/NAME.json (results + machine + date) and OUT/NAME.md (a two-column table)."""
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine, **results}
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# {title}", "", f"{payload['date']}; {machine['cpu']}, {machine['cores']} cores, "
             f"torch {machine['torch']} ({machine['torch_threads']} threads), device {machine['device']}.", ""]
    if notes:
        lines += [notes, ""]
    lines += ["| quantity | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    md_path = out / f"{name}.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
