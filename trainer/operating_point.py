"""The decision rule: from predicted probabilities to one class, chosen on val only.

Prior correction (logit adjustment). The model learns the class mix it is trained
on, and the offline copies set that mix (covid19 ×30 makes COVID-19 about a quarter
of the training examples where it is about 2% of val and test), so an argmax over
its probabilities over-calls the over-represented class. Bayes' rule moves them to
another mix: p_adjusted(c) ∝ p(c) · prior_target(c) / prior_train(c), i.e. adding
log(prior_target / prior_train) to the logits (Menon et al., "Long-tail learning via
logit adjustment", ICLR 2021). The training prior counts every training example,
offline copies included; the target prior is the val class mix, the best estimate of
the data the model will meet (a site whose prevalence differs should say so).
Priors are smoothed by one pseudo-example per class, so a class missing from val is
down-weighted, not erased.

Operating point. `--decision_rule` is parsed by `parse_decision_rule`:
- `argmax`: the class with the highest prior-corrected probability;
- `target:<class>:sensitivity:<value>` (or `specificity`): that class is predicted
  when its corrected probability reaches a threshold, chosen on val as the highest
  one that meets the target there; otherwise the argmax of the other classes.
The result is a `DecisionRule`: JSON-serialisable (priors, threshold, spec), applied
with `apply` in NumPy and with `tf_adjusted_probabilities` / `tf_class_ids` inside an
exported model, so test and serving use exactly the rule chosen on val. ROC-AUC does
not depend on the rule; the confusion matrix and every rate do.
"""

import dataclasses
import json
import math

import numpy as np
import tensorflow as tf

from beam_pipelines import contract

ARGMAX = "argmax"
TARGET = "target"
TARGET_METRICS = ("sensitivity", "specificity")
PRIOR_PSEUDO_COUNT = 1.0


@dataclasses.dataclass(frozen=True)
class DecisionSpec:
    """A parsed `--decision_rule`: argmax, or a target rate for one class."""

    kind: str
    class_name: str | None = None
    metric: str | None = None
    target: float | None = None

    def __str__(self) -> str:
        if self.kind == ARGMAX:
            return ARGMAX
        return f"{TARGET}:{self.class_name}:{self.metric}:{self.target:g}"


