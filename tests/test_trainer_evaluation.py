"""The evaluation figures against a confusion matrix and ROC areas worked out by hand."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from trainer import evaluation

# True classes and predictions; the confusion matrix [true, predicted] is
#   [[3, 1, 0],
#    [0, 2, 1],
#    [1, 0, 2]]
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PREDICTED = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])


def probabilities_for(predicted: np.ndarray) -> np.ndarray:
    """0.8 for the predicted class, 0.1 for the others."""
    return 0.1 + 0.7 * np.eye(3, dtype=np.float32)[predicted]


def test_confusion_matrix_counts_true_rows_predicted_columns():
    np.testing.assert_array_equal(evaluation.confusion_matrix(LABELS, PREDICTED),
                                  [[3, 1, 0], [0, 2, 1], [1, 0, 2]])


def test_per_class_and_macro_figures_match_the_hand_computed_matrix():
    metrics = evaluation.classification_metrics(LABELS, probabilities_for(PREDICTED))

    assert metrics["num_examples"] == 10
    assert metrics["accuracy"] == pytest.approx(7 / 10)
    assert metrics["confusion_matrix"] == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    normal, pneumonia, covid19 = (metrics["per_class"][name] for name in ("normal", "pneumonia", "covid19"))
    # normal: TP 3, FN 1, FP 1, TN 5.
    assert normal["support"] == 4
    assert normal["sensitivity"] == pytest.approx(3 / 4)
    assert normal["ppv"] == pytest.approx(3 / 4)
    assert normal["specificity"] == pytest.approx(5 / 6)
    assert normal["f1"] == pytest.approx(3 / 4)
    # pneumonia and covid19: TP 2, FN 1, FP 1, TN 6.
    for figures in (pneumonia, covid19):
        assert figures["support"] == 3
        assert figures["sensitivity"] == pytest.approx(2 / 3)
        assert figures["ppv"] == pytest.approx(2 / 3)
        assert figures["specificity"] == pytest.approx(6 / 7)
        assert figures["f1"] == pytest.approx(2 / 3)
    # normal's scores: positives 0.8, 0.8, 0.8, 0.1; negatives five 0.1 and one 0.8.
    # Each 0.8 positive beats 5 negatives and ties 1 (5.5 wins); the 0.1 positive ties 5 (2.5).
    assert normal["roc_auc"] == pytest.approx((3 * 5.5 + 2.5) / (4 * 6))
    assert metrics["macro"]["sensitivity"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert metrics["macro"]["specificity"] == pytest.approx((5 / 6 + 6 / 7 + 6 / 7) / 3)
    assert metrics["macro"]["roc_auc"] == pytest.approx(
        np.mean([figures["roc_auc"] for figures in (normal, pneumonia, covid19)]))


def test_a_class_never_predicted_has_undefined_ppv_and_zero_f1():
    labels = np.array([0, 1, 2, 2])
    metrics = evaluation.classification_metrics(labels, probabilities_for(np.array([0, 1, 1, 1])))
    covid19 = metrics["per_class"]["covid19"]
    assert (covid19["sensitivity"], covid19["ppv"], covid19["f1"]) == (0.0, None, 0.0)
    assert covid19["specificity"] == 1.0
    assert metrics["macro"]["ppv"] == pytest.approx((1.0 + 1 / 3) / 2)  # Over the defined values.


def test_a_class_absent_from_the_split_has_undefined_sensitivity_and_auc():
    labels = np.array([0, 0, 1, 1])
    metrics = evaluation.classification_metrics(labels, probabilities_for(np.array([0, 1, 1, 2])))
    covid19 = metrics["per_class"]["covid19"]
    assert covid19["support"] == 0
    assert (covid19["sensitivity"], covid19["ppv"], covid19["f1"], covid19["roc_auc"]) == (None, 0.0, 0.0, None)
    assert covid19["specificity"] == pytest.approx(3 / 4)
    assert "n/a" in evaluation.format_table({"val": metrics})


def test_roc_auc_extremes_and_undefined_case():
    positive = np.array([True, True, False, False])
    assert evaluation.roc_auc(positive, np.array([0.9, 0.8, 0.2, 0.1])) == pytest.approx(1.0)
    assert evaluation.roc_auc(positive, np.array([0.1, 0.2, 0.8, 0.9])) == pytest.approx(0.0)
    assert evaluation.roc_auc(positive, np.full(4, 0.5)) == pytest.approx(0.5)
    assert evaluation.roc_auc(np.array([True, True]), np.array([0.3, 0.4])) is None


def test_roc_curve_runs_from_origin_to_one_one():
    false_positive_rate, true_positive_rate = evaluation.roc_curve(
        np.array([True, False, True, False]), np.array([0.9, 0.7, 0.7, 0.1]))
    np.testing.assert_allclose(false_positive_rate, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(true_positive_rate, [0.0, 0.5, 1.0, 1.0])


def test_write_report_writes_metrics_and_figures(tmp_path):
    one_source = np.full(len(LABELS), "rsna")
    results = {"val": evaluation.SplitPredictions(LABELS, probabilities_for(PREDICTED), one_source),
               "test": evaluation.SplitPredictions(LABELS, probabilities_for(LABELS), one_source)}

    metrics = evaluation.write_report(str(tmp_path), results)

    with open(tmp_path / evaluation.METRICS_FILE) as handle:
        assert json.load(handle) == metrics
    assert metrics["test"]["accuracy"] == 1.0
    for name in (evaluation.CONFUSION_MATRIX_FILE, evaluation.ROC_FILE):
        with Image.open(io.BytesIO((tmp_path / name).read_bytes())) as figure:
            assert figure.format == "PNG"
            assert figure.width == 2 * figure.height  # One panel per split.
    table = evaluation.format_table(metrics)
    assert "val    covid19         3  0.667  0.667  0.857  0.667" in table
    assert "test   accuracy       10  1.000" in table
    assert "within each source" not in table  # One source: its breakdown would repeat the split.


def test_a_class_recognised_by_its_source_scores_chance_within_the_source():
    # Source "covid" holds every covid19 image plus normal and pneumonia ones; "rsna" has
    # no covid19. The covid19 score is 0.6 for every covid-source image and 0.2 elsewhere:
    # it tells the sources apart and nothing else.
    labels = np.array([0, 1, 0, 1, 2, 2, 2, 0, 1])
    sources = np.array(["rsna"] * 4 + ["covid"] * 5)
    covid_score = np.where(sources == "covid", 0.6, 0.2)
    probabilities = np.stack([(1 - covid_score) / 2, (1 - covid_score) / 2, covid_score], axis=-1)

    metrics = evaluation.split_metrics(evaluation.SplitPredictions(labels, probabilities, sources))

    assert metrics["per_class"]["covid19"]["roc_auc"] == pytest.approx(5 / 6)  # Beats every rsna image.
    within_covid = metrics["by_source"]["covid"]
    assert within_covid["num_examples"] == 5
    assert within_covid["per_class"]["covid19"]["roc_auc"] == pytest.approx(0.5)
    assert within_covid["confusion_matrix"] == [[0, 0, 1], [0, 0, 1], [0, 0, 3]]
    assert metrics["by_source"]["rsna"]["per_class"]["covid19"]["roc_auc"] is None  # No covid19 there.
    table = evaluation.format_table({"test": metrics})
    assert "test   covid           5      0.500      0.500      0.500      0.600" in table
    assert "test   rsna            4      0.500      0.500        n/a      0.500" in table
