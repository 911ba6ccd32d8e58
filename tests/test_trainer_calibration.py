"""Calibration figures on hand-built predictions, and temperature scaling recovering a known temperature."""

import io

import numpy as np
import pytest
import sklearn.calibration
import sklearn.metrics
from PIL import Image

from cxr_core import contract
from trainer.evaluation import calibration, calibration_plot, intervals

# Top class confidences 0.85 (two images, one right) and 0.65 (three images, two right):
# ECE = 2/5 · |0.5 − 0.85| + 3/5 · |2/3 − 0.65| = 0.14 + 0.01 = 0.15.
HAND_PROBABILITIES = np.array([
    [0.85, 0.10, 0.05],
    [0.85, 0.05, 0.10],
    [0.20, 0.65, 0.15],
    [0.20, 0.65, 0.15],
    [0.15, 0.20, 0.65],
])
HAND_LABELS = np.array([0, 1, 1, 1, 0])


def sampled_labels(logits: np.ndarray, seed: int) -> np.ndarray:
    """Labels drawn from softmax(logits): predictions at temperature 1 are calibrated by construction."""
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    draws = np.random.default_rng(seed).random(len(logits))[:, None]
    return (draws > np.cumsum(probabilities, axis=1)).sum(axis=1)


def softmax(logits: np.ndarray) -> np.ndarray:
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def test_ece_of_hand_built_predictions():
    ece = calibration.expected_calibration_error(np.ones((1, 5)), HAND_LABELS, HAND_PROBABILITIES)
    assert ece == pytest.approx([0.15])
    assert calibration.calibration(HAND_LABELS, HAND_PROBABILITIES, resamples=0).ece.value == pytest.approx(0.15)


def test_perfect_predictions_have_no_calibration_error_and_no_brier_score():
    labels = np.array([0, 1, 2, 2])
    figures = calibration.calibration(labels, np.eye(3)[labels], resamples=0)
    assert figures.ece.value == 0.0
    assert figures.brier.value == 0.0
    assert figures.negative_log_likelihood == pytest.approx(0.0)


def test_brier_score_of_hand_built_predictions():
    # Σ_c (p_c − y_c)²: 0 for a sure hit, 2 for a sure miss, 0.5 for a half-hearted hit; mean 2.5 / 3.
    labels = np.array([0, 0, 1])
    probabilities = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    assert calibration.calibration(labels, probabilities, resamples=0).brier.value == pytest.approx(2.5 / 3)


def test_the_bootstrap_statistics_equal_scikit_learn_with_the_same_sample_weights():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 2.0, (300, 3))
    labels, probabilities = sampled_labels(logits, 1), softmax(2.0 * logits)
    weights = next(intervals.patient_resample_weights(np.arange(300) // 2, resamples=5, seed=3))
    for row in weights:
        assert calibration.brier_scores(row, labels, probabilities)[0] == pytest.approx(
            sklearn.metrics.brier_score_loss(labels, probabilities, labels=[0, 1, 2], sample_weight=row))
        repeated = np.repeat(np.arange(300), row.astype(int))
        assert calibration.expected_calibration_error(row, labels, probabilities)[0] == pytest.approx(
            calibration.expected_calibration_error(np.ones(len(repeated)), labels[repeated],
                                                   probabilities[repeated])[0])


def test_intervals_are_patient_bootstraps_around_the_point_figures():
    rng = np.random.default_rng(2)
    logits = rng.normal(0.0, 2.0, (400, 3))
    labels, probabilities = sampled_labels(logits, 3), softmax(3.0 * logits)
    figures = calibration.calibration(labels, probabilities, np.arange(400) // 4)
    for estimate in (figures.ece, figures.brier):
        low, high = estimate.interval
        assert low < estimate.value < high
    # Four images per patient make the interval wider than resampling images would.
    by_image = calibration.calibration(labels, probabilities)
    assert np.diff(figures.ece.interval)[0] > np.diff(by_image.ece.interval)[0]


def test_reliability_curves_are_scikit_learns_with_their_counts_and_error():
    figures = calibration.calibration(HAND_LABELS, HAND_PROBABILITIES, resamples=0)
    normal = figures.reliability["normal"]
    # p(normal) in (0.1, 0.2]: 0.15 (normal), 0.20 and 0.20 (pneumonia); in (0.8, 0.9]: 0.85 twice, one normal.
    assert normal.counts == (3, 2)
    assert normal.mean_predicted == pytest.approx((0.55 / 3, 0.85))
    assert normal.observed_rate == pytest.approx((1 / 3, 0.5))
    assert normal.calibration_error == pytest.approx(3 / 5 * (1 / 3 - 0.55 / 3) + 2 / 5 * 0.35)
    for index, name in enumerate(contract.CLASS_NAMES):
        observed, predicted = sklearn.calibration.calibration_curve(
            HAND_LABELS == index, HAND_PROBABILITIES[:, index], n_bins=calibration.ECE_BINS)
        np.testing.assert_allclose(figures.reliability[name].observed_rate, observed)
        np.testing.assert_allclose(figures.reliability[name].mean_predicted, predicted)


@pytest.mark.parametrize("factor", [3.0, 0.5, 1.0])
def test_temperature_scaling_recovers_the_factor_the_logits_were_scaled_by(factor):
    rng = np.random.default_rng(4)
    logits = rng.normal(0.0, 1.5, (20000, 3))
    labels = sampled_labels(logits, 5)
    probabilities = softmax(factor * logits)  # Over- (3) or underconfident (0.5) by a known factor.
    temperature = calibration.fit_temperature(labels, probabilities)
    assert temperature == pytest.approx(factor, rel=0.05)
    scaled = calibration.apply_temperature(probabilities, temperature)
    np.testing.assert_allclose(scaled, softmax(logits), atol=0.03)
    np.testing.assert_array_equal(np.argmax(scaled, axis=1), np.argmax(probabilities, axis=1))
    if factor != 1.0:
        before = calibration.calibration(labels, probabilities, resamples=0)
        after = calibration.calibration(labels, scaled, resamples=0)
        assert after.negative_log_likelihood < before.negative_log_likelihood
        assert after.ece.value < before.ece.value / 2


def test_temperature_of_probabilities_that_underflowed_to_zero_is_finite():
    probabilities = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    temperature = calibration.fit_temperature(np.array([0, 1, 1]), probabilities)
    assert calibration.MIN_TEMPERATURE <= temperature <= calibration.MAX_TEMPERATURE
    assert np.all(np.isfinite(calibration.apply_temperature(probabilities, temperature)))


def test_reliability_diagrams_are_one_panel_per_set():
    figures = calibration.calibration(HAND_LABELS, HAND_PROBABILITIES, resamples=0)
    png = calibration_plot.reliability_diagrams({"val": (figures.reliability, "ECE 0.15"),
                                                 "test": (figures.reliability, "ECE 0.15")})
    image = Image.open(io.BytesIO(png))
    assert image.size == (2 * 460, 460)
    assert len(set(image.getdata())) > 3
