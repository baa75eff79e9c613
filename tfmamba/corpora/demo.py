"""The built-in demo corpus: synthetic emotional "speech" made with numpy, no downloads.

5 sessions x 2 speakers (one F, one M; ids like Ses01F), about 800 clips of 1-3 s at
16 kHz, labels neu/hap/ang/sad, in the IEMOCAP manifest format so every later step runs
the same code. Each clip is a sequence of syllable-like voiced bursts: a harmonic source
(pitch contour with declination, accents and jitter; spectral tilt) shaped by vowel
formants, plus breath noise, consonant-like onsets and background noise.

Emotion lives in prosody, as in real speech: pitch level and range, speaking rate,
energy, attack sharpness and voice quality (tilt, breathiness, jitter). Speakers differ
in base pitch, formant scale, rate and loudness, and every clip has a random
expressiveness, so class distributions overlap (a female speaker's sad pitch is above a
male speaker's angry pitch; a weakly expressed clip sits near neutral): the task is
learnable, not trivial. Everything is derived from the seed, clip by clip.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tfmamba.corpora.prepare import BuildResult
from tfmamba.errors import StorageError, write_failure
from tfmamba.progress_bar import progress_bar

logger = logging.getLogger(__name__)

LABELS = ["neu", "hap", "ang", "sad"]
SAMPLE_RATE = 16000
SESSIONS = 5
GENDERS = ("F", "M")
LABEL_SHARES = {"neu": 0.3, "hap": 0.25, "ang": 0.225, "sad": 0.225}
HOP = 80  # envelope resolution: 5 ms
MAX_HARMONIC_HZ = 5000.0

VOWELS = np.array(  # F1, F2, F3 (Hz) of a, e, i, o, u for an adult male vocal tract
    [[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410], [300, 870, 2240]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class Prosody:
    """Per-emotion means: pitch shift and range (semitones), rate factor, energy (dB),
    spectral tilt (dB/octave), breathiness, jitter, attack exponent (< 1 = abrupt)."""

    pitch: float
    range: float
    rate: float
    energy: float
    tilt: float
    breath: float
    jitter: float
    attack: float


EMOTIONS = {
    "neu": Prosody(pitch=0.0, range=2.0, rate=1.0, energy=0.0, tilt=-9.0, breath=0.00, jitter=0.006, attack=1.0),
    "hap": Prosody(pitch=2.5, range=4.5, rate=1.1, energy=3.0, tilt=-7.5, breath=0.02, jitter=0.007, attack=0.8),
    "ang": Prosody(pitch=2.0, range=3.2, rate=1.15, energy=6.0, tilt=-5.0, breath=-0.03, jitter=0.014, attack=0.45),
    "sad": Prosody(pitch=-1.5, range=1.4, rate=0.8, energy=-4.0, tilt=-11.0, breath=0.10, jitter=0.016, attack=1.6),
}


@dataclass(frozen=True)
class Speaker:
    """Voice of one speaker: base pitch (Hz), formant scale, rate (syllables/s), loudness, tilt, breath."""

    speaker_id: str
    session: int
    gender: str
    f0: float
    formant_scale: float
    rate: float
    energy: float
    tilt: float
    breath: float


def make_speaker(seed: int, session: int, gender: str) -> Speaker:
    """Deterministic speaker traits from the seed, the session and the gender."""
    rng = np.random.default_rng([seed, 1, session, GENDERS.index(gender)])
    female = gender == "F"
    return Speaker(
        speaker_id=f"Ses{session:02d}{gender}",
        session=session,
        gender=gender,
        f0=float(rng.normal(200.0, 20.0) if female else rng.normal(115.0, 12.0)),
        formant_scale=float(rng.normal(1.15, 0.04) if female else rng.normal(1.0, 0.04)),
        rate=float(rng.normal(4.2, 0.45)),
        energy=float(rng.normal(0.0, 1.5)),
        tilt=float(rng.normal(0.0, 1.2)),
        breath=float(np.clip(rng.normal(0.08, 0.03), 0.01, None)),
    )


def synthesize(speaker: Speaker, emotion: str, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One clip (float32, 1-3 s) of `speaker` expressing `emotion`."""
    mean = EMOTIONS[emotion]
    strength = rng.uniform(0.3, 1.25)  # how strongly this clip expresses the emotion
    neutral = EMOTIONS["neu"]

    def toward(field: str, sd: float) -> float:
        base = getattr(neutral, field)
        return base + strength * (getattr(mean, field) - base) + rng.normal(0.0, sd)

    pitch = toward("pitch", 1.5)
    span = max(0.3, toward("range", 0.8))
    rate = speaker.rate * max(0.5, toward("rate", 0.12))
    energy_db = speaker.energy + toward("energy", 2.5)
    tilt = speaker.tilt + toward("tilt", 1.5)
    breath = float(np.clip(speaker.breath + toward("breath", 0.04), 0.0, 0.6))
    jitter = max(0.0, toward("jitter", 0.003))
    attack = max(0.3, toward("attack", 0.2))

    duration = rng.uniform(1.0, 3.0)
    n = int(duration * sample_rate)
    frames = n // HOP + 2
    t = np.arange(frames, dtype=np.float32) * (HOP / sample_rate)

    envelope = np.zeros(frames, np.float32)
    accents = np.zeros(frames, np.float32)
    vowel_of = np.zeros((frames, 3), np.float32)
    onsets = []
    start = rng.uniform(0.02, 0.15)
    while start < duration - 0.12:
        length = min(rng.gamma(4.0, 1.0 / (4.0 * rate)), duration - start)
        stress = rng.uniform(0.55, 1.0)
        inside = (t >= start) & (t < start + length)
        x = (t[inside] - start) / length
        envelope[inside] = stress * np.sin(np.pi * x) ** attack
        accents[inside] = stress * np.sin(np.pi * x) * rng.uniform(0.0, 1.0)
        vowel_of[inside] = VOWELS[rng.integers(len(VOWELS))] * speaker.formant_scale
        onsets.append(start)
        start += length + (rng.gamma(2.0, 0.08) if rng.random() < 0.15 else rng.uniform(0.0, 0.03))
    kernel = np.ones(7, np.float32) / 7
    formants = np.stack([np.convolve(vowel_of[:, j], kernel, mode="same") for j in range(3)], axis=1)
    formants = np.where(formants > 50, formants, VOWELS[0] * speaker.formant_scale)

    declination = np.linspace(span / 2, -span / 2, frames, dtype=np.float32) * rng.uniform(0.3, 1.0)
    wiggle = sum(
        rng.uniform(0.1, 0.3) * span * np.sin(2 * np.pi * rng.uniform(0.4, 2.0) * t + rng.uniform(0, 2 * np.pi))
        for _ in range(2)
    )
    semitones = pitch + declination + wiggle + span * accents
    semitones += np.convolve(rng.normal(0.0, jitter * 17.3, frames), np.ones(2) / 2, mode="same")
    f0 = (speaker.f0 * 2.0 ** (semitones / 12.0)).astype(np.float32)

    n_harm = int(min(48, MAX_HARMONIC_HZ / f0.min()))
    k = np.arange(1, n_harm + 1, dtype=np.float32)[:, None]
    freq = k * f0[None, :]
    gain = 10.0 ** (tilt * np.log2(k) / 20.0)
    bandwidth = np.array([90.0, 110.0, 160.0], np.float32)
    resonance = sum(
        1.0 / (1.0 + ((freq - formants[None, :, j]) / bandwidth[j]) ** 2) for j in range(3)
    )
    amps = gain * (resonance + 0.03) * (freq < MAX_HARMONIC_HZ) * envelope[None, :]

    position = np.arange(n, dtype=np.float32) / HOP
    left = position.astype(np.int64)
    frac = position - left
    f0_samples = f0[left] * (1 - frac) + f0[left + 1] * frac
    phase = (2 * np.pi / sample_rate) * np.cumsum(f0_samples, dtype=np.float64)
    sin1 = np.sin(phase).astype(np.float32)
    twice_cos = 2.0 * np.cos(phase).astype(np.float32)
    voiced = np.zeros(n, np.float32)
    previous, current = np.zeros(n, np.float32), sin1
    for h in range(n_harm):
        amp = amps[h, left] * (1 - frac) + amps[h, left + 1] * frac
        voiced += amp * current
        previous, current = current, twice_cos * current - previous

    env_samples = envelope[left] * (1 - frac) + envelope[left + 1] * frac
    voiced /= np.sqrt(np.mean(voiced**2)) + 1e-8
    breath_noise = np.diff(rng.normal(0.0, 1.0, n + 1)).astype(np.float32) * env_samples
    speech = voiced + breath * 3.0 * breath_noise
    for onset in onsets:
        if rng.random() < 0.5:
            a = int(onset * sample_rate)
            b = min(n, a + int(rng.uniform(0.015, 0.04) * sample_rate))
            speech[a:b] += rng.normal(0.0, 0.6, b - a).astype(np.float32) * np.hanning(b - a).astype(np.float32)

    level = 0.06 * 10.0 ** ((energy_db + rng.normal(0.0, 1.5)) / 20.0)
    speech *= level / (np.sqrt(np.mean(speech**2)) + 1e-8)
    white = rng.normal(0.0, 1.0, n).astype(np.float32)
    pink = np.cumsum(white) * 0.02
    pink -= np.convolve(pink, np.ones(401) / 401, mode="same")
    noise = white + pink.astype(np.float32)
    snr_db = rng.uniform(12.0, 30.0)
    noise *= 0.06 * 10.0 ** (-snr_db / 20.0) / (np.sqrt(np.mean(noise**2)) + 1e-8)
    return np.clip(speech + noise, -0.99, 0.99).astype(np.float32)


