"""Per-class evaluation figures: what a clinician-facing team reads, not accuracy alone.

Accuracy hides a rare class (155 COVID-19 images among 18,000), so every class gets
its sensitivity (recall), PPV (precision), specificity, F1 and one-vs-rest ROC-AUC,
with macro averages and the confusion matrix (rows: true class, columns: predicted).
A figure whose denominator is zero is undefined (None, `null` in JSON, `n/a` in the
table) rather than a made-up 0: the sensitivity and ROC-AUC of a class absent from the
split, the PPV of a class never predicted. F1 = 2·TP / (2·TP + FP + FN), so a class
that is present but never predicted has F1 0. Macro averages are over defined values.

Every figure has a 95% interval (`trainer.evaluation.intervals`): Wilson for
sensitivity, PPV, specificity and accuracy; a patient-level bootstrap for F1, ROC-AUC
and the macro averages. A class with fewer than `MIN_PATIENTS_TO_CONCLUDE` patients in
a split is flagged as too small to conclude from. Class predictions follow a
`DecisionRule` (`trainer.evaluation.operating_point`: prior correction and an
operating point chosen on val); without one, the argmax of the model's probabilities.
ROC-AUC does not depend on it.

Every split is also broken down by `image/source`. Sources differ in more than their
labels (hospital, scanner, file format, borders): in the published data almost every
COVID-19 image comes from covid-chestxray-dataset and none from RSNA, and models
trained on such mixes have been shown to detect the source instead of the disease
(DeGrave, Janizek and Lee, Nature Machine Intelligence, 2021). A class whose ROC-AUC is
high overall but near 0.5 within its own source is being recognised by its source.

The confusion matrix and the ROC curve are scikit-learn's. The point ROC-AUC is the
bootstrap's own statistic at unit weights (`intervals.weighted_roc_auc`), so a figure
and its interval come from one formula; it agrees with `sklearn.metrics.roc_auc_score`
to within 1e-15 (the tests check it). NumPy in, frozen dataclasses out; `to_json()` gives
the structure of metrics.json.
"""

import dataclasses
import typing
import warnings
from collections.abc import Mapping

import numpy as np
import sklearn.exceptions
import sklearn.metrics

from cxr_core import contract
from cxr_core.decision_rule import DecisionRule
from trainer.evaluation import intervals

CLASS_METRICS = ("sensitivity", "ppv", "specificity", "f1", "roc_auc")
BOOTSTRAPPED_CLASS_METRICS = ("f1", "roc_auc")  # Not proportions, so no Wilson interval.
MIN_PATIENTS_TO_CONCLUDE = 30
UNCORRECTED_ARGMAX = "argmax of the model's probabilities (no prior correction)"


class SplitPredictions(typing.NamedTuple):
    """One split's true class ids [N], predicted probabilities [N, classes], sources [N] and patients [N].

    Without patient ids each image counts as its own patient.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    sources: np.ndarray
    patients: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A figure and its 95% interval; either is None where undefined."""

    value: float | None
    interval: intervals.Interval | None

    def interval_json(self) -> list[float] | None:
        return None if self.interval is None else [float(self.interval[0]), float(self.interval[1])]

    def text(self, digits: int = 2, dash: str = "–") -> str:
        """`0.87 [0.62–0.96]`, `0.87` without an interval, `n/a` when undefined."""
        if self.value is None:
            return "n/a"
        if self.interval is None:
            return f"{self.value:.{digits}f}"
        low, high = self.interval
        return f"{self.value:.{digits}f} [{low:.{digits}f}{dash}{high:.{digits}f}]"


@dataclasses.dataclass(frozen=True)
class Figures:
    """Sensitivity, PPV, specificity, F1 and one-vs-rest ROC-AUC: of one class, or their macro averages."""

    sensitivity: Estimate
    ppv: Estimate
    specificity: Estimate
    f1: Estimate
    roc_auc: Estimate

    def estimates(self) -> dict[str, Estimate]:
        """{metric: Estimate} in `CLASS_METRICS` order."""
        return {metric: getattr(self, metric) for metric in CLASS_METRICS}

    def to_json(self) -> dict:
        estimates = self.estimates()
        return {**{metric: estimate.value for metric, estimate in estimates.items()},
                "intervals": {metric: estimate.interval_json() for metric, estimate in estimates.items()}}


