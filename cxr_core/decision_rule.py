"""The decision rule: from predicted probabilities to one class, as serving applies it.

Prior correction (logit adjustment). The model learns the class mix it is trained
on, and the offline copies set that mix (covid19 ×30 makes COVID-19 about a quarter
of the training examples where it is about 2% of val and test), so an argmax over
its probabilities over-calls the over-represented class. Bayes' rule moves them to
another mix: p_adjusted(c) ∝ p(c) · prior_target(c) / prior_train(c), i.e. adding
log(prior_target / prior_train) to the logits (Menon et al., "Long-tail learning via
logit adjustment", ICLR 2021). Priors are smoothed by one pseudo-example per class,
so a class missing from val is down-weighted, not erased.

`--decision_rule` is parsed by `parse_decision_rule`:
- `argmax`: the class with the highest prior-corrected probability;
- `target:<class>:sensitivity:<value>` (or `specificity`): that class is predicted
  when its corrected probability reaches a threshold, otherwise the argmax of the
  other classes.
A `DecisionRule` is JSON-serialisable (priors, threshold, spec) and applied with
`apply` in NumPy; `trainer.evaluation.operating_point` fits it on val, and
`serving.export` applies it with TensorFlow ops inside an exported model.
"""


import dataclasses
import json

import numpy as np

from cxr_core import contract

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


def class_prior(class_counts: tuple[int, ...] | np.ndarray) -> tuple[float, ...]:
    """Class frequencies, smoothed by `PRIOR_PSEUDO_COUNT` per class."""
    counts = np.asarray(class_counts, dtype=np.float64) + PRIOR_PSEUDO_COUNT
    return tuple(float(value) for value in counts / counts.sum())


def prior_corrected(probabilities: np.ndarray, train_prior: tuple[float, ...],
                    target_prior: tuple[float, ...]) -> np.ndarray:
    """p · target_prior / train_prior, renormalised: the probabilities under the target class mix."""
    weighted = np.asarray(probabilities, dtype=np.float64) * (np.asarray(target_prior) / np.asarray(train_prior))
    return weighted / weighted.sum(axis=-1, keepdims=True)
