"""The evaluation figures, intervals and decision rules against values worked out by hand."""

import io
import json
from collections.abc import Mapping

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cxr_core import contract, decision_rule
from serving import export
from trainer import evaluation, intervals, operating_point

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
    assert metrics["val"]["per_class"]["covid19"]["intervals"]["sensitivity"] == pytest.approx(
        list(intervals.wilson_interval(2, 3)))
    table = evaluation.format_table(metrics)
    val_section, test_section = table.split(evaluation.TEST_HEADING)
    assert table.count(evaluation.TEST_HEADING) == 1 and evaluation.VAL_HEADING in val_section
    covid19_row = next(line for line in val_section.splitlines() if line.startswith("covid19"))
    assert covid19_row.split()[:5] == ["covid19*", "3", "3", "0.67", "[0.21–0.94]"]  # Wilson 2/3.
    assert ["accuracy", "10", "10", "1.00", "[0.72–1.00]"] in [line.split() for line in test_section.splitlines()]
    assert "fewer than 30 patients in test: too few to conclude from" in test_section
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
    covid_row = next(line for line in table.splitlines() if line.startswith("covid "))
    rsna_row = next(line for line in table.splitlines() if line.startswith("rsna "))
    assert [cell for cell in covid_row.split() if not cell.startswith("[")] == [
        "covid", "5", "0.50", "0.50", "0.50", "0.60"]
    assert [cell for cell in rsna_row.split() if not cell.startswith("[")] == [
        "rsna", "4", "0.50", "0.50", "n/a", "0.50"]


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


def scored_split(num_patients: int = 60, images_per_patient: int = 1, seed: int = 0):
    """Labels, informative but imperfect probabilities and patient ids; a patient's images share a label."""
    rng = np.random.default_rng(seed)
    patient_labels = np.arange(num_patients) % 3
    labels = np.repeat(patient_labels, images_per_patient)
    patients = np.repeat(np.array([f"p{index}" for index in range(num_patients)]), images_per_patient)
    logits = rng.normal(0.0, 1.0, (num_patients, 3))[np.repeat(np.arange(num_patients), images_per_patient)]
    logits[np.arange(len(labels)), labels] += 1.2
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities, patients


def test_weighted_auc_with_unit_weights_is_the_trapezoid_area():
    labels, probabilities, _ = scored_split()
    for index in range(3):
        false_positive_rate, true_positive_rate = evaluation.roc_curve(labels == index, probabilities[:, index])
        assert evaluation.roc_auc(labels == index, probabilities[:, index]) == pytest.approx(
            np.trapezoid(true_positive_rate, false_positive_rate))


def test_resampling_draws_patients_not_images():
    patients = np.array(["a", "a", "a", "b", "c", "c"])
    weights = np.concatenate(list(intervals.patient_resample_weights(patients, resamples=300, seed=1)))
    assert weights.shape == (300, 6)
    np.testing.assert_array_equal(weights[:, 0], weights[:, 1])  # A patient's images move together.
    np.testing.assert_array_equal(weights[:, 4], weights[:, 5])
    np.testing.assert_array_equal(weights[:, [0, 3, 4]].sum(axis=1), 3)  # Three patient draws per resample.
    assert (weights[:, 0] == 0).any() and (weights[:, 0] >= 2).any()


def test_bootstrap_intervals_contain_the_estimate_and_repeat_with_the_seed():
    labels, probabilities, patients = scored_split()
    metrics = evaluation.classification_metrics(labels, probabilities, patients)

    for figures in (*metrics["per_class"].values(), metrics["macro"]):
        for metric in evaluation.CLASS_METRICS:
            low, high = figures["intervals"][metric]
            assert low <= figures[metric] <= high and high - low < 0.6
    assert metrics == evaluation.classification_metrics(labels, probabilities, patients)


def test_several_images_of_one_patient_do_not_narrow_the_bootstrap_interval():
    labels, probabilities, patients = scored_split(images_per_patient=1)
    copies_labels, copies_probabilities, copies_patients = scored_split(images_per_patient=4)

    def macro_auc_width(patient_ids, labels, probabilities) -> float:
        metrics = evaluation.classification_metrics(labels, probabilities, patient_ids)
        low, high = metrics["macro"]["intervals"]["roc_auc"]
        return high - low

    by_patient = macro_auc_width(copies_patients, copies_labels, copies_probabilities)
    by_image = macro_auc_width(np.arange(len(copies_labels)), copies_labels, copies_probabilities)
    assert by_patient == pytest.approx(macro_auc_width(patients, labels, probabilities), rel=0.25)
    assert by_image < 0.7 * by_patient  # Counting copies as patients would claim twice the evidence.