@dataclasses.dataclass(frozen=True)
class ClassFigures(Figures):
    """One class's figures, with its image count (`support`) and patient count."""

    support: int
    patients: int

    @property
    def too_small(self) -> bool:
        return self.patients < MIN_PATIENTS_TO_CONCLUDE

    def to_json(self) -> dict:
        return {"support": self.support, "patients": self.patients, "too_small": self.too_small,
                **super().to_json()}


@dataclasses.dataclass(frozen=True)
class ClassificationMetrics:
    """The figures of one set of predictions: a whole split, or one source within it."""

    num_examples: int
    num_patients: int
    accuracy: Estimate
    per_class: Mapping[str, ClassFigures]  # In `contract.CLASS_NAMES` order.
    macro: Figures
    confusion_matrix: tuple[tuple[int, ...], ...]  # [true class][predicted class]
    decision_rule: str

    @property
    def too_small_to_conclude(self) -> list[str]:
        return [name for name, figures in self.per_class.items() if figures.too_small]

    def to_json(self) -> dict:
        return {
            "num_examples": self.num_examples,
            "num_patients": self.num_patients,
            "accuracy": self.accuracy.value,
            "intervals": {"accuracy": self.accuracy.interval_json()},
            "per_class": {name: figures.to_json() for name, figures in self.per_class.items()},
            "macro": self.macro.to_json(),
            "confusion_matrix": [list(row) for row in self.confusion_matrix],
            "too_small_to_conclude": self.too_small_to_conclude,
            "decision_rule": self.decision_rule,
        }


@dataclasses.dataclass(frozen=True)
class SplitMetrics:
    """A split's figures overall and within each `image/source` (sorted by name)."""

    overall: ClassificationMetrics
    by_source: Mapping[str, ClassificationMetrics]

    def to_json(self) -> dict:
        return {**self.overall.to_json(),
                "by_source": {source: metrics.to_json() for source, metrics in self.by_source.items()}}


