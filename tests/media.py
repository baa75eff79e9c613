"""Real audio files for tests, written with PyAV: AAC in an mp4 container (as a video site or MELD ships them),
or any other codec and container FFmpeg can write."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_mp4(path: Path, channels: np.ndarray, rate: int) -> Path:
    """AAC in an mp4 container; `channels` is (n_channels, n_samples) float32."""
    return write_audio(path, channels, rate, codec="aac", container_format="mp4")


def write_audio(path: Path, channels: np.ndarray, rate: int, codec: str, container_format: str) -> Path:
    """`channels` ((n_channels, n_samples) float32) encoded by `codec` into a `container_format` file; the
    encoder converts the float samples to its own format (u8, s64, ...)."""
    layout = "mono" if channels.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
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
