"""Per-class evaluation: the figures a clinician-facing team reads, not accuracy alone.

Accuracy hides a rare class (155 COVID-19 images among 18,000), so every class gets
its sensitivity (recall), PPV (precision), specificity, F1 and one-vs-rest ROC-AUC,
with macro averages and the confusion matrix (rows: true class, columns: predicted).
A figure whose denominator is zero is undefined (None, `null` in JSON, `n/a` in the
table) rather than a made-up 0: the sensitivity and ROC-AUC of a class absent from the
split, the PPV of a class never predicted. F1 = 2·TP / (2·TP + FP + FN), so a class
that is present but never predicted has F1 0. Macro averages are over defined values.

Every split is also broken down by `image/source`. Sources differ in more than their
labels (hospital, scanner, file format, borders): in the published data almost every
COVID-19 image comes from covid-chestxray-dataset and none from RSNA, and models
trained on such mixes have been shown to detect the source instead of the disease
(DeGrave, Janizek and Lee, Nature Machine Intelligence, 2021). A class whose ROC-AUC is
high overall but near 0.5 within its own source is being recognised by its source.
"""

import json
import os
import typing

import keras
import numpy as np
import tensorflow as tf

from beam_pipelines import contract
from trainer import plots

METRICS_FILE = "metrics.json"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
ROC_FILE = "roc.png"
CLASS_METRICS = ("sensitivity", "ppv", "specificity", "f1", "roc_auc")


class SplitPredictions(typing.NamedTuple):
    """One split's true class ids [N], predicted probabilities [N, classes] and sources [N]."""

    labels: np.ndarray
    probabilities: np.ndarray
    sources: np.ndarray


