"""Fitting the decision rule (`cxr_core.decision_rule`) on val only.

The training prior counts every training example, offline copies included; the
target prior is the val class mix, the best estimate of the data the model will meet
(a site whose prevalence differs should say so). A target threshold is chosen on val
as the tightest one that meets the target there, so test and serving use exactly the
rule chosen on val. ROC-AUC does not depend on the rule; the confusion matrix and
every rate do.
"""

import dataclasses
import math

import numpy as np

from cxr_core import contract
from cxr_core.decision_rule import ARGMAX, TARGET, DecisionRule, DecisionSpec, class_prior


def check_decision_rule(spec: DecisionSpec, val_class_counts: tuple[int, ...]) -> None:
    """Raises ValueError before training when val cannot set the rule (the target needs its class and others)."""
    if spec.kind != TARGET:
        return
    index = contract.CLASS_IDS[spec.class_name]
    in_class = val_class_counts[index]
    if not (in_class if spec.metric == "sensitivity" else sum(val_class_counts) - in_class):
        group = spec.class_name if spec.metric == "sensitivity" else f"classes other than {spec.class_name}"
        raise ValueError(f"--decision_rule {spec}: val has no {group} examples to set the threshold on")


def choose_decision_rule(spec: DecisionSpec, val_labels: np.ndarray, val_probabilities: np.ndarray,
                         train_class_counts: tuple[int, ...]) -> DecisionRule:
    """The rule `spec` asks for, fitted on val predictions only (never on test).

    The target prior is val's class mix. A target threshold is the tightest one that
    meets the target rate on val, placed halfway between two val scores so that no
    val image sits on it (float32 serving and float64 evaluation then agree).
    """
    val_labels = np.asarray(val_labels)
    train_prior = class_prior(train_class_counts)
    target_prior = class_prior(np.bincount(val_labels, minlength=contract.NUM_CLASSES))
    rule = DecisionRule(str(spec), train_prior, target_prior)
    if spec.kind == ARGMAX:
        return rule
    check_decision_rule(spec, tuple(np.bincount(val_labels, minlength=contract.NUM_CLASSES).tolist()))
    index = contract.CLASS_IDS[spec.class_name]
    scores = rule.adjusted(val_probabilities)[:, index]
    if spec.metric == "sensitivity":
        # At or below the k-th highest positive score, k = ceil(target · positives): k positives reach it.
        positives = np.sort(scores[val_labels == index])[::-1]
        boundary = positives[math.ceil(spec.target * len(positives) - 1e-9) - 1]
        neighbours = scores[scores < boundary]
        threshold = (boundary + neighbours.max()) / 2 if neighbours.size else boundary
    else:
        # Above the k-th lowest negative score, k = ceil(target · negatives): k negatives stay below it.
        negatives = np.sort(scores[val_labels != index])
        boundary = negatives[math.ceil(spec.target * len(negatives) - 1e-9) - 1]
        neighbours = scores[scores > boundary]
        threshold = (boundary + neighbours.min()) / 2 if neighbours.size else np.nextafter(boundary, np.inf)
    return dataclasses.replace(rule, threshold_class=index, threshold=float(threshold))
