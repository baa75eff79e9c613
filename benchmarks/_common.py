"""Shared helpers for benchmark scripts: machine description and writing results as JSON + a markdown table."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FRAME_RATE = 50.0  # WavLM frames per second


def iemocap_seconds(rng, count: int):
    """Durations of `count` IEMOCAP-shaped clips (a numpy array, seconds): log-normal around 4.5 s, clipped to
    1-30 s; `rng` a numpy Generator."""
    import numpy as np

    return np.clip(rng.lognormal(np.log(4.5), 0.6, size=count), 1.0, 30.0)


def clip_frames(seconds):
    """Frame counts (int64, at least 1) of clips of these durations at FRAME_RATE."""
    import numpy as np

    return np.maximum(1, (seconds * FRAME_RATE).astype(np.int64))


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
