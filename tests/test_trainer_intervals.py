"""The 95% intervals: Wilson against published values, the vectorised bootstrap against scikit-learn."""

import numpy as np
import pytest
import sklearn.metrics

from trainer.evaluation import intervals


# Wilson intervals: 13/15 from the issue, and Newcombe (Statistics in Medicine, 1998), Table I,
# whose score-interval column gives these to four decimals (statsmodels' proportion_confint with
# method="wilson" gives the same). 13/15 by hand: z = 1.96, centre (13/15 + z²/30) / (1 + z²/15)
# = 0.7919, half width z·sqrt(13/15 · 2/15 / 15 + z²/900) / (1 + z²/15) = 0.1707.
@pytest.mark.parametrize("successes, total, low, high", [
    (13, 15, 0.6212, 0.9626),
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0),
])
def test_wilson_interval_matches_published_values(successes, total, low, high):
    assert intervals.wilson_interval(successes, total) == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_of_nothing_is_undefined():
    assert intervals.wilson_interval(0, 0) is None


@pytest.mark.parametrize("rate, cases", [(0.5, 4), (0.8, 16), (0.9, 35), (0.95, 73)])
def test_cases_to_show_a_rate_is_the_fewest_whose_interval_clears_it(rate, cases):
    assert intervals.cases_to_show(rate) == cases
    assert intervals.wilson_interval(cases, cases)[0] >= rate > intervals.wilson_interval(cases - 1, cases - 1)[0]


def test_no_number_of_cases_shows_a_rate_of_one():
    assert intervals.cases_to_show(1.0) is None


def test_resampling_draws_patients_not_images():
    patients = np.array(["a", "a", "a", "b", "c", "c"])
    weights = np.concatenate(list(intervals.patient_resample_weights(patients, resamples=300, seed=1)))
    assert weights.shape == (300, 6)
    np.testing.assert_array_equal(weights[:, 0], weights[:, 1])  # A patient's images move together.
    np.testing.assert_array_equal(weights[:, 4], weights[:, 5])
    np.testing.assert_array_equal(weights[:, [0, 3, 4]].sum(axis=1), 3)  # Three patient draws per resample.
    assert (weights[:, 0] == 0).any() and (weights[:, 0] >= 2).any()


@pytest.mark.parametrize("ties", [False, True])
def test_weighted_statistics_match_scikit_learn_with_sample_weights(ties):
    rng = np.random.default_rng(3)
    size = 300
    labels = rng.integers(0, 3, size)
    predicted = np.where(rng.random(size) < 0.6, labels, rng.integers(0, 3, size))
    scores = rng.random(size) + 0.3 * (labels == 2)
    if ties:
        scores = np.round(scores, 1)
    patients = rng.integers(0, 120, size)
    weights = np.concatenate(list(intervals.patient_resample_weights(patients, resamples=8, seed=2)))

    areas = intervals.weighted_roc_auc(weights, labels == 2, scores)
    matrices = intervals.weighted_confusion(weights, labels, predicted, 3)

    for resample, sample_weight in enumerate(weights):
        assert areas[resample] == pytest.approx(
            sklearn.metrics.roc_auc_score(labels == 2, scores, sample_weight=sample_weight), abs=1e-12)
        np.testing.assert_allclose(matrices[resample], sklearn.metrics.confusion_matrix(
            labels, predicted, labels=[0, 1, 2], sample_weight=sample_weight))


def test_weighted_roc_auc_is_undefined_without_both_classes():
    assert np.isnan(intervals.weighted_roc_auc(np.ones((1, 3)), np.ones(3, bool), np.array([0.1, 0.5, 0.9]))[0])


def test_percentile_interval_ignores_undefined_samples():
    assert intervals.percentile_interval(np.full(5, np.nan)) is None
    assert intervals.percentile_interval(np.r_[np.arange(101.0), np.nan]) == pytest.approx((2.5, 97.5))
