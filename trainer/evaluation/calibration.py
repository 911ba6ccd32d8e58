"""Whether the predicted probabilities mean what they say, and temperature scaling to make them.

A triage reader acts on "covid19 0.93", so 0.93 should come true about 93 times in 100.
Three figures say how far it does, NumPy in, frozen dataclasses out:

- the expected calibration error (ECE) of the top class (Guo, Pleiss, Sun and Weinberger,
  "On calibration of modern neural networks", ICML 2017): images are put in `ECE_BINS`
  equal-width bins of their highest probability, and the gaps between each bin's mean
  confidence and its accuracy are averaged, weighted by the bin's share of images; 0 is
  perfect. Its 95% interval is a patient-level bootstrap
  (`trainer.evaluation.intervals`), as for ROC-AUC;
- the Brier score: the mean over images of Σ_c (p_c − y_c)², 0 perfect, 2 worst; the
  point figure is the bootstrap's statistic at unit weights, as for ROC-AUC, and equals
  scikit-learn's `brier_score_loss` (the tests check it);
- a reliability curve per class, one-vs-rest (scikit-learn's `calibration_curve`, same
  bins), with that class's own calibration error: the diagram a reader checks against
  the diagonal.

Temperature scaling divides the log-probabilities by one scalar T fitted on val by
minimising the negative log-likelihood, then renormalises (Guo et al.): T > 1 softens an
overconfident model. It keeps every image's class ranking, so the argmax is unchanged,
but a rule that corrects the class prior or thresholds one class sees other numbers, so
the rule is fitted on the scaled probabilities and serving scales before applying it. One
temperature per class was measured against the scalar and did not help (README,
"Reading the evaluation"), so there is one scalar.
"""

import dataclasses
from collections.abc import Mapping

import numpy as np
import scipy.optimize
import sklearn.calibration

from cxr_core import contract
from trainer.evaluation import intervals
from trainer.evaluation.metrics import Estimate

ECE_BINS = 10
# Bounds of the fitted temperature: far outside them a model is broken, not miscalibrated.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
# float32's smallest normal number: a probability that underflowed to 0 still has a logarithm,
# the same floor as serving.export's.
PROBABILITY_FLOOR = float(np.finfo(np.float32).tiny)


@dataclasses.dataclass(frozen=True)
class ReliabilityCurve:
    """One class's reliability diagram: per non-empty bin, the mean predicted probability and the observed rate."""

    mean_predicted: tuple[float, ...]
    observed_rate: tuple[float, ...]
    counts: tuple[int, ...]
    calibration_error: float | None  # Σ bins share · |observed − predicted|; None without images.

    def to_json(self) -> dict:
        return {"mean_predicted": list(self.mean_predicted), "observed_rate": list(self.observed_rate),
                "counts": list(self.counts), "calibration_error": self.calibration_error}


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The calibration figures of one set of predictions."""

    num_examples: int
    ece: Estimate
    brier: Estimate
    negative_log_likelihood: float | None
    reliability: Mapping[str, ReliabilityCurve]  # In `contract.CLASS_NAMES` order.

    def to_json(self) -> dict:
        return {"num_examples": self.num_examples, "ece": self.ece.value, "brier": self.brier.value,
                "negative_log_likelihood": self.negative_log_likelihood,
                "intervals": {"ece": self.ece.interval_json(), "brier": self.brier.interval_json()},
                "reliability": {name: curve.to_json() for name, curve in self.reliability.items()},
                "bins": ECE_BINS}


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the probabilities at `temperature` (1 leaves them as they are)."""
    logits = np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=-1, keepdims=True)