def roc_curve(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score threshold, from (0, 0) to (1, 1).

    A class absent from the split (or the only one in it) has no rate on one axis;
    it reads 0 there rather than scikit-learn's NaN, so the curve can still be drawn.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn.exceptions.UndefinedMetricWarning)
        false_positive_rates, true_positive_rates, _ = sklearn.metrics.roc_curve(
            np.asarray(is_positive, dtype=bool), scores, drop_intermediate=False)
    return np.nan_to_num(false_positive_rates), np.nan_to_num(true_positive_rates)


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray | None = None,
                           rule: DecisionRule | None = None,
                           resamples: int = intervals.BOOTSTRAP_RESAMPLES,
                           seed: int = intervals.BOOTSTRAP_SEED) -> ClassificationMetrics:
    """Accuracy, per-class and macro figures with their 95% intervals, and the confusion matrix.

    Classes are predicted by `rule` (default: argmax); ROC-AUC uses the model's
    probabilities as they are. `patients` [N] are the bootstrap's resampling unit;
    `resamples=0` skips the bootstrap (its intervals are None), e.g. after every epoch.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    patients = np.arange(len(labels)) if patients is None else np.asarray(patients)
    predicted = rule.apply(probabilities) if rule else np.argmax(probabilities, axis=-1)
    matrix = sklearn.metrics.confusion_matrix(labels, predicted, labels=np.arange(contract.NUM_CLASSES))
    rates = _class_rates(matrix)
    rates["roc_auc"] = np.concatenate([
        intervals.weighted_roc_auc(np.ones((1, len(labels))), labels == index, probabilities[:, index])
        for index in range(contract.NUM_CLASSES)])
    per_class_intervals, macro_intervals = _bootstrap_intervals(labels, predicted, probabilities, patients,
                                                                resamples, seed)
    total = int(matrix.sum())
    per_class = {}
    for index, name in enumerate(contract.CLASS_NAMES):
        true_positives = int(matrix[index, index])
        positives, predicted_positives = int(matrix[index].sum()), int(matrix[:, index].sum())
        class_intervals = {
            "sensitivity": intervals.wilson_interval(true_positives, positives),
            "ppv": intervals.wilson_interval(true_positives, predicted_positives),
            "specificity": intervals.wilson_interval(total - positives - predicted_positives + true_positives,
                                                     total - positives),
            **{metric: per_class_intervals[metric][index] for metric in BOOTSTRAPPED_CLASS_METRICS},
        }
        per_class[name] = ClassFigures(
            **{metric: Estimate(_defined(rates[metric][index]), class_intervals[metric]) for metric in CLASS_METRICS},
            support=positives,
            patients=len(np.unique(patients[labels == index])))
    return ClassificationMetrics(
        num_examples=total,
        num_patients=len(np.unique(patients)),
        accuracy=Estimate(_defined(rates["accuracy"]), intervals.wilson_interval(int(np.trace(matrix)), total)),
        per_class=per_class,
        macro=Figures(**{metric: Estimate(_defined(_macro(rates[metric])), macro_intervals[metric])
                         for metric in CLASS_METRICS}),
        confusion_matrix=tuple(tuple(int(count) for count in row) for row in matrix),
        decision_rule=rule.describe() if rule else UNCORRECTED_ARGMAX,
    )


def split_metrics(predictions: SplitPredictions, rule: DecisionRule | None = None,
                  resamples: int = intervals.BOOTSTRAP_RESAMPLES,
                  seed: int = intervals.BOOTSTRAP_SEED) -> SplitMetrics:
    """`classification_metrics` of the whole split and of each of its sources."""
    labels, probabilities, sources, patients = predictions
    by_source = {}
    for source in sorted(set(sources.tolist())):
        in_source = sources == source
        by_source[source] = classification_metrics(
            labels[in_source], probabilities[in_source], None if patients is None else patients[in_source],
            rule, resamples, seed)
    return SplitMetrics(classification_metrics(labels, probabilities, patients, rule, resamples, seed), by_source)


def _class_rates(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class rates [..., classes] (NaN where undefined) and accuracy [...] of [..., true, predicted] counts.

    Takes a stack of matrices so that the bootstrap's resamples are computed at once.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positives = np.diagonal(matrix, axis1=-2, axis2=-1)
    false_negatives = matrix.sum(axis=-1) - true_positives
    false_positives = matrix.sum(axis=-2) - true_positives
    total = matrix.sum(axis=(-2, -1))
    true_negatives = total[..., np.newaxis] - true_positives - false_negatives - false_positives
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "sensitivity": true_positives / (true_positives + false_negatives),
            "ppv": true_positives / (true_positives + false_positives),
            "specificity": true_negatives / (true_negatives + false_positives),
            "f1": 2 * true_positives / (2 * true_positives + false_positives + false_negatives),
            "accuracy": true_positives.sum(axis=-1) / total,
        }


def _bootstrap_intervals(labels: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray,
                         patients: np.ndarray, resamples: int, seed: int
                         ) -> tuple[dict[str, list[intervals.Interval | None]], dict[str, intervals.Interval | None]]:
    """Patient-level bootstrap intervals: ({metric: one per class} for F1 and ROC-AUC, {metric: macro}).

    None with fewer than two patients, or with `resamples` 0 (cheap per-epoch figures).
    """
    num_classes = contract.NUM_CLASSES
    if resamples < 1 or len(np.unique(patients)) < 2:
        return ({metric: [None] * num_classes for metric in BOOTSTRAPPED_CLASS_METRICS},
                {metric: None for metric in CLASS_METRICS})
    samples: dict[str, list[np.ndarray]] = {metric: [] for metric in CLASS_METRICS}
    for weights in intervals.patient_resample_weights(patients, resamples, seed):
        rates = _class_rates(intervals.weighted_confusion(weights, labels, predicted, num_classes))
        rates["roc_auc"] = np.stack([intervals.weighted_roc_auc(weights, labels == index, probabilities[:, index])
                                     for index in range(num_classes)], axis=1)
        for metric in CLASS_METRICS:
            samples[metric].append(rates[metric])
    stacked = {metric: np.concatenate(chunks) for metric, chunks in samples.items()}
    return ({metric: [intervals.percentile_interval(stacked[metric][:, index]) for index in range(num_classes)]
             for metric in BOOTSTRAPPED_CLASS_METRICS},
            {metric: intervals.percentile_interval(_macro(stacked[metric])) for metric in CLASS_METRICS})


def _macro(values: np.ndarray) -> np.ndarray:
    """Mean over the defined (non-NaN) classes along the last axis; NaN where none is defined."""
    values = np.asarray(values, dtype=np.float64)
    defined = np.isfinite(values)
    counts = defined.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.where(defined, values, 0.0).sum(axis=-1) / counts, np.nan)


def _defined(value: float | np.floating) -> float | None:
    return float(value) if np.isfinite(value) else None
