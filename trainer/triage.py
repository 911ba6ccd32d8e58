"""Operating points that serve triage: what a rule's figures on val promise, and the sensitivity floors.

A triage tool exists to catch the rare class; a rule that reaches a good macro figure by
missing half of the COVID-19 patients fails at the one job it has. Prior correction toward
val's class mix does exactly that when COVID-19 is rare there (it moves the decisions
toward the frequent classes). So every evaluation shows, on val and on test, the
confusion matrix at the chosen rule beside the one at the plain argmax, and each class's
sensitivity at the rule with its Wilson interval: a target rule
(`target:covid19:sensitivity:0.95`) reaches its target on val by construction, and the
interval's lower bound is what val can promise for new patients (with 40 COVID-19
patients, 0.95 [0.84–0.99]).

`--min_sensitivity` sets a floor per class (default covid19=0.9): when the chosen rule's
sensitivity on val is below it, the report opens with a warning. The floor is checked
on val because val chose the rule; test only reports.
"""

import dataclasses
from collections.abc import Mapping

from cxr_core import contract
from trainer.metrics import ClassificationMetrics, Estimate

DEFAULT_MIN_SENSITIVITY = "covid19=0.9"
CELL_WIDTH = 10


@dataclasses.dataclass(frozen=True)
class FloorCheck:
    """One class's sensitivity on val at the chosen rule against its floor."""

    class_name: str
    floor: float
    sensitivity: Estimate

    @property
    def below(self) -> bool:
        return self.sensitivity.value is not None and self.sensitivity.value < self.floor

    def warning(self) -> str:
        return (f"the decision rule's val sensitivity for {self.class_name} is {_text(self.sensitivity)}, below the "
                f"floor {self.floor:g} (--min_sensitivity): it misses patients a triage tool must catch; consider "
                f"--decision_rule target:{self.class_name}:sensitivity:{self.floor:g}")


def parse_min_sensitivity(text: str) -> dict[str, float]:
    """`covid19=0.9,pneumonia=0.8` → {class: floor}; an empty text sets no floor.

    Raises:
      ValueError: not class=value pairs with a known class and a value in (0, 1]; the message names the flag.
    """
    floors = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = pair.partition("=")
        try:
            floor = float(value)
        except ValueError:
            floor = float("nan")
        if not equals or name.strip() not in contract.CLASS_IDS or not 0.0 < floor <= 1.0:
            raise ValueError(f"--min_sensitivity must be class=value pairs with class one of "
                             f"{', '.join(contract.CLASS_NAMES)} and value in (0, 1], e.g. {DEFAULT_MIN_SENSITIVITY}; "
                             f"got {pair!r}")
        floors[name.strip()] = floor
    return floors


def check_floors(val: ClassificationMetrics, floors: Mapping[str, float]) -> list[FloorCheck]:
    """Each floored class's val sensitivity at the rule `val` was scored under."""
    return [FloorCheck(name, floor, val.per_class[name].sensitivity) for name, floor in floors.items()]


def format_operating_points(at_rule: Mapping[str, ClassificationMetrics],
                            at_argmax: Mapping[str, ClassificationMetrics], checks: list[FloorCheck]) -> str:
    """The val promise and the floors; per set, the confusion matrices at the rule and at the plain argmax."""
    names = contract.CLASS_NAMES
    lines = [f"Operating point: {next(iter(at_rule.values())).decision_rule}" if at_rule else "Operating point"]
    if "val" in at_rule:
        lines.append("  val sensitivity at the rule (the lower bound is what val can promise for new patients): "
                     + ", ".join(f"{column} {_text(at_rule['val'].per_class[column].sensitivity)}" for column in names))
    lines += [f"  {check.class_name}: floor {check.floor:g} (--min_sensitivity)"
              f"{', NOT MET on val' if check.below else ', met on val'}" for check in checks]
    for name, rule_metrics in at_rule.items():
        argmax_metrics = at_argmax[name]
        header = (f"{name + ' (true / predicted)':<24}" + "".join(f"{column:>{CELL_WIDTH}}" for column in names)
                  + "   |" + "".join(f"{column:>{CELL_WIDTH}}" for column in names))
        lines += ["", f"{'':<24}{'at the rule':^{CELL_WIDTH * len(names)}}   |{'at argmax':^{CELL_WIDTH * len(names)}}",
                  header]
        for index, row_name in enumerate(names):
            lines.append(f"{row_name:<24}" + "".join(f"{count:>{CELL_WIDTH}}"
                                                     for count in rule_metrics.confusion_matrix[index])
                         + "   |" + "".join(f"{count:>{CELL_WIDTH}}" for count in argmax_metrics.confusion_matrix[index]))
        lines.append(f"{'sensitivity':<24}" + "".join(
            f"{_point(rule_metrics.per_class[column].sensitivity):>{CELL_WIDTH}}" for column in names) + "   |" + "".join(
            f"{_point(argmax_metrics.per_class[column].sensitivity):>{CELL_WIDTH}}" for column in names))
    return "\n".join(lines)


def _point(estimate: Estimate) -> str:
    return "n/a" if estimate.value is None else f"{estimate.value:.2f}"


def _text(estimate: Estimate) -> str:
    if estimate.value is None:
        return "n/a"
    if estimate.interval is None:
        return f"{estimate.value:.2f}"
    return f"{estimate.value:.2f} [{estimate.interval[0]:.2f}–{estimate.interval[1]:.2f}]"
