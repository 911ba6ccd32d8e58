"""The evaluation as people read it: the printed table and the files of the eval dir.

The best epoch (`trainer.train`, by val macro ROC-AUC) and the decision rule
(`trainer.evaluation.operating_point`) are chosen on val; test is scored once, at the
end, so `format_table` prints it last and apart, under `TEST_HEADING`, where it cannot
be mistaken for a figure that chose anything. `write_report` scores each split
(`trainer.evaluation.metrics`) and writes metrics.json, the decision rule, and the
confusion matrix and ROC figures (`trainer.evaluation.plots`); every figure is shown
with its 95% interval.
"""

import json
import os
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from cxr_core import contract
from cxr_core.decision_rule import DecisionRule
from trainer.evaluation import intervals, plots
from trainer.evaluation.metrics import (MIN_PATIENTS_TO_CONCLUDE, ClassFigures, ClassificationMetrics, Estimate,
                                        Figures, SplitMetrics, SplitPredictions, roc_curve, split_metrics)

METRICS_FILE = "metrics.json"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
ROC_FILE = "roc.png"
DECISION_RULE_FILE = "decision_rule.json"
TEST_HEADING = "TEST (evaluated once, after model selection on val)"
VAL_HEADING = "VAL (model selection and operating point)"
PLOT_DASH = "-"  # Pillow's default font has no en dash.
CELL_WIDTH = 18  # " 0.87 [0.62–0.96]*": a space, the figure, its interval, a flag.


def format_table(metrics_by_split: Mapping[str, SplitMetrics]) -> str:
    """The printed report: one section per split, test last and under `TEST_HEADING`.

    Each section has a row per class plus the macro averages and accuracy, every
    figure with its 95% interval, then, when the split mixes sources, each class's
    ROC-AUC and the accuracy within each source.
    """
    ordered = sorted(metrics_by_split, key=lambda split: split == "test")
    return "\n\n".join(_format_split(split, metrics_by_split[split]) for split in ordered)


def write_report(eval_dir: str, results: Mapping[str, SplitPredictions], rule: DecisionRule | None = None,
                 resamples: int = intervals.BOOTSTRAP_RESAMPLES,
                 seed: int = intervals.BOOTSTRAP_SEED) -> dict[str, SplitMetrics]:
    """Scores each split and writes metrics.json, confusion_matrix.png, roc.png (and decision_rule.json).

    Returns the metrics per split.
    """
    metrics_by_split = {split: split_metrics(predictions, rule, resamples, seed)
                        for split, predictions in results.items()}
    tf.io.gfile.makedirs(eval_dir)
    with tf.io.gfile.GFile(os.path.join(eval_dir, METRICS_FILE), "w") as output:
        json.dump({split: metrics.to_json() for split, metrics in metrics_by_split.items()}, output, indent=2)
    confusion_png = plots.confusion_matrices(
        {split: np.asarray(metrics.overall.confusion_matrix) for split, metrics in metrics_by_split.items()},
        contract.CLASS_NAMES,
        {split: _plot_caption(metrics.overall) for split, metrics in metrics_by_split.items()})
    roc_png = plots.roc_curves(
        {split: {name: (*roc_curve(predictions.labels == index, predictions.probabilities[:, index]),
                        metrics_by_split[split].overall.per_class[name].roc_auc.text(dash=PLOT_DASH))
                 for index, name in enumerate(contract.CLASS_NAMES)}
         for split, predictions in results.items()})
    for name, png in ((CONFUSION_MATRIX_FILE, confusion_png), (ROC_FILE, roc_png)):
        with tf.io.gfile.GFile(os.path.join(eval_dir, name), "wb") as output:
            output.write(png)
    if rule:
        with tf.io.gfile.GFile(os.path.join(eval_dir, DECISION_RULE_FILE), "w") as output:
            json.dump(rule.to_json(), output, indent=2)
    return metrics_by_split


def _format_split(split: str, metrics: SplitMetrics) -> str:
    overall = metrics.overall
    heading = {"test": TEST_HEADING, "val": VAL_HEADING}.get(split, split.upper())
    header = f"{'class':<11} {'n':>6} {'patients':>8} " + " ".join(
        f"{title:>{CELL_WIDTH}}" for title in ("sensitivity", "PPV", "specificity", "F1", "ROC-AUC"))
    lines = [heading, "=" * len(heading), f"decision rule: {overall.decision_rule}",
             "95% intervals: Wilson (sensitivity, PPV, specificity, accuracy), "
             "patient-level bootstrap (F1, ROC-AUC, macro)",
             header, "-" * len(header)]
    for name, figures in overall.per_class.items():
        flag = "*" if _flagged(figures) else ""
        lines.append(f"{name + flag:<11} {figures.support:>6} {figures.patients:>8} " + _cells(figures))
    lines.append(f"{'macro':<11} {overall.num_examples:>6} {overall.num_patients:>8} " + _cells(overall.macro))
    lines.append(f"{'accuracy':<11} {overall.num_examples:>6} {overall.num_patients:>8} " + _cell(overall.accuracy))
    if any(_flagged(figures) for figures in overall.per_class.values()):
        lines.append(f"* fewer than {MIN_PATIENTS_TO_CONCLUDE} patients in {split}: too few to conclude from")
    if len(metrics.by_source) > 1:
        lines += ["", _format_source_table(metrics.by_source)]
    return "\n".join(lines)


def _format_source_table(by_source: Mapping[str, ClassificationMetrics]) -> str:
    header = f"{'source':<11} {'n':>6} " + " ".join(
        f"{name:>{CELL_WIDTH}}" for name in (*contract.CLASS_NAMES, "accuracy"))
    lines = ["One-vs-rest ROC-AUC within each source (near 0.5 where the overall AUC is high: "
             "the class is recognised by its source):", header, "-" * len(header)]
    flagged = False
    for source, metrics in by_source.items():
        cells = []
        for figures in metrics.per_class.values():
            flagged |= _flagged(figures)
            cells.append(_cell(figures.roc_auc, "*" if _flagged(figures) else ""))
        cells.append(_cell(metrics.accuracy))
        lines.append(f"{source:<11} {metrics.num_examples:>6} " + " ".join(cells))
    if flagged:
        lines.append(f"* fewer than {MIN_PATIENTS_TO_CONCLUDE} patients of the class in the source: "
                     "too few to conclude from")
    return "\n".join(lines)


def _plot_caption(metrics: ClassificationMetrics) -> str:
    caption = f"accuracy {metrics.accuracy.text(dash=PLOT_DASH)}"
    if metrics.too_small_to_conclude:
        caption += (f"\nfewer than {MIN_PATIENTS_TO_CONCLUDE} patients, too few to conclude: "
                    + ", ".join(metrics.too_small_to_conclude))
    return caption


def _flagged(figures: ClassFigures) -> bool:
    """Present but with too few patients to conclude (an absent class already reads n/a)."""
    return figures.too_small and figures.support > 0


def _cells(figures: Figures) -> str:
    return " ".join(_cell(estimate) for estimate in figures.estimates().values())


def _cell(estimate: Estimate, flag: str = "") -> str:
    return f"{estimate.text() + flag:>{CELL_WIDTH}}"
