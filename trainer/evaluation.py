"""Per-class evaluation: the figures a clinician-facing team reads, not accuracy alone.

Accuracy hides a rare class (155 COVID-19 images among 18,000), so every class gets
its sensitivity (recall), PPV (precision), specificity, F1 and one-vs-rest ROC-AUC,
with macro averages and the confusion matrix (rows: true class, columns: predicted).
A figure whose denominator is zero is undefined (None, `null` in JSON, `n/a` in the
table) rather than a made-up 0: the sensitivity and ROC-AUC of a class absent from the
split, the PPV of a class never predicted. F1 = 2·TP / (2·TP + FP + FN), so a class
that is present but never predicted has F1 0. Macro averages are over defined values.

Every figure has a 95% interval (`trainer.intervals`): Wilson for sensitivity, PPV,
specificity and accuracy; a patient-level bootstrap for F1, ROC-AUC and the macro
averages. A class with fewer than `MIN_PATIENTS_TO_CONCLUDE` patients in a split is
flagged as too small to conclude from. Class predictions follow a `DecisionRule`
(`trainer.operating_point`: prior correction and an operating point chosen on val);
without one, the argmax of the model's probabilities. ROC-AUC does not depend on it.

Every split is also broken down by `image/source`. Sources differ in more than their
labels (hospital, scanner, file format, borders): in the published data almost every
COVID-19 image comes from covid-chestxray-dataset and none from RSNA, and models
trained on such mixes have been shown to detect the source instead of the disease
(DeGrave, Janizek and Lee, Nature Machine Intelligence, 2021). A class whose ROC-AUC is
high overall but near 0.5 within its own source is being recognised by its source.

Discipline: the model and the decision rule are chosen on val (`select_best_epoch`
reads only `val_` entries of the history); test is evaluated once, at the end, and
`format_table` prints it apart, under `TEST_HEADING`.

Entry points: `predict` (model + datasets → `SplitPredictions`), `split_metrics` /
`classification_metrics` (→ the JSON-ready figures), `format_table` (→ the printed
report), `write_report` (→ metrics.json and the figures), `select_best_epoch`.
"""

import json
import os
import typing
from collections.abc import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from cxr_core import contract
from cxr_core.decision_rule import DecisionRule
from trainer import intervals, plots

METRICS_FILE = "metrics.json"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
ROC_FILE = "roc.png"
DECISION_RULE_FILE = "decision_rule.json"
CLASS_METRICS = ("sensitivity", "ppv", "specificity", "f1", "roc_auc")
PROPORTIONS = ("sensitivity", "ppv", "specificity")  # Wilson intervals; the others are bootstrapped.
MIN_PATIENTS_TO_CONCLUDE = 30
TEST_HEADING = "TEST (evaluated once, after model selection on val)"
VAL_HEADING = "VAL (model selection and operating point)"
UNCORRECTED_ARGMAX = "argmax of the model's probabilities (no prior correction)"
PLOT_DASH = "-"  # Pillow's default font has no en dash.
CELL_WIDTH = 18  # " 0.87 [0.62–0.96]*": a space, the figure, its interval, a flag.


class SplitPredictions(typing.NamedTuple):
    """One split's true class ids [N], predicted probabilities [N, classes], sources [N] and patients [N].

    Without patient ids each image counts as its own patient.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    sources: np.ndarray
    patients: np.ndarray | None = None


def predict(model: keras.Model, datasets: dict[str, tf.data.Dataset]) -> dict[str, SplitPredictions]:
    """{split: SplitPredictions} for batched (images, one-hot labels, sources[, patient ids]) datasets.

    Runs the model directly rather than through `model.predict`, so labels and
    predictions come from the same batches and no replica ordering has to be undone.
    """
    image_spec = next(iter(datasets.values())).element_spec[0]
    infer = tf.function(lambda images: model(images, training=False),
                        input_signature=[tf.TensorSpec(image_spec.shape, image_spec.dtype)])
    results = {}
    for split, dataset in datasets.items():
        labels, probabilities, sources, patients = [], [], [], []
        for images, one_hot_labels, batch_sources, *batch_patients in dataset:
            probabilities.append(np.asarray(infer(images), dtype=np.float32))
            labels.append(np.argmax(one_hot_labels.numpy(), axis=-1))
            sources.append(_strings(batch_sources))
            if batch_patients:
                patients.append(_strings(batch_patients[0]))
        results[split] = SplitPredictions(np.concatenate(labels), np.concatenate(probabilities),
                                          np.concatenate(sources), np.concatenate(patients) if patients else None)
    return results


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray,
                     num_classes: int = contract.NUM_CLASSES) -> np.ndarray:
    """Counts [true class, predicted class]."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predicted)), 1)
    return matrix


