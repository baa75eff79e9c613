"""Extractors: the built-in fbank and tiny random transformers encoders saved to and loaded from a folder."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from tfmamba.errors import ConfigError
from tfmamba.features.factory import get_extractor
from tfmamba.features.fbank import FbankExtractor

CONV = {"conv_dim": (32,) * 7, "conv_stride": (5, 2, 2, 2, 2, 2, 2), "conv_kernel": (10, 3, 3, 3, 3, 2, 2)}
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, **CONV}


def save_tiny(folder, model_cls, config_cls, return_attention_mask: bool, **overrides) -> str:
    from transformers import Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    model = model_cls(config_cls(**{**SMALL, **overrides})).eval()
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=return_attention_mask).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_wavlm(tmp_path_factory) -> str:
    from transformers import WavLMConfig, WavLMModel

    return save_tiny(tmp_path_factory.mktemp("wavlm"), WavLMModel, WavLMConfig, True,
                     feat_extract_norm="layer", do_stable_layer_norm=True)


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory) -> str:
    """HuBERT with a group-norm conv stack and no attention mask (like hubert-base): waves must run unpadded."""
    from transformers import HubertConfig, HubertModel

    return save_tiny(tmp_path_factory.mktemp("hubert"), HubertModel, HubertConfig, False, feat_extract_norm="group")


def waves(seconds=(1.0, 0.37, 2.2), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in seconds]


def test_fbank_shape_rate_and_determinism():
    ext = get_extractor("fbank")
    assert (ext.dim, ext.frame_rate, ext.name) == (80, 100.0, "fbank")
    outs = ext(waves((1.0, 0.5, 0.01)))
    assert [o.shape for o in outs] == [(98, 80), (48, 80), (1, 80)]
    assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in outs)
    again = FbankExtractor()(waves((1.0, 0.5, 0.01)))
    assert all(np.array_equal(a, b) for a, b in zip(outs, again))


def test_fbank_reflects_the_spectrum():
    t = np.arange(16000) / 16000
    low, high = (np.sin(2 * np.pi * f * t).astype(np.float32) for f in (200.0, 4000.0))
    f_low, f_high = get_extractor("fbank")([low, high])
    assert f_low.mean(0).argmax() < 20 < f_high.mean(0).argmax()


def test_fbank_cmvn_normalises_each_utterance():
    (out,) = get_extractor("fbank-cmvn")(waves((2.0,)))
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(0), 1.0, atol=1e-2)


def test_long_waves_are_windowed_and_concatenated():
    ext = FbankExtractor(max_seconds=1.0)
    (out,) = ext(waves((3.2,)))
    assert ext.windowed == 1
    assert abs(out.shape[0] - 320) <= 8


def test_windows_cover_the_wave_and_fold_a_short_tail_into_the_last_one():
    ext = FbankExtractor(max_seconds=1.0)
    wave = np.arange(int(3.2 * 16000), dtype=np.float32)
    windows = ext.windows(wave)
    assert [len(w) for w in windows] == [16000, 16000, 16000 + 3200]  # the 0.2 s tail joins the third window
    assert np.array_equal(np.concatenate(windows), wave)
    assert [len(w) for w in ext.windows(wave[:int(2.6 * 16000)])] == [16000, 16000, 9600]  # 0.6 s stands alone
    assert [len(w) for w in ext.windows(wave, seconds=2.0)] == [32000, 19200]
    assert len(FbankExtractor(max_seconds=None).windows(wave)) == 1 and len(ext.windows(wave[:0])) == 1


def test_fbank_rejects_a_layer():
    with pytest.raises(ConfigError, match="no layers"):
        get_extractor("fbank", layer=3)


@pytest.mark.parametrize("fixture", ["tiny_wavlm", "tiny_hubert"])
def test_padded_batch_equals_single_utterances(fixture, request):
    path = request.getfixturevalue(fixture)
    ext = get_extractor(path, device="cpu")
    assert ext.dim == 32 and ext.frame_rate == 50.0 and ext.revision_or_hash.startswith("sha256:")
    batch = ext(waves())
    for wave, out in zip(waves(), batch):
        (single,) = ext([wave])
        assert out.shape == single.shape == ((len(wave) - 400) // 320 + 1, 32)
        np.testing.assert_allclose(out, single, atol=1e-4, rtol=1e-4)


def test_the_attention_mask_matters_for_padded_batches(tiny_wavlm):
    """Without the mask a padded batch gives other outputs: the equality above is not luck."""
    ext = get_extractor(tiny_wavlm, device="cpu")
    ext.use_mask = False
    short = ext._run(waves())[1]
    (single,) = ext._run([waves()[1]])
    assert not np.allclose(short, single, atol=1e-4)


def test_layer_selection(tiny_wavlm):
    first = get_extractor(tiny_wavlm, layer=1, device="cpu")
    last = get_extractor(tiny_wavlm, device="cpu")
    assert first.layer == 1 and last.layer is None and get_extractor(tiny_wavlm, layer=2).layer is None
    a, b = first(waves((1.0,)))[0], last(waves((1.0,)))[0]
    assert a.shape == b.shape and not np.allclose(a, b)
    with pytest.raises(ConfigError, match="out of range"):
        get_extractor(tiny_wavlm, layer=3)


def test_whisper_encoder_is_cropped_to_real_audio(tmp_path):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    config = WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                           vocab_size=100, max_target_positions=32, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    WhisperModel(config).save_pretrained(tmp_path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(tmp_path)
    ext = get_extractor(str(tmp_path), device="cpu")
    assert ext.frame_rate == 50.0 and ext.dim == 32
    outs = ext(waves((1.0, 0.37)))
    assert [o.shape for o in outs] == [(50, 32), (19, 32)]


def test_unknown_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"nowhere: no such model folder \(give a saved model's folder, or a hub"):
        get_extractor(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="no config.json in this model folder"):
        get_extractor(str(tmp_path))  # a folder, but no model in it


def test_broken_or_wrong_model_folders_are_config_errors(tiny_wavlm, tmp_path):
    """A weights file cut short (an interrupted copy) or a text model: one error naming it, not a traceback."""
    from transformers import BertConfig, BertModel

    cut = shutil.copytree(tiny_wavlm, tmp_path / "cut")
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConfigError, match=r"cannot load speech encoder .*cut short"):
        get_extractor(str(cut))
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="a 'bert' model is not a speech encoder"):
        get_extractor(str(tmp_path / "bert"))


def test_loading_and_extracting_keep_the_console_quiet(tiny_wavlm, capfd):
    """No "Loading weights" bar and no torch warning per batch (WavLM's mixed mask types) in a user's console."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ext = get_extractor(tiny_wavlm, device="cpu")
        ext(waves())
    assert capfd.readouterr().err == ""


@pytest.mark.gpu
def test_cuda_matches_cpu(tiny_wavlm):
    cpu = get_extractor(tiny_wavlm, device="cpu")(waves())
    gpu_ext = get_extractor(tiny_wavlm)
    assert gpu_ext.device.type == "cuda"
    for a, b in zip(cpu, gpu_ext(waves())):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)
