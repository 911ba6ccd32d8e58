"""The decision rule: prior correction and a target threshold, chosen on val."""

import json

import numpy as np
import pytest
import tensorflow as tf
from scored_splits import scored_split

from cxr_core import decision_rule
from serving import export
from trainer.evaluation import metrics as metrics_lib
from trainer.evaluation import operating_point

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

    achieved = metrics_lib.classification_metrics(labels, probabilities, patients, rule).per_class["covid19"]
    assert rule.threshold_class == 2 and getattr(achieved, metric).value >= target
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
