"""augment.py: enhancement and balancing."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import tone

from augment import (
    Enhancement, SpeakerPerturbation, add_noise, change_speed, class_weights, draw_enhancement, enhancement_for,
    oversampling_copies, pseudo_speaker, shift_time,
)


@pytest.mark.parametrize("snr_db", [10.0, 20.0, 30.0])
def test_noise_is_added_at_the_asked_snr(snr_db):
    y = tone(440, 5.0)
    noisy = add_noise(y, snr_db, np.random.default_rng(0))
    measured = 10 * np.log10(np.mean(y.astype(np.float64) ** 2) / np.mean((noisy - y).astype(np.float64) ** 2))
    assert measured == pytest.approx(snr_db, abs=0.2)
    assert noisy.dtype == np.float32


def test_silence_gets_no_noise():
    np.testing.assert_array_equal(add_noise(np.zeros(100, np.float32), 10.0, np.random.default_rng(0)), 0)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_change_scales_length_and_pitch(factor):
    y = tone(1000, 2.0)
    fast = change_speed(y, factor, 16000)
    assert len(fast) == pytest.approx(len(y) / factor, abs=2)
    spectrum = np.abs(np.fft.rfft(fast))
    peak_hz = np.argmax(spectrum) * 16000 / len(fast)
    assert peak_hz == pytest.approx(1000 * factor, abs=5)


def test_time_shift_prepends_silence_or_cuts_the_start():
    y = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(shift_time(y, 3), [0, 0, 0, *range(1, 11)])
    np.testing.assert_array_equal(shift_time(y, -3), range(4, 11))
    np.testing.assert_array_equal(shift_time(y, -50), [10])


def test_an_enhancement_is_reproducible_and_changes_the_audio():
    y = tone(440, 1.0)
    enhancement = Enhancement(speed=1.05, shift_seconds=-0.1, snr_db=15.0, noise_seed=7)
    first, second = enhancement.apply(y, 16000), enhancement.apply(y, 16000)
    np.testing.assert_array_equal(first, second)
    assert len(first) == pytest.approx((16000 / 1.05) - 1600, abs=3)


def test_drawn_enhancements_stay_in_their_ranges():
    rng = np.random.default_rng(0)
    drawn = [draw_enhancement(rng) for _ in range(300)]
    assert all(0.9 <= e.speed <= 1.1 and 10 <= e.snr_db <= 30 and abs(e.shift_seconds) <= 0.25 for e in drawn)
    assert min(e.speed for e in drawn) < 0.92 and max(e.speed for e in drawn) > 1.08


def test_enhancement_for_depends_on_seed_name_and_copy_only():
    base = enhancement_for("a/Actor_01/03-01-05-01-01-01-01.wav", copy=1, seed=0)
    assert enhancement_for("elsewhere/03-01-05-01-01-01-01.wav", copy=1, seed=0) == base
    assert enhancement_for("a/Actor_01/03-01-05-01-01-01-01.wav", copy=2, seed=0) != base
    assert enhancement_for("a/Actor_01/03-01-05-01-01-01-01.wav", copy=1, seed=1) != base


def test_oversampling_brings_every_class_to_the_majority_evenly():
    labels = ["neutral"] * 4 + ["angry"] * 10 + ["sad"] * 7
    copies = oversampling_copies(labels, seed=0)
    counts = Counter(labels) + Counter(labels[index] for index in copies)
    assert set(counts.values()) == {10}
    per_file = Counter(copies)
    neutral_copies = [per_file[index] for index in range(4)]
    assert max(neutral_copies) - min(neutral_copies) <= 1  # 6 copies over 4 files: 2, 2, 1, 1
    assert oversampling_copies(labels, seed=0) == copies
    assert oversampling_copies(["a", "a"], seed=0) == []


def test_oversampling_keeps_the_balance_when_every_file_has_enhanced_copies():
    labels = ["neutral"] * 4 + ["angry"] * 10
    copies = oversampling_copies(labels, seed=0, copies_per_file=3)
    totals = Counter({label: 3 * count for label, count in Counter(labels).items()})
    totals += Counter(labels[index] for index in copies)
    assert totals == {"neutral": 30, "angry": 30}
    assert sorted(Counter(copies).values()) == [4, 4, 5, 5]  # 18 copies over 4 files, evenly
    with pytest.raises(ValueError, match="copies_per_file"):
        oversampling_copies(labels, seed=0, copies_per_file=0)


def test_class_weights_give_every_class_the_same_total():
    labels = [0] * 10 + [1] * 30 + [2] * 20
    weights = class_weights(labels)
    totals = {label: weights[label] * count for label, count in Counter(labels).items()}
    assert max(totals.values()) == pytest.approx(min(totals.values()))


@pytest.mark.parametrize("semitones", [-3.0, 3.0])
def test_a_speaker_perturbation_moves_the_pitch_by_its_semitones_and_keeps_the_length(semitones):
    import prosody

    y = tone(200, 1.0)
    moved = SpeakerPerturbation(semitones).apply(y, 16000)
    assert moved.dtype == np.float32 and len(moved) == len(y)
    f0, aperiodicity = prosody.yin(moved.astype(np.float64))
    middle = slice(10, -10)  # away from the edges' partial frames
    assert np.median(f0[middle]) == pytest.approx(200 * 2 ** (semitones / 12), rel=0.01)
    assert np.median(aperiodicity[middle]) < 0.1
    assert pseudo_speaker(7, SpeakerPerturbation(semitones)) == f"7{semitones:+g}st"
