"""Built-in log-mel filterbank extractor (pure torch), for the demo corpus and quick runs.

80 mel bins, 25 ms Hamming window, 10 ms hop at 16 kHz: frame t covers samples
[160 t, 160 t + 400), so a wave of N >= 400 samples gives 1 + (N - 400) // 160 frames
(100 frames/s). No dither and no pre-emphasis, so the output is deterministic.
With `cmvn=True` (extractor name `fbank-cmvn`) each utterance is normalised to zero mean
and unit variance per bin; `fbank` leaves that to the model.
"""

from __future__ import annotations

import numpy as np
import torch

from tfmamba.features.extractor import SAMPLE_RATE, Extractor

N_MELS = 80
WIN = 400
HOP = 160
N_FFT = 512


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   f_min: float = 20.0, f_max: float | None = None) -> torch.Tensor:
    """Triangular HTK-mel filters as an (n_fft // 2 + 1, n_mels) matrix."""
    f_max = f_max or sample_rate / 2
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(f_min)), _hz_to_mel(np.array(f_max)), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None, :] - lower) / (centre - lower)
    down = (upper - bins[None, :]) / (upper - centre)
    weights = np.clip(np.minimum(up, down), 0.0, None)
    return torch.from_numpy(weights.T.astype(np.float32))


def frame_wave(wave: torch.Tensor) -> torch.Tensor:
    """Frames (n, WIN) of one 1-D wave; a wave shorter than one window is zero-padded to one frame."""
    if wave.numel() < WIN:
        wave = torch.nn.functional.pad(wave, (0, WIN - wave.numel()))
    return wave.unfold(0, WIN, HOP)


def log_fbank(frames: torch.Tensor, filters: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Log-mel energies (n, n_mels) of framed audio (n, WIN)."""
    power = torch.fft.rfft(frames * window, n=N_FFT).abs().pow(2)
    return torch.log(power @ filters + 1e-6)


class FbankExtractor(Extractor):
    """80-bin log-mel filterbank at 100 frames/s; see the module docstring for the exact framing."""

    dim = N_MELS
    frame_rate = SAMPLE_RATE / HOP
    revision_or_hash = "fbank-v1"
    min_samples = WIN

    def __init__(self, cmvn: bool = False, max_seconds: float | None = None) -> None:
        super().__init__()
        self.cmvn = cmvn
        self.name = "fbank-cmvn" if cmvn else "fbank"
        self.max_seconds = max_seconds
        self._filters = mel_filterbank()
        self._window = torch.hamming_window(WIN, periodic=False)

    def _extract(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """All frames of the batch go through one FFT and one matmul (far fewer small torch calls)."""
        with torch.inference_mode():
            framed = [frame_wave(torch.from_numpy(np.ascontiguousarray(w))) for w in waves]
            feats = log_fbank(torch.cat(framed), self._filters, self._window)
            outs = []
            for part in torch.split(feats, [len(f) for f in framed]):
                if self.cmvn:
                    part = (part - part.mean(0)) / (part.std(0, unbiased=False) + 1e-5)
                outs.append(part.numpy().astype(np.float32, copy=True))
        return outs
