"""95% intervals: Wilson score for proportions, a patient-level bootstrap for the rest.

Proportions (sensitivity, PPV, specificity, accuracy) get the Wilson score interval,
which keeps close to its nominal coverage at small counts and near 0 or 1, where the
normal approximation fails (Brown, Cai and DasGupta, Statistical Science, 2001): 13
of 15 is 0.87 with an interval of 0.62–0.96. It counts images as independent, so
with several images per patient it is somewhat too narrow.

ROC-AUC, F1 and macro averages are not proportions; they get percentile bootstrap
intervals. The resampling unit is the patient, not the image: images of one patient
are correlated (in covid-chestxray-dataset one patient has up to several images), and
resampling images would treat them as independent evidence and narrow the interval.
Each resample draws as many patients as the split has, with replacement, and keeps
all images of each draw. The draws are vectorised: a resample is a vector of
per-image weights (how often the image's patient was drawn), and every statistic is
computed from weights, so 1,000 resamples cost a few matrix products. A fixed seed
gives the same intervals on every run.
"""

import math
import statistics
from collections.abc import Iterator

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
RESAMPLES_PER_CHUNK = 250  # Bounds memory: a chunk is [chunk, images] weights.

Interval = tuple[float, float]


def wilson_interval(successes: int, total: int, confidence: float = CONFIDENCE) -> Interval | None:
    """Wilson score interval of `successes` / `total`; None when `total` is 0."""
    if total <= 0:
        return None
    z = _z_score(confidence)
    proportion = successes / total
    denominator = 1 + z * z / total
    centre = (proportion + z * z / (2 * total)) / denominator
    half_width = z * np.sqrt(proportion * (1 - proportion) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, float(centre - half_width)), min(1.0, float(centre + half_width))


def cases_to_show(rate: float, confidence: float = CONFIDENCE) -> int | None:
    """The fewest cases, all of them successes, whose Wilson interval lies at or above `rate`; None for a rate of 1.

    With every case a success the lower bound is n / (n + z²), so n ≥ rate·z² / (1 − rate).
    """
    if rate >= 1.0:
        return None
    z = _z_score(confidence)
    cases = max(1, math.ceil(rate * z * z / (1.0 - rate)))
    while wilson_interval(cases, cases, confidence)[0] < rate:  # Rounding at the boundary.
        cases += 1
    return cases


def patient_resample_weights(patients: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                             seed: int = BOOTSTRAP_SEED) -> Iterator[np.ndarray]:
    """Chunks of [resamples in chunk, images] weights: how often each image's patient was drawn."""
    _, patient_of_image = np.unique(np.asarray(patients), return_inverse=True)
    num_patients = int(patient_of_image.max()) + 1 if patient_of_image.size else 0
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, RESAMPLES_PER_CHUNK):
        draws = rng.multinomial(num_patients, np.full(num_patients, 1.0 / num_patients),
                                size=min(RESAMPLES_PER_CHUNK, resamples - start))
        yield draws[:, patient_of_image].astype(np.float64)


def weighted_confusion(weights: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
                       num_classes: int) -> np.ndarray:
    """[resamples, true, predicted] counts, each image counted `weights[resample, image]` times."""
    cells = np.asarray(labels) * num_classes + np.asarray(predicted)
    one_hot = np.eye(num_classes * num_classes)[cells]
    return (weights @ one_hot).reshape(-1, num_classes, num_classes)


def weighted_roc_auc(weights: np.ndarray, is_positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """[resamples] areas under the ROC curve (Mann–Whitney, ties count half); NaN without both classes.

    Each row equals `sklearn.metrics.roc_auc_score` with that row as `sample_weight` (to
    within rounding), computed for every resample at once.
    """
    order = np.argsort(np.asarray(scores), kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    positive = np.asarray(is_positive, dtype=bool)[order]
    sorted_weights = np.atleast_2d(weights)[:, order]
    tie_groups = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    positives = np.add.reduceat(sorted_weights * positive, tie_groups, axis=1)
    negatives = np.add.reduceat(sorted_weights * ~positive, tie_groups, axis=1)
    negatives_below = np.cumsum(negatives, axis=1) - negatives
    wins = (positives * (negatives_below + 0.5 * negatives)).sum(axis=1)
    pairs = positives.sum(axis=1) * negatives.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> Interval | None:
    """The central `confidence` range of the defined (finite) bootstrap samples; None if there are none."""
    defined = np.asarray(samples, dtype=np.float64)
    defined = defined[np.isfinite(defined)]
    if not defined.size:
        return None
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(defined, (tail, 100.0 - tail))
    return float(low), float(high)


def _z_score(confidence: float) -> float:
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
