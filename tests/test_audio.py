"""tfmamba.audio on real files: wav/flac via soundfile, AAC mp4 via PyAV, and broken inputs."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile
from media import write_audio, write_mp4

from tfmamba.audio import audio_info, load_audio
from tfmamba.errors import DataError


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)



def test_wav_stereo_is_mixed_and_resampled(tmp_path):
    left, right = tone(1.0, 44100, amp=0.6), tone(1.0, 44100, amp=0.2)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    info = audio_info(path)
    assert (info.sample_rate, info.channels) == (44100, 2)
    assert info.duration_s == pytest.approx(1.0)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == pytest.approx(16000, abs=2)
    assert np.abs(wave[1000:-1000]).max() == pytest.approx(0.4, abs=0.01)


def test_flac_at_8k_is_upsampled(tmp_path):
    path = tmp_path / "a.flac"
    soundfile.write(path, tone(0.5, 8000), 8000)
    wave = load_audio(path, sample_rate=16000)
    assert len(wave) == pytest.approx(8000, abs=2)
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) * 16000 / len(wave) == pytest.approx(440, abs=3)


def test_mp4_aac_stereo(tmp_path):
    path = write_mp4(tmp_path / "clip.mp4", np.stack([tone(2.0, 44100, amp=0.6), tone(2.0, 44100, amp=0.2)]), 44100)
    info = audio_info(path)
    assert info.sample_rate == 44100 and info.channels == 2
    assert info.duration_s == pytest.approx(2.0, abs=0.1)
    wave = load_audio(path)
    assert len(wave) == pytest.approx(32000, abs=1000)
    assert np.abs(wave).max() <= 1.0
    steady = np.abs(wave[4000:-4000]).max()
    assert steady == pytest.approx(0.4, abs=0.05)


def test_mp4_over_cap_stops_decoding(tmp_path):
    path = write_mp4(tmp_path / "long.mp4", tone(12.0, 8000)[None, :], 8000)
    with pytest.raises(DataError, match=r"long\.mp4: longer than the cap"):
        load_audio(path, max_seconds=5)
    assert len(load_audio(path, max_seconds=20)) == pytest.approx(12 * 16000, abs=1000)


def test_wav_over_cap(tmp_path):
    path = tmp_path / "long.wav"
    soundfile.write(path, tone(3.0, 16000), 16000)
    with pytest.raises(DataError, match="longer than the cap"):
        load_audio(path, max_seconds=2)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.wav", b"", "empty file"),
        ("empty.mp4", b"", "empty file"),
        ("garbage.mp4", b"\x00junk" * 200, "undecodable"),
        ("garbage.wav", b"RIFF nothing like a wave" * 20, "undecodable"),
    ],
)
def test_broken_files_raise_data_error_naming_file(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    for read in (audio_info, load_audio):
        with pytest.raises(DataError, match=reason) as err:
            read(path)
        assert name in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.wav: missing file"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(DataError, match="missing file"):
        audio_info(tmp_path / "nope.mp4")


def test_zero_length_wav(tmp_path):
    path = tmp_path / "zero.wav"
    soundfile.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(DataError, match="zero-length"):
        audio_info(path)
    with pytest.raises(DataError, match="zero-length"):
        load_audio(path)



@pytest.mark.parametrize(("codec", "container_format", "name"),
                         [("pcm_u8", "matroska", "u8.mka"), ("pcm_s64le", "wav", "s64.wav")])
def test_unsigned_8_bit_and_64_bit_pcm_decode_through_pyav(tmp_path, codec, container_format, name):
    """Unsigned 8-bit samples (silence at 128) and 64-bit ones (which PyAV cannot hand to numpy) decode to the
    tone they hold: the first gave inf (then "NaN or Inf"), the second a ValueError that stopped a whole run."""
    wave = tone(1.0, 16000)
    path = write_audio(tmp_path / name, wave[None, :], 16000, codec, container_format)
    decoded = load_audio(path)
    assert decoded.shape == wave.shape
    assert np.abs(decoded - wave).max() < (1 / 64 if codec == "pcm_u8" else 1e-6)
    assert audio_info(path).duration_s == pytest.approx(1.0)


def test_a_codec_ffmpeg_has_no_decoder_for_is_a_data_error(tmp_path):
    """36-bit PCM in a WAV (as scipy's test files hold): soundfile refuses it and PyAV finds its stream with no
    decoder; both readers name the file instead of failing with an AttributeError."""
    channels, rate, bits, block = 3, 8000, 36, 15
    data = bytes(block * 5)
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
    path = tmp_path / "pcm36.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
                     + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)
    for read in (audio_info, load_audio):
        with pytest.raises(DataError, match=r"pcm36\.wav: undecodable \(FFmpeg has no decoder"):
            read(path)
