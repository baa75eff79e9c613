"""Real audio files for tests: AAC in an mp4 container, written with PyAV (as a video site or MELD ships them)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_mp4(path: Path, channels: np.ndarray, rate: int) -> Path:
    """AAC in an mp4 container; `channels` is (n_channels, n_samples) float32."""
    layout = "mono" if channels.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = layout
        for start in range(0, channels.shape[1], 1024):
            chunk = np.ascontiguousarray(channels[:, start : start + 1024], dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
