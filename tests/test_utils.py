"""utils.py: reading audio and turning it into 64x64x3 segments."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
from conftest import tone

import utils
from utils import (
    DEFAULT_FEATURES, AudioError, FeatureConfig, add_deltas, audio_info, get_framed_log_melspectrogram, load_wav,
    log_mel_spectrogram,
)


def test_one_khz_tone_peaks_in_the_mel_band_holding_one_khz():
    segments = get_framed_log_melspectrogram(tone(1000, 3.0))
    band_centres = librosa.mel_frequencies(DEFAULT_FEATURES.n_mels + 2, fmin=DEFAULT_FEATURES.fmin, fmax=DEFAULT_FEATURES.fmax)[1:-1]
    loudest_band = segments[..., 0].mean(axis=(0, 1)).argmax()
    assert loudest_band == np.abs(band_centres - 1000).argmin()
    assert band_centres[loudest_band] == pytest.approx(1000, rel=0.05)


def test_deltas_of_a_steady_tone_are_zero_away_from_the_edges():
    # 1 kHz is 10 whole periods per 10 ms hop, so every frame sees the same signal.
    segments = get_framed_log_melspectrogram(tone(1000, 3.0))
    middle = segments[2:-2]
    assert middle[..., 0].max() > 0  # the static channel carries the tone
    assert np.abs(middle[..., 1]).max() < 1e-3
    assert np.abs(middle[..., 2]).max() < 1e-3


def test_output_shape_dtype_and_channel_layout():
    y = tone(300, 2.0) + tone(2500, 2.0, amplitude=0.2)
    segments = get_framed_log_melspectrogram(y)
    assert segments.dtype == np.float32
    assert segments.shape[1:] == (64, 64, 3)
    log_mel = log_mel_spectrogram(y)
    assert log_mel.shape == (64, 1 + len(y) // DEFAULT_FEATURES.hop_length)
    # channel 0 of the first segment is the first 64 frames of the log-Mel, time on axis 1
    np.testing.assert_allclose(segments[0, :, :, 0], log_mel[:, :64].T)


@pytest.mark.parametrize(
    "seconds, expected_segments",
    [(0.1, 1), (0.63, 1), (0.64, 2), (1.27, 3), (1.28, 4), (3.0, 9)],
)
def test_segment_counts_cover_the_tail(seconds, expected_segments):
    y = np.random.default_rng(0).normal(0, 0.1, int(seconds * 16000)).astype(np.float32)
    segments = get_framed_log_melspectrogram(y)
    assert len(segments) == expected_segments
    features = add_deltas(log_mel_spectrogram(y))
    if len(features) >= 64:
        np.testing.assert_array_equal(segments[0], features[:64])
        np.testing.assert_array_equal(segments[-1], features[-64:])  # the tail ends at the last frame
        for index in range(len(features[::32])):
            if 32 * index + 64 <= len(features):
                np.testing.assert_array_equal(segments[index], features[32 * index : 32 * index + 64])


@pytest.mark.parametrize("samples", [1, 5000, 10240, 20479, 48000])
def test_segment_spans_say_where_each_segment_lies(samples):
    spans = utils.segment_spans(samples)
    assert len(spans) == len(get_framed_log_melspectrogram(np.full(samples, 0.1, np.float32)))
    assert spans[0, 0] == 0 and (np.diff(spans[:, 0]) > 0).all() and (spans[:, 1] > spans[:, 0]).all()
    last_frame = max(samples, utils.min_samples()) // 160  # frames are centred every 10 ms, short signals padded
    assert spans[-1, 1] == pytest.approx(min(samples / 16000, last_frame * 0.01))  # the tail segment ends at the last frame
    assert (spans[:, 1] - spans[:, 0] <= 0.63 + 1e-9).all()


def test_deltas_are_computed_over_the_whole_utterance_before_cutting():
    y = np.random.default_rng(1).normal(0, 0.1, 32000).astype(np.float32)
    segments = get_framed_log_melspectrogram(y)
    # Deltas of the second segment alone would differ at its edges; ours equal the utterance's.
    cut_alone = add_deltas(log_mel_spectrogram(y)[:, 32:96])
    assert not np.allclose(segments[1][..., 1], cut_alone[..., 1])
    full = add_deltas(log_mel_spectrogram(y))
    np.testing.assert_array_equal(segments[1], full[32:96])


@pytest.mark.parametrize("samples", [1, 100, 400, 5000])
def test_short_clips_give_one_finite_segment(samples):
    y = np.random.default_rng(2).normal(0, 0.1, samples).astype(np.float32)
    segments = get_framed_log_melspectrogram(y)
    assert segments.shape == (1, 64, 64, 3)
    assert np.isfinite(segments).all()
    # padding is silence: the static floor, no slope
    frames = 1 + max(samples, utils.min_samples()) // DEFAULT_FEATURES.hop_length
    np.testing.assert_array_equal(segments[0, frames:, :, 0], segments[0, :frames, :, 0].min())
    np.testing.assert_array_equal(segments[0, frames:, :, 1:], 0)


def test_silence_is_finite():
    segments = get_framed_log_melspectrogram(np.zeros(48000, dtype=np.float32))
    assert np.isfinite(segments).all()
    assert segments.shape == (9, 64, 64, 3)
    np.testing.assert_allclose(segments[..., 1:], 0, atol=1e-4)


def test_48khz_file_gives_the_features_of_the_same_tone_at_16khz(write_audio):
    high = get_framed_log_melspectrogram(write_audio("48k.wav", tone(1000, 3.0, sr=48000), 48000, "FLOAT"))
    low = get_framed_log_melspectrogram(write_audio("16k.wav", tone(1000, 3.0, sr=16000), 16000, "FLOAT"))
    assert high.shape == low.shape
    difference = np.abs(high[..., 0] - low[..., 0])
    assert difference.mean() < 0.05  # dB
    assert np.percentile(difference, 99) < 0.5


def test_load_wav_resamples_to_the_asked_rate(write_audio):
    path = write_audio("44k.wav", tone(440, 1.0, sr=44100), 44100)
    assert load_wav(path).shape == (16000,)
    assert load_wav(path, sr=8000).shape == (8000,)


def test_stereo_is_the_mean_of_its_channels(write_audio):
    left = tone(440, 1.0)
    right = np.random.default_rng(3).uniform(-0.5, 0.5, 16000).astype(np.float32)
    path = write_audio("stereo.wav", np.stack([left, right], axis=1), 16000, "FLOAT")
    y = load_wav(path)
    assert y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize(
    "name, subtype, tolerance",
    [
        ("u8.wav", "PCM_U8", 1e-2),
        ("16.wav", "PCM_16", 1e-4),
        ("24.wav", "PCM_24", 1e-6),
        ("32.wav", "PCM_32", 1e-6),
        ("float.wav", "FLOAT", 1e-7),
        ("double.wav", "DOUBLE", 1e-7),
        ("16.flac", "PCM_16", 1e-4),
        ("24.flac", "PCM_24", 1e-6),
    ],
)
def test_reads_integer_float_and_flac_files(write_audio, name, subtype, tolerance):
    y = tone(440, 0.5)
    np.testing.assert_allclose(load_wav(write_audio(name, y, 16000, subtype)), y, atol=tolerance)


def test_reads_ogg_vorbis(write_audio):
    y = tone(440, 1.0)
    decoded = load_wav(write_audio("tone.ogg", y, 16000, "VORBIS"))
    assert abs(len(decoded) - len(y)) < 100
    n = min(len(decoded), len(y))
    assert np.corrcoef(decoded[:n], y[:n])[0, 1] > 0.99  # lossy, but the same tone


def test_missing_file_raises_audio_error_naming_it(tmp_path):
    path = tmp_path / "nowhere.wav"
    with pytest.raises(AudioError, match=rf"{path}: file not found"):
        load_wav(path)


def test_empty_file_raises_audio_error_naming_it(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=rf"{path}: empty file"):
        load_wav(path)


def test_corrupt_bytes_raise_audio_error_naming_it(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(4).bytes(5000))
    with pytest.raises(AudioError, match=rf"{path}: not readable as audio"):
        load_wav(path)


def test_text_file_raises_audio_error(tmp_path):
    path = tmp_path / "notes.flac"
    path.write_text("this is not audio\n" * 50)
    with pytest.raises(AudioError, match=rf"{path}: not readable as audio"):
        get_framed_log_melspectrogram(path)


def test_truncated_header_raises_audio_error(write_audio):
    path = write_audio("cut.wav", tone(440, 1.0))
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(AudioError, match=rf"{path}"):
        load_wav(path)


def test_a_wav_cut_mid_data_is_an_error_naming_both_lengths(write_audio):
    path = write_audio("cut.wav", tone(440, 1.0), subtype="PCM_16")
    path.write_bytes(path.read_bytes()[: 44 + 2 * 8000])
    with pytest.raises(AudioError, match=rf"{path}: truncated: its header declares 16000 samples, the file holds 8000"):
        load_wav(path)
    with pytest.raises(AudioError, match="truncated"):
        audio_info(path)
    whole = write_audio("whole.wav", tone(440, 1.0), subtype="PCM_24")  # an intact file of another width reads
    assert len(load_wav(whole)) == 16000


def test_zero_length_audio_raises_audio_error(write_audio):
    path = write_audio("nothing.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match=rf"{path}: holds no audio samples"):
        load_wav(path)


def test_nan_samples_raise_audio_error(write_audio):
    y = tone(440, 0.5)
    y[100] = np.nan
    path = write_audio("nan.wav", y, subtype="FLOAT")
    with pytest.raises(AudioError, match=rf"{path}: holds NaN"):
        load_wav(path)


def test_folder_raises_audio_error(tmp_path):
    with pytest.raises(AudioError, match="is a folder"):
        load_wav(tmp_path)


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"win_length": 600}, "win_length"),
        ({"hop_length": 0}, "hop_length"),
        ({"fmax": 9000.0}, "fmax"),
        ({"delta_width": 4}, "delta_width"),
        ({"segment_hop": 0}, "segment_hop"),
    ],
)
def test_invalid_parameters_raise_value_error_echoing_the_value(parameters, message):
    with pytest.raises(ValueError, match=message):
        get_framed_log_melspectrogram(tone(440, 1.0), **parameters)


def test_a_feature_config_checks_its_values_when_made():
    with pytest.raises(ValueError, match="win_length must be in"):
        FeatureConfig(win_length=600)
    with pytest.raises(ValueError, match="top_db"):
        DEFAULT_FEATURES.replace(top_db=-3.0)
    with pytest.raises(TypeError, match="n_mel"):
        DEFAULT_FEATURES.replace(n_mel=40)


def test_a_feature_config_round_trips_through_json_and_older_files_take_defaults():
    import json

    config = DEFAULT_FEATURES.replace(n_mels=40, top_db=None)
    assert FeatureConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert FeatureConfig.from_dict({"n_mels": 40}) == DEFAULT_FEATURES.replace(n_mels=40)
    with pytest.raises(TypeError, match="unknown feature parameter"):
        FeatureConfig.from_dict({"sample_rate": 8000})
    assert config.segment_shape == (64, 40, 3)


def test_a_config_and_keyword_changes_give_the_same_segments():
    y = tone(440, 1.5)
    config = DEFAULT_FEATURES.replace(n_mels=40, preemphasis=0.0)
    np.testing.assert_array_equal(
        get_framed_log_melspectrogram(y, config), get_framed_log_melspectrogram(y, n_mels=40, preemphasis=0.0)
    )
    assert not np.array_equal(get_framed_log_melspectrogram(y, config), get_framed_log_melspectrogram(y, n_mels=40))


def test_other_parameters_change_the_output_shape():
    segments = get_framed_log_melspectrogram(tone(440, 2.0), n_mels=40, segment_frames=32, segment_hop=16)
    assert segments.shape[1:] == (32, 40, 3)


def test_load_wav_reads_a_span_the_same_as_the_whole_file(write_audio):
    y = np.random.default_rng(0).uniform(-0.5, 0.5, 10 * 16000).astype(np.float32)
    path = write_audio("long.wav", y, 16000, "FLOAT")
    np.testing.assert_array_equal(load_wav(path, offset=2.0, duration=3.0), y[32000:80000])
    np.testing.assert_array_equal(load_wav(path, offset=9.5), y[152000:])
    high = write_audio("long48k.wav", tone(440, 10.0, sr=48000), 48000, "FLOAT")
    whole, span = load_wav(high), load_wav(high, offset=2.0, duration=3.0)
    assert len(span) == 48000
    np.testing.assert_allclose(span[100:-100], whole[32100:79900], atol=1e-3)  # resampling edges aside


def test_a_span_past_the_end_holds_no_samples(write_audio):
    path = write_audio("short.wav", tone(440, 1.0))
    with pytest.raises(AudioError, match=rf"{path}: holds no audio samples"):
        load_wav(path, offset=5.0)


def test_audio_info_reads_the_header_and_refuses_bad_files(write_audio, tmp_path):
    info = audio_info(write_audio("a.flac", tone(440, 2.5, sr=48000), 48000))
    assert info.duration == pytest.approx(2.5) and info.sample_rate == 48000 and info.subtype == "PCM_16"
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match=rf"{bad}: not readable as audio"):
        audio_info(bad)
    with pytest.raises(AudioError, match="file not found"):
        audio_info(tmp_path / "missing.wav")


def test_resample_keeps_equal_rates_and_changes_others():
    y = tone(440, 1.0, sr=48000)
    np.testing.assert_array_equal(utils.resample(y, 48000, 48000), y)
    assert len(utils.resample(y, 48000, 16000)) == 16000