def test_degenerate_cases_have_no_interval():
    one_patient = evaluation.classification_metrics(LABELS, probabilities_for(PREDICTED), np.full(10, "p"))
    assert one_patient["macro"]["intervals"] == {metric: None for metric in evaluation.CLASS_METRICS}
    assert one_patient["per_class"]["normal"]["intervals"]["roc_auc"] is None
    assert one_patient["per_class"]["normal"]["intervals"]["sensitivity"] is not None  # Wilson needs no patients.

    absent = evaluation.classification_metrics(np.array([0, 0, 1, 1]), probabilities_for(np.array([0, 1, 1, 1])))
    covid19 = absent["per_class"]["covid19"]
    assert covid19["intervals"]["sensitivity"] is None and covid19["intervals"]["roc_auc"] is None
    assert covid19["intervals"]["ppv"] is None  # Never predicted.
    assert intervals.percentile_interval(np.full(5, np.nan)) is None
    labels, probabilities, patients = scored_split()
    unbootstrapped = evaluation.classification_metrics(labels, probabilities, patients, resamples=0)
    assert unbootstrapped["macro"]["intervals"]["roc_auc"] is None and unbootstrapped["macro"]["roc_auc"] > 0.5


def test_classes_with_fewer_than_30_patients_are_flagged():
    labels, probabilities, patients = scored_split(num_patients=120)  # 40 patients per class.
    keep = (labels != 2) | (np.char.lstrip(patients, "p").astype(int) < 60)  # covid19: 20 patients.
    metrics = evaluation.classification_metrics(labels[keep], probabilities[keep], patients[keep])
    assert [metrics["per_class"][name]["patients"] for name in contract.CLASS_NAMES] == [40, 40, 20]
    assert metrics["too_small_to_conclude"] == ["covid19"]
    rows = {line.split()[0]: line for line in evaluation.format_table({"test": metrics}).splitlines() if line}
    assert "covid19*" in rows and "normal" in rows and "normal*" not in rows


# Prior correction: training saw 80 covid19 examples in 100 (copies), val has 10 in 100.
TRAIN_COUNTS = (10, 10, 80)
VAL_LABELS = np.array([0] * 45 + [1] * 45 + [2] * 10)