def clip_plan(clips_per_speaker: int, rng: np.random.Generator) -> list[str]:
    """The emotions of one speaker's clips, in LABEL_SHARES proportions, shuffled."""
    counts = {label: int(round(share * clips_per_speaker)) for label, share in LABEL_SHARES.items()}
    counts["neu"] += clips_per_speaker - sum(counts.values())
    plan = [label for label, count in counts.items() for _ in range(count)]
    return [plan[i] for i in rng.permutation(len(plan))]


def generate_demo(out_dir: str | Path, seed: int = 0, clips_per_speaker: int = 80, sample_rate: int = SAMPLE_RATE) -> BuildResult:
    """Write the wavs under `out_dir/audio/SesNN/` and return the manifest rows."""
    import soundfile

    audio_dir = Path(out_dir).resolve() / "audio"
    jobs = []
    for session in range(1, SESSIONS + 1):
        for gender in GENDERS:
            speaker = make_speaker(seed, session, gender)
            plan = clip_plan(clips_per_speaker, np.random.default_rng([seed, 2, session, GENDERS.index(gender)]))
            jobs.extend((speaker, index, emotion) for index, emotion in enumerate(plan))
    rows = []
    for speaker, index, emotion in progress_bar(jobs, desc="demo", unit="clip"):
        rng = np.random.default_rng([seed, 3, speaker.session, GENDERS.index(speaker.gender), index])
        wave = synthesize(speaker, emotion, rng, sample_rate)
        utt_id = f"Ses{speaker.session:02d}_demo_{speaker.gender}{index:03d}"
        path = audio_dir / f"Ses{speaker.session:02d}" / f"{utt_id}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        # encoded here and written by Python: a full disk is then an OSError with its errno, not libsndfile's
        # "System error."
        encoded = io.BytesIO()
        soundfile.write(encoded, wave, sample_rate, subtype="PCM_16", format="WAV")
        try:
            path.write_bytes(encoded.getvalue())
        except OSError as err:
            raise StorageError(f"{path}: cannot write the demo clip ({write_failure(err)})") from err
        rows.append(
            {
                "utt_id": utt_id,
                "path": str(path),
                "label": emotion,
                "speaker": speaker.speaker_id,
                "duration": len(wave) / sample_rate,
                "session": speaker.session,
            }
        )
    written = {row["path"] for row in rows}
    stale = [p for p in audio_dir.glob("Ses*/*.wav") if str(p) not in written]
    for path in stale:
        path.unlink()
    if stale:
        logger.info("removed %d wavs of a previous demo generation", len(stale))
    return BuildResult(pd.DataFrame(rows), LABELS, [], {})