@dataclasses.dataclass(frozen=True)
class DecisionRule:
    """Prior correction plus, optionally, one class's threshold; everything serving needs to apply it."""

    spec: str
    train_prior: tuple[float, ...]
    target_prior: tuple[float, ...]
    threshold_class: int | None = None
    threshold: float | None = None

    @property
    def log_prior_ratio(self) -> np.ndarray:
        """What prior correction adds to each class's logit."""
        return np.log(np.asarray(self.target_prior)) - np.log(np.asarray(self.train_prior))

    def adjusted(self, probabilities: np.ndarray) -> np.ndarray:
        """Prior-corrected probabilities [N, classes], rows summing to 1."""
        return prior_corrected(probabilities, self.train_prior, self.target_prior)

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Class ids [N] of model probabilities [N, classes]."""
        adjusted = self.adjusted(probabilities)
        if self.threshold_class is None:
            return np.argmax(adjusted, axis=-1)
        others = adjusted.copy()
        others[:, self.threshold_class] = -np.inf
        return np.where(adjusted[:, self.threshold_class] >= self.threshold, self.threshold_class,
                        np.argmax(others, axis=-1))

    def tf_adjusted_probabilities(self, probabilities: tf.Tensor) -> tf.Tensor:
        """`adjusted` in TensorFlow ops, for an exported serving signature."""
        logits = tf.math.log(tf.maximum(tf.cast(probabilities, tf.float32), np.finfo(np.float32).tiny))
        return tf.nn.softmax(logits + tf.constant(self.log_prior_ratio, tf.float32), axis=-1)

    def tf_class_ids(self, probabilities: tf.Tensor) -> tf.Tensor:
        """`apply` in TensorFlow ops: int64 class ids [N] of model probabilities [N, classes]."""
        adjusted = self.tf_adjusted_probabilities(probabilities)
        if self.threshold_class is None:
            return tf.argmax(adjusted, axis=-1)
        is_thresholded = tf.one_hot(self.threshold_class, len(self.train_prior), on_value=True, off_value=False)
        others = tf.where(is_thresholded, tf.constant(-np.inf, tf.float32), adjusted)
        return tf.where(adjusted[:, self.threshold_class] >= self.threshold,
                        tf.constant(self.threshold_class, tf.int64), tf.argmax(others, axis=-1))

    def describe(self) -> str:
        """One line for reports: what decides the class."""
        names = contract.CLASS_NAMES
        if self.threshold_class is None:
            return f"{self.spec}: argmax after prior correction (train class mix to val class mix)"
        return (f"{self.spec}: {names[self.threshold_class]} when its prior-corrected probability is "
                f">= {self.threshold:.4g} (set on val), else the argmax of the other classes")

    def to_json(self) -> dict:
        """A JSON object; `from_json` reads it back."""
        return {**dataclasses.asdict(self), "train_prior": list(self.train_prior),
                "target_prior": list(self.target_prior), "classes": list(contract.CLASS_NAMES)}

    @classmethod
    def from_json(cls, value: dict | str) -> "DecisionRule":
        value = json.loads(value) if isinstance(value, str) else value
        if value.get("classes", list(contract.CLASS_NAMES)) != list(contract.CLASS_NAMES):
            raise ValueError(f"the rule is for classes {value['classes']}, this model has {list(contract.CLASS_NAMES)}")
        return cls(spec=value["spec"], train_prior=tuple(value["train_prior"]),
                   target_prior=tuple(value["target_prior"]), threshold_class=value.get("threshold_class"),
                   threshold=value.get("threshold"))


def parse_decision_rule(text: str) -> DecisionSpec:
    """`argmax` or `target:<class>:<sensitivity|specificity>:<value in (0, 1)>`.

    Raises:
      ValueError: the text is neither; the message names --decision_rule.
    """
    usage = (f"--decision_rule must be {ARGMAX} or {TARGET}:<class>:<{'|'.join(TARGET_METRICS)}>:<value in (0, 1)> "
             f"with class one of {', '.join(contract.CLASS_NAMES)}, e.g. {TARGET}:covid19:sensitivity:0.95; "
             f"got {text!r}")
    parts = text.strip().split(":")
    if parts == [ARGMAX]:
        return DecisionSpec(ARGMAX)
    if len(parts) != 4 or parts[0] != TARGET or parts[1] not in contract.CLASS_IDS or parts[2] not in TARGET_METRICS:
        raise ValueError(usage)
    try:
        target = float(parts[3])
    except ValueError:
        raise ValueError(usage) from None
    if not 0.0 < target < 1.0:
        raise ValueError(usage)
    return DecisionSpec(TARGET, parts[1], parts[2], target)


def check_decision_rule(spec: DecisionSpec, val_class_counts: tuple[int, ...]) -> None:
    """Raises ValueError before training when val cannot set the rule (the target needs its class and others)."""
    if spec.kind != TARGET:
        return
    index = contract.CLASS_IDS[spec.class_name]
    in_class = val_class_counts[index]
    if not (in_class if spec.metric == "sensitivity" else sum(val_class_counts) - in_class):
        group = spec.class_name if spec.metric == "sensitivity" else f"classes other than {spec.class_name}"
        raise ValueError(f"--decision_rule {spec}: val has no {group} examples to set the threshold on")


def class_prior(class_counts: tuple[int, ...] | np.ndarray) -> tuple[float, ...]:
    """Class frequencies, smoothed by `PRIOR_PSEUDO_COUNT` per class."""
    counts = np.asarray(class_counts, dtype=np.float64) + PRIOR_PSEUDO_COUNT
    return tuple(float(value) for value in counts / counts.sum())


def prior_corrected(probabilities: np.ndarray, train_prior: tuple[float, ...],
                    target_prior: tuple[float, ...]) -> np.ndarray:
    """p · target_prior / train_prior, renormalised: the probabilities under the target class mix."""
    weighted = np.asarray(probabilities, dtype=np.float64) * (np.asarray(target_prior) / np.asarray(train_prior))
    return weighted / weighted.sum(axis=-1, keepdims=True)


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