def test_prior_correction_undoes_an_over_represented_training_class():
    rule = operating_point.choose_decision_rule(decision_rule.parse_decision_rule("argmax"), VAL_LABELS,
                                                np.full((100, 3), 1 / 3), TRAIN_COUNTS)
    # Smoothed priors: train (11, 11, 81) / 103, val (46, 46, 11) / 103.
    assert rule.train_prior == pytest.approx((11 / 103, 11 / 103, 81 / 103))
    assert rule.target_prior == pytest.approx((46 / 103, 46 / 103, 11 / 103))
    probabilities = np.array([[0.32, 0.28, 0.40],   # covid19 by argmax; normal once corrected.
                              [0.01, 0.01, 0.98]])  # Confident enough to stay covid19.
    weighted = probabilities * np.array([46 / 11, 46 / 11, 11 / 81])
    np.testing.assert_allclose(rule.adjusted(probabilities), weighted / weighted.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(np.argmax(probabilities, axis=1), [2, 2])
    np.testing.assert_array_equal(rule.apply(probabilities), [0, 2])
    np.testing.assert_allclose(export.adjusted_probabilities(rule, tf.constant(probabilities, tf.float32)).numpy(),
                               rule.adjusted(probabilities), rtol=1e-5)
    np.testing.assert_array_equal(export.class_ids(rule, tf.constant(probabilities, tf.float32)).numpy(), [0, 2])


@pytest.mark.parametrize("metric, target", [("sensitivity", 0.95), ("sensitivity", 0.8), ("specificity", 0.9)])
def test_threshold_reaches_the_target_on_val_and_is_the_tightest_that_does(metric, target):
    labels, probabilities, patients = scored_split(num_patients=300)
    spec = decision_rule.parse_decision_rule(f"target:covid19:{metric}:{target}")

    rule = operating_point.choose_decision_rule(spec, labels, probabilities, TRAIN_COUNTS)

    achieved = evaluation.classification_metrics(labels, probabilities, patients, rule)["per_class"]["covid19"]
    assert rule.threshold_class == 2 and achieved[metric] >= target
    # The tightest such threshold: exactly ceil(target · n) val images on the target's side of it.
    scores = rule.adjusted(probabilities)[:, 2]
    if metric == "sensitivity":
        assert (scores[labels == 2] >= rule.threshold).sum() == np.ceil(target * (labels == 2).sum())
    else:
        assert (scores[labels != 2] < rule.threshold).sum() == np.ceil(target * (labels != 2).sum())
    np.testing.assert_array_equal(export.class_ids(rule, tf.constant(probabilities, tf.float32)).numpy(),
                                  rule.apply(probabilities))
    assert decision_rule.DecisionRule.from_json(json.dumps(rule.to_json())) == rule


@pytest.mark.parametrize("text", ["", "max", "target:covid19:sensitivity", "target:flu:sensitivity:0.9",
                                  "target:covid19:recall:0.9", "target:covid19:sensitivity:1.5",
                                  "target:covid19:sensitivity:high"])
def test_bad_decision_rules_name_the_flag(text):
    with pytest.raises(ValueError, match="--decision_rule must be argmax or target:<class>"):
        decision_rule.parse_decision_rule(text)


def test_a_target_val_cannot_set_fails_before_training():
    spec = decision_rule.parse_decision_rule("target:covid19:sensitivity:0.95")
    with pytest.raises(ValueError, match="val has no covid19 examples"):
        operating_point.check_decision_rule(spec, (10, 10, 0))
    operating_point.check_decision_rule(spec, (10, 10, 1))


def test_metrics_follow_the_rule_and_auc_does_not():
    labels, probabilities, patients = scored_split(num_patients=90)
    rule = operating_point.choose_decision_rule(decision_rule.parse_decision_rule("target:covid19:sensitivity:0.95"),
                                                labels, probabilities, TRAIN_COUNTS)
    plain = evaluation.classification_metrics(labels, probabilities, patients)
    ruled = evaluation.classification_metrics(labels, probabilities, patients, rule)
    assert ruled["confusion_matrix"] != plain["confusion_matrix"]
    assert ruled["per_class"]["covid19"]["sensitivity"] >= 0.95 > plain["per_class"]["covid19"]["sensitivity"]
    for name in contract.CLASS_NAMES:
        assert ruled["per_class"][name]["roc_auc"] == plain["per_class"][name]["roc_auc"]
    assert ruled["decision_rule"].startswith("target:covid19:sensitivity:0.95")


class ValOnlyEntry(Mapping):
    """A history entry that fails the test if anything reads a test figure from it."""

    def __init__(self, values: dict):
        self.values = values

    def __getitem__(self, key: str):
        assert not key.startswith("test"), f"model selection read {key}"
        return self.values[key]

    def __iter__(self):
        raise AssertionError("model selection iterated over every key, test ones included")

    def __len__(self) -> int:
        return len(self.values)


def test_best_epoch_is_chosen_on_val_and_never_reads_test():
    history = [ValOnlyEntry({"stage": stage, "epoch": epoch, "val_macro_roc_auc": val, "test_macro_roc_auc": test})
               for stage, epoch, val, test in ((1, 1, 0.95, 0.5), (2, 2, 0.70, 0.99), (2, 3, 0.80, 0.60),
                                               (2, 4, 0.80, 0.70))]
    assert evaluation.select_best_epoch(history)["epoch"] == 1
    assert evaluation.select_best_epoch(history, stage=2)["epoch"] == 3  # Earliest of the tied best.
    plain = [dict(entry.values, val_loss=1.0 / entry["epoch"]) for entry in history]
    assert evaluation.select_best_epoch(plain, "loss", maximize=False)["epoch"] == 4
    with pytest.raises(ValueError, match="no epoch of stage 3 in the history has val_macro_roc_auc"):
        evaluation.select_best_epoch(history, stage=3)


def test_write_report_records_the_rule(tmp_path):
    labels, probabilities, patients = scored_split()
    rule = operating_point.choose_decision_rule(decision_rule.parse_decision_rule("argmax"), labels,
                                                probabilities, TRAIN_COUNTS)
    results = {"val": evaluation.SplitPredictions(labels, probabilities, np.full(len(labels), "rsna"), patients)}
    metrics = evaluation.write_report(str(tmp_path), results, rule)
    with open(tmp_path / evaluation.DECISION_RULE_FILE) as handle:
        assert decision_rule.DecisionRule.from_json(json.load(handle)) == rule
    assert metrics["val"]["decision_rule"] == rule.describe()