def roc_curve(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score threshold, from (0, 0) to (1, 1).

    Tied scores form a single threshold, so the area counts a tie as half a win.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    sorted_scores, sorted_positive = np.asarray(scores)[order], is_positive[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_positives = np.cumsum(sorted_positive)[last_of_each_score]
    false_positives = last_of_each_score + 1 - true_positives
    positives, negatives = is_positive.sum(), (~is_positive).sum()
    return (np.r_[0.0, false_positives / max(negatives, 1)],
            np.r_[0.0, true_positives / max(positives, 1)])


def roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve; None when only one of positive/negative is present."""
    area = intervals.weighted_roc_auc(np.ones((1, len(scores))), is_positive, scores)[0]
    return float(area) if np.isfinite(area) else None


def class_rates(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class rates [..., classes] (NaN where undefined) and accuracy [...] of [..., true, predicted] counts."""
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


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray | None = None,
                           rule: DecisionRule | None = None,
                           resamples: int = intervals.BOOTSTRAP_RESAMPLES,
                           seed: int = intervals.BOOTSTRAP_SEED) -> dict:
    """Accuracy, per-class and macro figures with their 95% intervals, and the confusion matrix, JSON-ready.

    Classes are predicted by `rule` (default: argmax); ROC-AUC uses the model's
    probabilities as they are. `patients` [N] are the bootstrap's resampling unit;
    `resamples=0` skips the bootstrap (its intervals are None), e.g. after every epoch.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    patients = np.arange(len(labels)) if patients is None else np.asarray(patients)
    predicted = rule.apply(probabilities) if rule else np.argmax(probabilities, axis=-1)
    matrix = confusion_matrix(labels, predicted)
    rates = class_rates(matrix)
    rates["roc_auc"] = np.array([np.nan if (auc := roc_auc(labels == index, probabilities[:, index])) is None
                                 else auc for index in range(contract.NUM_CLASSES)])
    bootstrap = _bootstrap_intervals(labels, predicted, probabilities, patients, resamples, seed)
    total = int(matrix.sum())
    per_class = {}
    for index, name in enumerate(contract.CLASS_NAMES):
        true_positives = int(matrix[index, index])
        positives, predicted_positives = int(matrix[index].sum()), int(matrix[:, index].sum())
        class_patients = len(np.unique(patients[labels == index]))
        per_class[name] = {
            "support": positives,
            "patients": class_patients,
            "too_small": class_patients < MIN_PATIENTS_TO_CONCLUDE,
            **{metric: _defined(rates[metric][index]) for metric in CLASS_METRICS},
            "intervals": {
                "sensitivity": _json_interval(intervals.wilson_interval(true_positives, positives)),
                "ppv": _json_interval(intervals.wilson_interval(true_positives, predicted_positives)),
                "specificity": _json_interval(intervals.wilson_interval(
                    total - positives - predicted_positives + true_positives, total - positives)),
                "f1": bootstrap["per_class"]["f1"][index],
                "roc_auc": bootstrap["per_class"]["roc_auc"][index],
            },
        }
    return {
        "num_examples": total,
        "num_patients": len(np.unique(patients)),
        "accuracy": _defined(rates["accuracy"]),
        "intervals": {"accuracy": _json_interval(intervals.wilson_interval(int(np.trace(matrix)), total))},
        "per_class": per_class,
        "macro": {**{metric: _defined(_macro(rates[metric])) for metric in CLASS_METRICS},
                  "intervals": bootstrap["macro"]},
        "confusion_matrix": matrix.tolist(),
        "too_small_to_conclude": [name for name, figures in per_class.items() if figures["too_small"]],
        "decision_rule": rule.describe() if rule else UNCORRECTED_ARGMAX,
    }


def split_metrics(predictions: SplitPredictions, rule: DecisionRule | None = None,
                  resamples: int = intervals.BOOTSTRAP_RESAMPLES, seed: int = intervals.BOOTSTRAP_SEED) -> dict:
    """`classification_metrics` of the whole split, plus the same for each source in `by_source`."""
    labels, probabilities, sources, patients = predictions
    metrics = classification_metrics(labels, probabilities, patients, rule, resamples, seed)
    metrics["by_source"] = {}
    for source in sorted(set(sources.tolist())):
        in_source = sources == source
        metrics["by_source"][source] = classification_metrics(
            labels[in_source], probabilities[in_source], None if patients is None else patients[in_source],
            rule, resamples, seed)
    return metrics


def format_table(metrics_by_split: dict[str, dict]) -> str:
    """The printed report: one section per split, test last and under `TEST_HEADING`.

    Each section has a row per class plus the macro averages and accuracy, every
    figure with its 95% interval, then, when the split mixes sources, each class's
    ROC-AUC and the accuracy within each source.
    """
    ordered = sorted(metrics_by_split, key=lambda split: split == "test")
    return "\n\n".join(_format_split(split, metrics_by_split[split]) for split in ordered)


def _format_split(split: str, metrics: dict) -> str:
    heading = {"test": TEST_HEADING, "val": VAL_HEADING}.get(split, split.upper())
    header = f"{'class':<11} {'n':>6} {'patients':>8} " + " ".join(
        f"{title:>{CELL_WIDTH}}" for title in ("sensitivity", "PPV", "specificity", "F1", "ROC-AUC"))
    lines = [heading, "=" * len(heading), f"decision rule: {metrics['decision_rule']}",
             "95% intervals: Wilson (sensitivity, PPV, specificity, accuracy), "
             "patient-level bootstrap (F1, ROC-AUC, macro)",
             header, "-" * len(header)]
    for name, figures in metrics["per_class"].items():
        flag = "*" if _flagged(figures) else ""
        lines.append(f"{name + flag:<11} {figures['support']:>6} {figures['patients']:>8} "
                     + _cells(figures, CLASS_METRICS))
    lines.append(f"{'macro':<11} {metrics['num_examples']:>6} {metrics['num_patients']:>8} "
                 + _cells(metrics["macro"], CLASS_METRICS))
    lines.append(f"{'accuracy':<11} {metrics['num_examples']:>6} {metrics['num_patients']:>8} "
                 + _cells(metrics, ("accuracy",)))
    if any(_flagged(figures) for figures in metrics["per_class"].values()):
        lines.append(f"* fewer than {MIN_PATIENTS_TO_CONCLUDE} patients in {split}: too few to conclude from")
    if len(metrics.get("by_source", {})) > 1:
        lines += ["", _format_source_table(metrics["by_source"])]
    return "\n".join(lines)


def _format_source_table(by_source: dict[str, dict]) -> str:
    header = f"{'source':<11} {'n':>6} " + " ".join(
        f"{name:>{CELL_WIDTH}}" for name in (*contract.CLASS_NAMES, "accuracy"))
    lines = ["One-vs-rest ROC-AUC within each source (near 0.5 where the overall AUC is high: "
             "the class is recognised by its source):", header, "-" * len(header)]
    flagged = False
    for source, figures in by_source.items():
        cells = []
        for name in contract.CLASS_NAMES:
            class_figures = figures["per_class"][name]
            flagged |= _flagged(class_figures)
            cells.append(_cell(class_figures["roc_auc"], class_figures["intervals"]["roc_auc"],
                               "*" if _flagged(class_figures) else ""))
        cells.append(_cell(figures["accuracy"], figures["intervals"]["accuracy"]))
        lines.append(f"{source:<11} {figures['num_examples']:>6} " + " ".join(cells))
    if flagged:
        lines.append(f"* fewer than {MIN_PATIENTS_TO_CONCLUDE} patients of the class in the source: "
                     "too few to conclude from")
    return "\n".join(lines)


def write_report(eval_dir: str, results: dict[str, SplitPredictions], rule: DecisionRule | None = None,
                 resamples: int = intervals.BOOTSTRAP_RESAMPLES,
                 seed: int = intervals.BOOTSTRAP_SEED) -> dict[str, dict]:
    """Writes metrics.json, confusion_matrix.png, roc.png (and decision_rule.json); returns the metrics per split."""
    metrics_by_split = {split: split_metrics(predictions, rule, resamples, seed)
                        for split, predictions in results.items()}
    tf.io.gfile.makedirs(eval_dir)
    with tf.io.gfile.GFile(os.path.join(eval_dir, METRICS_FILE), "w") as output:
        json.dump(metrics_by_split, output, indent=2)
    confusion_png = plots.confusion_matrices(
        {split: np.asarray(metrics["confusion_matrix"]) for split, metrics in metrics_by_split.items()},
        contract.CLASS_NAMES,
        {split: _plot_caption(metrics) for split, metrics in metrics_by_split.items()})
    roc_png = plots.roc_curves(
        {split: {name: (*roc_curve(predictions.labels == index, predictions.probabilities[:, index]),
                        _interval_text(metrics_by_split[split]["per_class"][name]["roc_auc"],
                                       metrics_by_split[split]["per_class"][name]["intervals"]["roc_auc"],
                                       PLOT_DASH))
                 for index, name in enumerate(contract.CLASS_NAMES)}
         for split, predictions in results.items()})
    for name, png in ((CONFUSION_MATRIX_FILE, confusion_png), (ROC_FILE, roc_png)):
        with tf.io.gfile.GFile(os.path.join(eval_dir, name), "wb") as output:
            output.write(png)
    if rule:
        with tf.io.gfile.GFile(os.path.join(eval_dir, DECISION_RULE_FILE), "w") as output:
            json.dump(rule.to_json(), output, indent=2)
    return metrics_by_split


def select_best_epoch(history: Sequence[Mapping], metric: str = "macro_roc_auc", stage: int | None = None,
                      maximize: bool = True) -> Mapping:
    """The history entry with the best `val_<metric>` (of `stage`, when given); earliest on ties.

    Reads each entry's `stage` (only when filtering by it) and `val_<metric>`, nothing
    else: model selection never sees a test figure, even when the history holds one.

    Raises:
      ValueError: no entry (of `stage`) has `val_<metric>`.
    """
    key = f"val_{metric}"
    candidates = [entry for entry in history
                  if (stage is None or entry["stage"] == stage) and key in entry and entry[key] is not None]
    if not candidates:
        where = "" if stage is None else f" of stage {stage}"
        raise ValueError(f"no epoch{where} in the history has {key}; log it at the end of every epoch")
    best = max if maximize else min
    return best(candidates, key=lambda entry: entry[key])



def _bootstrap_intervals(labels: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray,
                         patients: np.ndarray, resamples: int, seed: int) -> dict:
    """Patient-level bootstrap intervals of per-class F1 and ROC-AUC and of every macro figure.

    None with fewer than two patients, or with `resamples` 0 (cheap per-epoch figures).
    """
    num_classes = contract.NUM_CLASSES
    if resamples < 1 or len(np.unique(patients)) < 2:
        return {"per_class": {metric: [None] * num_classes for metric in ("f1", "roc_auc")},
                "macro": {metric: None for metric in CLASS_METRICS}}
    samples: dict[str, list[np.ndarray]] = {metric: [] for metric in CLASS_METRICS}
    for weights in intervals.patient_resample_weights(patients, resamples, seed):
        rates = class_rates(intervals.weighted_confusion(weights, labels, predicted, num_classes))
        rates["roc_auc"] = np.stack([intervals.weighted_roc_auc(weights, labels == index, probabilities[:, index])
                                     for index in range(num_classes)], axis=1)
        for metric in CLASS_METRICS:
            samples[metric].append(rates[metric])
    stacked = {metric: np.concatenate(chunks) for metric, chunks in samples.items()}
    return {
        "per_class": {metric: [_json_interval(intervals.percentile_interval(stacked[metric][:, index]))
                               for index in range(num_classes)] for metric in ("f1", "roc_auc")},
        "macro": {metric: _json_interval(intervals.percentile_interval(_macro(stacked[metric])))
                  for metric in CLASS_METRICS},
    }


def _macro(values: np.ndarray) -> np.ndarray:
    """Mean over the defined (non-NaN) classes along the last axis; NaN where none is defined."""
    values = np.asarray(values, dtype=np.float64)
    defined = np.isfinite(values)
    counts = defined.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.where(defined, values, 0.0).sum(axis=-1) / counts, np.nan)


def _defined(value: float | np.floating) -> float | None:
    return float(value) if np.isfinite(value) else None


def _json_interval(interval: intervals.Interval | None) -> list[float] | None:
    return None if interval is None else [float(interval[0]), float(interval[1])]


def _strings(tensor: tf.Tensor) -> np.ndarray:
    return np.char.decode(tensor.numpy().astype(bytes), "utf-8")


def _interval_text(value: float | None, interval: Sequence[float] | None, dash: str = "–") -> str:
    """`0.87 [0.62–0.96]`, `0.87` without an interval, `n/a` when undefined."""
    if value is None:
        return "n/a"
    return f"{value:.2f}" if interval is None else f"{value:.2f} [{interval[0]:.2f}{dash}{interval[1]:.2f}]"


def _plot_caption(metrics: dict) -> str:
    caption = f"accuracy {_interval_text(metrics['accuracy'], metrics['intervals']['accuracy'], PLOT_DASH)}"
    if metrics["too_small_to_conclude"]:
        caption += (f"\nfewer than {MIN_PATIENTS_TO_CONCLUDE} patients, too few to conclude: "
                    + ", ".join(metrics["too_small_to_conclude"]))
    return caption


def _flagged(class_figures: dict) -> bool:
    """Present but with too few patients to conclude (an absent class already reads n/a)."""
    return bool(class_figures["too_small"] and class_figures["support"])


def _cells(figures: dict, metrics: Sequence[str]) -> str:
    return " ".join(_cell(figures[metric], figures["intervals"][metric]) for metric in metrics)


def _cell(value: float | None, interval: Sequence[float] | None, flag: str = "") -> str:
    return f"{_interval_text(value, interval) + flag:>{CELL_WIDTH}}"
