"""The evaluation figures against values worked out by hand and against scikit-learn on random inputs."""

import json

import numpy as np
import pytest
import sklearn.exceptions
import sklearn.metrics
from scored_splits import probabilities_for, scored_split

from cxr_core import contract, decision_rule
from trainer.evaluation import metrics as metrics_lib
from trainer.evaluation import operating_point

# True classes and predictions; the confusion matrix [true, predicted] is
#   [[3, 1, 0],
#    [0, 2, 1],
#    [1, 0, 2]]
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PREDICTED = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])
TRAIN_COUNTS = (10, 10, 80)




def random_split(seed: int, size: int, ties: bool):
    """Random labels and probabilities (rounded to two decimals, so with many ties, when `ties`)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size)
    logits = rng.normal(0.0, 1.0, (size, 3))
    logits[np.arange(size), labels] += rng.uniform(0.0, 2.0)
    probabilities = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    return labels, np.round(probabilities, 2) if ties else probabilities


def test_per_class_and_macro_figures_match_the_hand_computed_matrix():
    metrics = metrics_lib.classification_metrics(LABELS, probabilities_for(PREDICTED))

    assert metrics.num_examples == 10
    assert metrics.accuracy.value == pytest.approx(7 / 10)
    assert metrics.confusion_matrix == ((3, 1, 0), (0, 2, 1), (1, 0, 2))
    normal, pneumonia, covid19 = (metrics.per_class[name] for name in ("normal", "pneumonia", "covid19"))
    # normal: TP 3, FN 1, FP 1, TN 5.
    assert normal.support == 4
    assert normal.sensitivity.value == pytest.approx(3 / 4)
    assert normal.ppv.value == pytest.approx(3 / 4)
    assert normal.specificity.value == pytest.approx(5 / 6)
    assert normal.f1.value == pytest.approx(3 / 4)
    # pneumonia and covid19: TP 2, FN 1, FP 1, TN 6.
    for figures in (pneumonia, covid19):
        assert figures.support == 3
        assert figures.sensitivity.value == pytest.approx(2 / 3)
        assert figures.ppv.value == pytest.approx(2 / 3)
        assert figures.specificity.value == pytest.approx(6 / 7)
        assert figures.f1.value == pytest.approx(2 / 3)
    # normal's scores: positives 0.8, 0.8, 0.8, 0.1; negatives five 0.1 and one 0.8.
    # Each 0.8 positive beats 5 negatives and ties 1 (5.5 wins); the 0.1 positive ties 5 (2.5).
    assert normal.roc_auc.value == pytest.approx((3 * 5.5 + 2.5) / (4 * 6))
    assert metrics.macro.sensitivity.value == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert metrics.macro.specificity.value == pytest.approx((5 / 6 + 6 / 7 + 6 / 7) / 3)
    assert metrics.macro.roc_auc.value == pytest.approx(
        np.mean([figures.roc_auc.value for figures in (normal, pneumonia, covid19)]))
    # Wilson 2/3 for covid19's sensitivity; every class has fewer than 30 patients.
    assert covid19.sensitivity.interval == pytest.approx((0.2077, 0.9385), abs=5e-5)
    assert metrics.too_small_to_conclude == list(contract.CLASS_NAMES)


def test_a_class_never_predicted_has_undefined_ppv_and_zero_f1():
    labels = np.array([0, 1, 2, 2])
    metrics = metrics_lib.classification_metrics(labels, probabilities_for(np.array([0, 1, 1, 1])))
    covid19 = metrics.per_class["covid19"]
    assert (covid19.sensitivity.value, covid19.ppv.value, covid19.f1.value) == (0.0, None, 0.0)
    assert covid19.specificity.value == 1.0
    assert metrics.macro.ppv.value == pytest.approx((1.0 + 1 / 3) / 2)  # Over the defined values.


def test_a_class_absent_from_the_split_has_undefined_sensitivity_and_auc():
    labels = np.array([0, 0, 1, 1])
    metrics = metrics_lib.classification_metrics(labels, probabilities_for(np.array([0, 1, 1, 2])))
    covid19 = metrics.per_class["covid19"]
    assert covid19.support == 0
    assert (covid19.sensitivity.value, covid19.ppv.value, covid19.f1.value, covid19.roc_auc.value) == (
        None, 0.0, 0.0, None)
    assert covid19.specificity.value == pytest.approx(3 / 4)


@pytest.mark.parametrize("seed, size, ties", [(0, 50, False), (1, 50, True), (2, 700, False), (3, 700, True),
                                              (4, 5000, True)])
def test_figures_match_scikit_learn_on_random_inputs(seed, size, ties):
    labels, probabilities = random_split(seed, size, ties)
    predicted = np.argmax(probabilities, axis=1)

    metrics = metrics_lib.classification_metrics(labels, probabilities, resamples=0)

    classes = [0, 1, 2]
    np.testing.assert_array_equal(metrics.confusion_matrix,
                                  sklearn.metrics.confusion_matrix(labels, predicted, labels=classes))
    assert metrics.accuracy.value == pytest.approx(sklearn.metrics.accuracy_score(labels, predicted), abs=1e-15)
    by_class = {
        "sensitivity": sklearn.metrics.recall_score(labels, predicted, labels=classes, average=None,
                                                    zero_division=np.nan),
        "ppv": sklearn.metrics.precision_score(labels, predicted, labels=classes, average=None, zero_division=np.nan),
        "specificity": [sklearn.metrics.recall_score(labels != index, predicted != index) for index in classes],
        "f1": sklearn.metrics.f1_score(labels, predicted, labels=classes, average=None, zero_division=np.nan),
        "roc_auc": [sklearn.metrics.roc_auc_score(labels == index, probabilities[:, index]) for index in classes],
    }
    for metric, expected in by_class.items():
        ours = [np.nan if figures.estimates()[metric].value is None else figures.estimates()[metric].value
                for figures in metrics.per_class.values()]
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-15, err_msg=metric)
        assert metrics.macro.estimates()[metric].value == pytest.approx(np.nanmean(expected), abs=1e-15)


def test_undefined_figures_are_where_scikit_learn_has_no_value():
    labels = np.array([0, 0, 1, 1, 0, 1])  # No covid19 image; covid19 never predicted.
    probabilities = probabilities_for(np.array([0, 1, 1, 0, 0, 1]))

    metrics = metrics_lib.classification_metrics(labels, probabilities, resamples=0)

    predicted = np.argmax(probabilities, axis=1)
    recall = sklearn.metrics.recall_score(labels, predicted, labels=[0, 1, 2], average=None, zero_division=np.nan)
    precision = sklearn.metrics.precision_score(labels, predicted, labels=[0, 1, 2], average=None,
                                                zero_division=np.nan)
    assert np.isnan(recall[2]) and metrics.per_class["covid19"].sensitivity.value is None
    assert np.isnan(precision[2]) and metrics.per_class["covid19"].ppv.value is None
    with pytest.warns(sklearn.exceptions.UndefinedMetricWarning):
        assert np.isnan(sklearn.metrics.roc_auc_score(labels == 2, probabilities[:, 2]))
    assert metrics.per_class["covid19"].roc_auc.value is None


def test_roc_curve_runs_from_origin_to_one_one():
    false_positive_rate, true_positive_rate = metrics_lib.roc_curve(
        np.array([True, False, True, False]), np.array([0.9, 0.7, 0.7, 0.1]))
    np.testing.assert_allclose(false_positive_rate, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(true_positive_rate, [0.0, 0.5, 1.0, 1.0])


def test_roc_curve_of_an_absent_class_is_flat_rather_than_undefined():
    false_positive_rate, true_positive_rate = metrics_lib.roc_curve(np.zeros(3, bool), np.array([0.2, 0.5, 0.5]))
    np.testing.assert_allclose(false_positive_rate, [0.0, 2 / 3, 1.0])
    np.testing.assert_array_equal(true_positive_rate, [0.0, 0.0, 0.0])


@pytest.mark.parametrize("ties", [False, True])
def test_roc_curve_encloses_the_reported_auc(ties):
    labels, probabilities = random_split(5, 400, ties)
    for index, figures in enumerate(metrics_lib.classification_metrics(labels, probabilities,
                                                                       resamples=0).per_class.values()):
        false_positive_rate, true_positive_rate = metrics_lib.roc_curve(labels == index, probabilities[:, index])
        assert figures.roc_auc.value == pytest.approx(np.trapezoid(true_positive_rate, false_positive_rate),
                                                      abs=1e-12)


def test_a_class_recognised_by_its_source_scores_chance_within_the_source():
    # Source "covid" holds every covid19 image plus normal and pneumonia ones; "rsna" has
    # no covid19. The covid19 score is 0.6 for every covid-source image and 0.2 elsewhere:
    # it tells the sources apart and nothing else.
    labels = np.array([0, 1, 0, 1, 2, 2, 2, 0, 1])
    sources = np.array(["rsna"] * 4 + ["covid"] * 5)
    covid_score = np.where(sources == "covid", 0.6, 0.2)
    probabilities = np.stack([(1 - covid_score) / 2, (1 - covid_score) / 2, covid_score], axis=-1)

    metrics = metrics_lib.split_metrics(metrics_lib.SplitPredictions(labels, probabilities, sources))

    assert metrics.overall.per_class["covid19"].roc_auc.value == pytest.approx(5 / 6)  # Beats every rsna image.
    assert list(metrics.by_source) == ["covid", "rsna"]
    within_covid = metrics.by_source["covid"]
    assert within_covid.num_examples == 5
    assert within_covid.per_class["covid19"].roc_auc.value == pytest.approx(0.5)
    assert within_covid.confusion_matrix == ((0, 0, 1), (0, 0, 1), (0, 0, 3))
    assert metrics.by_source["rsna"].per_class["covid19"].roc_auc.value is None  # No covid19 there.


def test_bootstrap_intervals_contain_the_estimate_and_repeat_with_the_seed():
    labels, probabilities, patients = scored_split()
    metrics = metrics_lib.classification_metrics(labels, probabilities, patients)

    for figures in (*metrics.per_class.values(), metrics.macro):
        for estimate in figures.estimates().values():
            low, high = estimate.interval
            assert low <= estimate.value <= high and high - low < 0.6
    assert metrics == metrics_lib.classification_metrics(labels, probabilities, patients)
    assert metrics != metrics_lib.classification_metrics(labels, probabilities, patients, seed=1)


def test_several_images_of_one_patient_do_not_narrow_the_bootstrap_interval():
    labels, probabilities, patients = scored_split(images_per_patient=1)
    copies_labels, copies_probabilities, copies_patients = scored_split(images_per_patient=4)

    def macro_auc_width(patient_ids, labels, probabilities) -> float:
        low, high = metrics_lib.classification_metrics(labels, probabilities, patient_ids).macro.roc_auc.interval
        return high - low

    by_patient = macro_auc_width(copies_patients, copies_labels, copies_probabilities)
    by_image = macro_auc_width(np.arange(len(copies_labels)), copies_labels, copies_probabilities)
    assert by_patient == pytest.approx(macro_auc_width(patients, labels, probabilities), rel=0.25)
    assert by_image < 0.7 * by_patient  # Counting copies as patients would claim twice the evidence.


def test_degenerate_cases_have_no_interval():
    one_patient = metrics_lib.classification_metrics(LABELS, probabilities_for(PREDICTED), np.full(10, "p"))
    assert [estimate.interval for estimate in one_patient.macro.estimates().values()] == [None] * 5
    assert one_patient.per_class["normal"].roc_auc.interval is None
    assert one_patient.per_class["normal"].sensitivity.interval is not None  # Wilson needs no patients.

    absent = metrics_lib.classification_metrics(np.array([0, 0, 1, 1]), probabilities_for(np.array([0, 1, 1, 1])))
    covid19 = absent.per_class["covid19"]
    assert covid19.sensitivity.interval is None and covid19.roc_auc.interval is None
    assert covid19.ppv.interval is None  # Never predicted.
    labels, probabilities, patients = scored_split()
    unbootstrapped = metrics_lib.classification_metrics(labels, probabilities, patients, resamples=0)
    assert unbootstrapped.macro.roc_auc.interval is None and unbootstrapped.macro.roc_auc.value > 0.5


def test_classes_with_fewer_than_30_patients_are_flagged():
    labels, probabilities, patients = scored_split(num_patients=120)  # 40 patients per class.
    keep = (labels != 2) | (np.char.lstrip(patients, "p").astype(int) < 60)  # covid19: 20 patients.
    metrics = metrics_lib.classification_metrics(labels[keep], probabilities[keep], patients[keep])
    assert [metrics.per_class[name].patients for name in contract.CLASS_NAMES] == [40, 40, 20]
    assert [metrics.per_class[name].too_small for name in contract.CLASS_NAMES] == [False, False, True]
    assert metrics.too_small_to_conclude == ["covid19"]


def test_metrics_follow_the_rule_and_auc_does_not():
    labels, probabilities, patients = scored_split(num_patients=90)
    rule = operating_point.choose_decision_rule(decision_rule.parse_decision_rule("target:covid19:sensitivity:0.95"),
                                                labels, probabilities, TRAIN_COUNTS)
    plain = metrics_lib.classification_metrics(labels, probabilities, patients)
    ruled = metrics_lib.classification_metrics(labels, probabilities, patients, rule)
    assert ruled.confusion_matrix != plain.confusion_matrix
    assert ruled.per_class["covid19"].sensitivity.value >= 0.95 > plain.per_class["covid19"].sensitivity.value
    for name in contract.CLASS_NAMES:
        assert ruled.per_class[name].roc_auc == plain.per_class[name].roc_auc
    assert ruled.decision_rule.startswith("target:covid19:sensitivity:0.95")
    assert plain.decision_rule == metrics_lib.UNCORRECTED_ARGMAX


def key_tree(value):
    """The keys of nested dicts, in order, with leaves replaced by their JSON type."""
    if isinstance(value, dict):
        return [(key, key_tree(item)) for key, item in value.items()]
    return type(value).__name__


FIGURE_KEYS = ["sensitivity", "ppv", "specificity", "f1", "roc_auc"]


def test_to_json_has_the_structure_metrics_json_readers_expect():
    labels, probabilities, patients = scored_split()
    sources = np.where(np.arange(len(labels)) % 2, "rsna", "covid")
    metrics = metrics_lib.split_metrics(metrics_lib.SplitPredictions(labels, probabilities, sources, patients),
                                        resamples=20)
    document = json.loads(json.dumps(metrics.to_json()))

    figures = [*[(key, "float") for key in FIGURE_KEYS],
               ("intervals", [(key, "list") for key in FIGURE_KEYS])]
    metrics_keys = [("num_examples", "int"), ("num_patients", "int"), ("accuracy", "float"),
                    ("intervals", [("accuracy", "list")]),
                    ("per_class", [(name, [("support", "int"), ("patients", "int"), ("too_small", "bool"), *figures])
                                   for name in contract.CLASS_NAMES]),
                    ("macro", figures), ("confusion_matrix", "list"), ("too_small_to_conclude", "list"),
                    ("decision_rule", "str")]
    assert key_tree(document) == [*metrics_keys, ("by_source", [("covid", metrics_keys), ("rsna", metrics_keys)])]
    assert document["confusion_matrix"] == [[int(count) for count in row] for row in
                                            sklearn.metrics.confusion_matrix(labels, np.argmax(probabilities, 1))]
    assert document["per_class"]["normal"]["intervals"]["roc_auc"] == list(
        metrics.overall.per_class["normal"].roc_auc.interval)
    assert document["by_source"]["rsna"]["accuracy"] == metrics.by_source["rsna"].accuracy.value


def test_undefined_figures_are_null_in_json():
    absent = metrics_lib.classification_metrics(np.array([0, 0, 1, 1]), probabilities_for(np.array([0, 1, 1, 1])),
                                                resamples=0).to_json()
    covid19 = absent["per_class"]["covid19"]
    assert (covid19["sensitivity"], covid19["ppv"], covid19["roc_auc"]) == (None, None, None)
    assert covid19["intervals"]["sensitivity"] is None and covid19["intervals"]["f1"] is None
    assert absent["macro"]["intervals"] == {key: None for key in FIGURE_KEYS}
    assert "null" in json.dumps(absent)