def negative_log_likelihood(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Mean −log p(true class); None without images."""
    labels = np.asarray(labels)
    if not len(labels):
        return None
    true_class = np.asarray(probabilities, dtype=np.float64)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(true_class, PROBABILITY_FLOOR))))


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of `labels` (val's, never test's).

    The likelihood is convex in 1/T, so the bounded one-dimensional search finds its one
    minimum. 1.0 without images.
    """
    labels = np.asarray(labels)
    if not len(labels):
        return 1.0
    logits = np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR))
    true_logit = logits[np.arange(len(labels)), labels]

    def loss(inverse_temperature: float) -> float:
        scaled = inverse_temperature * logits
        peak = scaled.max(axis=1)
        return float(np.mean(peak + np.log(np.exp(scaled - peak[:, None]).sum(axis=1))
                             - inverse_temperature * true_logit))

    result = scipy.optimize.minimize_scalar(loss, bounds=(1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE),
                                            method="bounded", options={"xatol": 1e-6})
    return float(1.0 / result.x)


def bin_ids(scores: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Equal-width bin of each score in [0, 1], bins closed on the right, as scikit-learn's `calibration_curve`."""
    return np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], np.asarray(scores))


def expected_calibration_error(weights: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                               bins: int = ECE_BINS) -> np.ndarray:
    """[resamples] top-class ECE, each image counted `weights[resample, image]` times; NaN without images.

    With weights of ones it is the ECE of the predictions as they are.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = (np.argmax(probabilities, axis=1) == np.asarray(labels)).astype(np.float64)
    in_bin = np.eye(bins)[bin_ids(confidence, bins)]  # [images, bins]
    weights = np.atleast_2d(weights)
    gaps = weights @ (in_bin * (correct - confidence)[:, None])  # [resamples, bins]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(gaps).sum(axis=1) / weights.sum(axis=1)


def brier_scores(weights: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """[resamples] multi-class Brier scores, each image counted `weights[resample, image]` times."""
    errors = ((np.asarray(probabilities, dtype=np.float64)
               - np.eye(contract.NUM_CLASSES)[np.asarray(labels)]) ** 2).sum(axis=1)
    weights = np.atleast_2d(weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        return weights @ errors / weights.sum(axis=1)


def reliability_curve(is_positive: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS) -> ReliabilityCurve:
    """One class's reliability diagram (scikit-learn's `calibration_curve`) and calibration error."""
    is_positive = np.asarray(is_positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return ReliabilityCurve((), (), (), None)
    counts = np.bincount(bin_ids(scores, bins), minlength=bins)
    counts = counts[counts > 0]  # calibration_curve returns the non-empty bins only.
    observed, predicted = sklearn.calibration.calibration_curve(is_positive, scores, n_bins=bins, pos_label=True)
    error = float(np.sum(counts / counts.sum() * np.abs(observed - predicted)))
    return ReliabilityCurve(tuple(map(float, predicted)), tuple(map(float, observed)), tuple(map(int, counts)), error)


def calibration(labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray | None = None,
                resamples: int = intervals.BOOTSTRAP_RESAMPLES,
                seed: int = intervals.BOOTSTRAP_SEED) -> Calibration:
    """ECE and Brier score with their patient-bootstrap 95% intervals, the NLL, and the per-class curves.

    Without patient ids each image counts as its own patient; `resamples=0` skips the intervals.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    patients = np.arange(len(labels)) if patients is None else np.asarray(patients)
    ones = np.ones((1, len(labels)))
    ece = expected_calibration_error(ones, labels, probabilities)[0] if len(labels) else np.nan
    brier = brier_scores(ones, labels, probabilities)[0] if len(labels) else np.nan
    ece_interval = brier_interval = None
    if resamples > 0 and len(np.unique(patients)) > 1:
        ece_samples, brier_samples = [], []
        for weights in intervals.patient_resample_weights(patients, resamples, seed):
            ece_samples.append(expected_calibration_error(weights, labels, probabilities))
            brier_samples.append(brier_scores(weights, labels, probabilities))
        ece_interval = intervals.percentile_interval(np.concatenate(ece_samples))
        brier_interval = intervals.percentile_interval(np.concatenate(brier_samples))
    return Calibration(
        num_examples=len(labels),
        ece=Estimate(_defined(ece), ece_interval),
        brier=Estimate(_defined(brier), brier_interval),
        negative_log_likelihood=negative_log_likelihood(labels, probabilities),
        reliability={name: reliability_curve(labels == index, probabilities[:, index])
                     for index, name in enumerate(contract.CLASS_NAMES)})


def _defined(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
