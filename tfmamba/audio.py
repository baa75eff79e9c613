"""Reading audio files into float32 mono arrays at one sample rate.

soundfile reads wav/flac/ogg; PyAV reads everything else (mp4/m4a/mp3, and any file
soundfile rejects). Channels are averaged to mono and the rate is changed with soxr.
Every failure (missing, empty, corrupt, silent, too long) is a `DataError` that names
the file and the reason, so corpus builders can log it as a skip instead of crashing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfmamba.errors import DataError

logger = logging.getLogger(__name__)

SOUNDFILE_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif"})
NUMPY_SAMPLE_FORMATS = frozenset({"u8", "s16", "s32", "flt", "dbl"})  # PyAV's to_ndarray; planar names end in "p"


@dataclass(frozen=True)
class AudioInfo:
    """What a file's headers say: length in seconds, native rate and channel count."""

    duration_s: float
    sample_rate: int
    channels: int


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: missing file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")


def audio_info(path: str | Path) -> AudioInfo:
    """Duration, rate and channels from the headers, without decoding the samples."""
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        try:
            info = _soundfile_info(path)
        except DataError as err:
            logger.debug("soundfile could not read %s (%s); trying PyAV", path, err)
        else:
            return info
    return _av_info(path)


def _soundfile_info(path: Path) -> AudioInfo:
    import soundfile

    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise DataError(f"{path}: unreadable audio ({err})") from err
    if info.frames <= 0:
        raise DataError(f"{path}: no audio samples (zero-length)")
    return AudioInfo(info.frames / info.samplerate, int(info.samplerate), int(info.channels))


def _av_info(path: Path) -> AudioInfo:
    import av

    try:
        with av.open(str(path)) as container:
            stream = _decodable_audio_stream(container, path)
            rate = int(stream.codec_context.sample_rate or stream.rate or 0)
            channels = int(stream.codec_context.channels or 0)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            else:
                duration = _decoded_duration(container, stream)
    except av.FFmpegError as err:
        raise DataError(f"{path}: undecodable ({type(err).__name__}: {err.strerror or err})") from err
    if rate <= 0:
        raise DataError(f"{path}: audio stream has no sample rate")
    if duration <= 0:
        raise DataError(f"{path}: no audio samples (zero-length)")
    return AudioInfo(duration, rate, channels)


def _decodable_audio_stream(container, path: Path):
    """The container's first audio stream, or a `DataError` when it has none FFmpeg can decode."""
    if not container.streams.audio:
        raise DataError(f"{path}: no audio stream")
    stream = container.streams.audio[0]
    if stream.codec_context is None:  # e.g. 36-bit PCM: FFmpeg finds the stream but has no decoder for it
        raise DataError(f"{path}: undecodable (FFmpeg has no decoder for its audio codec)")
    return stream


def _decoded_duration(container, stream) -> float:
    """Fallback for containers without a duration field: count decoded samples."""
    samples = sum(frame.samples for frame in container.decode(stream))
    return samples / float(stream.codec_context.sample_rate)


def load_audio(
    path: str | Path, sample_rate: int = 16000, max_seconds: float | None = None
) -> np.ndarray:
    """Decode a file to float32 mono in [-1, 1] at `sample_rate`.

    `max_seconds` is a hard cap: decoding stops and a `DataError` is raised as soon as
    the clip is known to be longer, so a wrongly cut minutes-long file cannot fill memory.
    """
    path = Path(path)
    _check_file(path)
    wave = None
    native_rate = 0
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        try:
            wave, native_rate = _soundfile_read(path, max_seconds)
        except DataError as err:
            if "longer than" in str(err):
                raise
            logger.debug("soundfile could not read %s (%s); trying PyAV", path, err)
    if wave is None:
        wave, native_rate = _av_read(path, max_seconds)
    if wave.size == 0:
        raise DataError(f"{path}: no audio samples (zero-length)")
    if native_rate != sample_rate:
        import soxr

        wave = soxr.resample(wave, native_rate, sample_rate, quality="HQ").astype(np.float32)
    if not np.all(np.isfinite(wave)):
        raise DataError(f"{path}: decoded samples contain NaN or Inf")
    return np.clip(wave, -1.0, 1.0, out=wave)


def _too_long(path: Path, seconds: float, max_seconds: float) -> DataError:
    return DataError(f"{path}: longer than the cap ({seconds:.1f} s > {max_seconds:g} s)")


def _soundfile_read(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    import soundfile

    info = _soundfile_info(path)
    if max_seconds is not None and info.duration_s > max_seconds:
        raise _too_long(path, info.duration_s, max_seconds)
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise DataError(f"{path}: corrupt audio ({err})") from err
    return np.ascontiguousarray(data.mean(axis=1), dtype=np.float32), int(rate)


def _av_read(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    import av

    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(str(path)) as container:
            stream = _decodable_audio_stream(container, path)
            rate = int(stream.codec_context.sample_rate or 0)
            if rate <= 0:
                raise DataError(f"{path}: audio stream has no sample rate")
            limit = None if max_seconds is None else int(max_seconds * rate)
            to_float = None  # made on the first frame whose samples numpy cannot hold (s64)
            for frame in container.decode(stream):
                if frame.format.name.removesuffix("p") not in NUMPY_SAMPLE_FORMATS:
                    to_float = to_float or av.AudioResampler(format="flt", layout=frame.layout.name,
                                                             rate=frame.sample_rate)
                    frames = to_float.resample(frame)
                else:
                    frames = [frame]
                for mono in map(_frame_to_mono, frames):
                    chunks.append(mono)
                    total += mono.size
                if limit is not None and total > limit:
                    raise _too_long(path, total / rate, max_seconds)
            chunks += map(_frame_to_mono, to_float.resample(None) if to_float else [])
    except av.FFmpegError as err:
        raise DataError(f"{path}: undecodable ({type(err).__name__}: {err.strerror or err})") from err
    if not chunks:
        return np.zeros(0, dtype=np.float32), rate
    return np.concatenate(chunks), rate


def _frame_to_mono(frame) -> np.ndarray:
    """One decoded PyAV frame as float32 mono in [-1, 1] (planar or packed; float, signed or unsigned samples)."""
    raw = frame.to_ndarray()
    channels = len(frame.layout.channels)
    array = raw.astype(np.float32)
    if np.issubdtype(raw.dtype, np.unsignedinteger):  # u8: silence is 128
        half = (int(np.iinfo(raw.dtype).max) + 1) / 2
        array = (array - half) / half
    elif np.issubdtype(raw.dtype, np.integer):
        array /= float(-np.iinfo(raw.dtype).min)
    if frame.format.is_planar:
        return array.reshape(channels, -1).mean(axis=0)
    return array.reshape(-1, channels).mean(axis=1)