def predict(model: keras.Model, datasets: dict[str, tf.data.Dataset]) -> dict[str, SplitPredictions]:
    """{split: SplitPredictions} for batched (images, one-hot labels, sources) datasets.

    Runs the model directly rather than through `model.predict`, so labels and
    predictions come from the same batches and no replica ordering has to be undone.
    """
    image_spec = next(iter(datasets.values())).element_spec[0]
    infer = tf.function(lambda images: model(images, training=False),
                        input_signature=[tf.TensorSpec(image_spec.shape, image_spec.dtype)])
    results = {}
    for split, dataset in datasets.items():
        labels, probabilities, sources = [], [], []
        for images, one_hot_labels, batch_sources in dataset:
            probabilities.append(np.asarray(infer(images), dtype=np.float32))
            labels.append(np.argmax(one_hot_labels.numpy(), axis=-1))
            sources.append(np.char.decode(batch_sources.numpy().astype(bytes), "utf-8"))
        results[split] = SplitPredictions(np.concatenate(labels), np.concatenate(probabilities),
                                          np.concatenate(sources))
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
    is_positive = np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        return None
    false_positive_rate, true_positive_rate = roc_curve(is_positive, scores)
    return float(np.trapezoid(true_positive_rate, false_positive_rate))


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """Accuracy, per-class and macro figures and the confusion matrix, JSON-ready."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    matrix = confusion_matrix(labels, np.argmax(probabilities, axis=-1))
    total = int(matrix.sum())
    per_class = {}
    for index, name in enumerate(contract.CLASS_NAMES):
        true_positives = int(matrix[index, index])
        false_negatives = int(matrix[index].sum()) - true_positives
        false_positives = int(matrix[:, index].sum()) - true_positives
        true_negatives = total - true_positives - false_negatives - false_positives
        per_class[name] = {
            "support": true_positives + false_negatives,
            "sensitivity": _ratio(true_positives, true_positives + false_negatives),
            "ppv": _ratio(true_positives, true_positives + false_positives),
            "specificity": _ratio(true_negatives, true_negatives + false_positives),
            "f1": _ratio(2 * true_positives, 2 * true_positives + false_positives + false_negatives),
            "roc_auc": roc_auc(labels == index, probabilities[:, index]),
        }
    return {
        "num_examples": total,
        "accuracy": _ratio(int(np.trace(matrix)), total),
        "per_class": per_class,
        "macro": {metric: _mean([figures[metric] for figures in per_class.values()])
                  for metric in CLASS_METRICS},
        "confusion_matrix": matrix.tolist(),
    }


def split_metrics(predictions: SplitPredictions) -> dict:
    """`classification_metrics` of the whole split, plus the same for each source in `by_source`."""
    metrics = classification_metrics(predictions.labels, predictions.probabilities)
    metrics["by_source"] = {}
    for source in sorted(set(predictions.sources.tolist())):
        in_source = predictions.sources == source
        metrics["by_source"][source] = classification_metrics(predictions.labels[in_source],
                                                              predictions.probabilities[in_source])
    return metrics


def format_table(metrics_by_split: dict[str, dict]) -> str:
    """A fixed-width table, one row per split × class plus the macro averages.

    When a split mixes sources, a second table gives each class's ROC-AUC and the
    accuracy within each source.
    """
    header = f"{'split':<6} {'class':<10} {'n':>6} " + " ".join(
        f"{title:>6}" for title in ("sens", "PPV", "spec", "F1", "AUC"))
    lines = [header, "-" * len(header)]
    for split, metrics in metrics_by_split.items():
        rows = list(metrics["per_class"].items()) + [("macro", {**metrics["macro"],
                                                               "support": metrics["num_examples"]})]
        for name, figures in rows:
            values = " ".join(_cell(figures[metric]) for metric in CLASS_METRICS)
            lines.append(f"{split:<6} {name:<10} {figures['support']:>6} {values}")
        lines.append(f"{split:<6} {'accuracy':<10} {metrics['num_examples']:>6} {_cell(metrics['accuracy'])}")
    if any(len(metrics.get("by_source", {})) > 1 for metrics in metrics_by_split.values()):
        lines += ["", _format_source_table(metrics_by_split)]
    return "\n".join(lines)


def _format_source_table(metrics_by_split: dict[str, dict]) -> str:
    header = f"{'split':<6} {'source':<10} {'n':>6} " + " ".join(
        f"{name:>10}" for name in (*contract.CLASS_NAMES, "accuracy"))
    lines = ["One-vs-rest ROC-AUC within each source (near 0.5 where the overall AUC is high: "
             "the class is recognised by its source):", header, "-" * len(header)]
    for split, metrics in metrics_by_split.items():
        for source, figures in metrics.get("by_source", {}).items():
            values = [figures["per_class"][name]["roc_auc"] for name in contract.CLASS_NAMES]
            cells = " ".join(f"{_cell(value):>10}" for value in (*values, figures["accuracy"]))
            lines.append(f"{split:<6} {source:<10} {figures['num_examples']:>6} {cells}")
    return "\n".join(lines)


def write_report(eval_dir: str, results: dict[str, SplitPredictions]) -> dict[str, dict]:
    """Writes metrics.json, confusion_matrix.png and roc.png; returns the metrics per split."""
    metrics_by_split = {split: split_metrics(predictions) for split, predictions in results.items()}
    tf.io.gfile.makedirs(eval_dir)
    with tf.io.gfile.GFile(os.path.join(eval_dir, METRICS_FILE), "w") as output:
        json.dump(metrics_by_split, output, indent=2)
    confusion_png = plots.confusion_matrices(
        {split: np.asarray(metrics["confusion_matrix"]) for split, metrics in metrics_by_split.items()},
        contract.CLASS_NAMES)
    roc_png = plots.roc_curves(
        {split: {name: (*roc_curve(labels == index, probabilities[:, index]),
                        metrics_by_split[split]["per_class"][name]["roc_auc"])
                 for index, name in enumerate(contract.CLASS_NAMES)}
         for split, (labels, probabilities, _) in results.items()})
    for name, png in ((CONFUSION_MATRIX_FILE, confusion_png), (ROC_FILE, roc_png)):
        with tf.io.gfile.GFile(os.path.join(eval_dir, name), "wb") as output:
            output.write(png)
    return metrics_by_split


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / denominator if denominator else None


def _mean(values: list[float | None]) -> float | None:
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None


def _cell(value: float | None) -> str:
    return f"{'n/a':>6}" if value is None else f"{value:6.3f}"
