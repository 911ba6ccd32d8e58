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
on val because val chose the rule; test only reports. A floor reached on val is also
checked against its interval: a rule that finds 18 of 18 val COVID-19 images reaches a
0.9 floor, but 18 images cannot show it (1.00 [0.82–1.00]); it takes 35, all found. Such
a floor is reported as met but not shown, with the number of images that would show it:
on real-cxr, 18–22 val COVID-19 images, a target of 0.95 set on val caught 0.81–0.97 of
the test images over three patient keys.

The default rule is `DEFAULT_DECISION_RULE`, a COVID-19 sensitivity target, from measurement
(README, "Reading the evaluation"): on real-cxr (COVID-19 copied ×4 in train, 11% of val)
the prior-corrected argmax caught 13 of 22 val and 18 of 29 test COVID-19 images (0.59 and
0.62), the target 21 of 22 and 26 of 29 (0.95 and 0.90), for COVID-19 PPV 0.81 and 0.72
instead of 0.93 and 1.00; on the demo's data, whose classes are balanced, both catch 0.95 or
more. A data set whose val split holds no COVID-19 cannot set it: pass `--decision_rule argmax`.
"""

import dataclasses
from collections.abc import Iterable, Mapping

from cxr_core import contract
from cxr_core.decision_rule import TARGET
from trainer.evaluation import intervals
from trainer.evaluation.metrics import ClassificationMetrics, Estimate

DEFAULT_DECISION_RULE = f"{TARGET}:covid19:sensitivity:0.95"
DEFAULT_MIN_SENSITIVITY = "covid19=0.9"
CELL_WIDTH = 10


@dataclasses.dataclass(frozen=True)
class FloorCheck:
    """One class's sensitivity on a set (val, or an external set) at the chosen rule against its floor."""

    class_name: str
    floor: float
    sensitivity: Estimate
    set_name: str = "val"

    @property
    def below(self) -> bool:
        return self.measured and self.sensitivity.value < self.floor

    @property
    def measured(self) -> bool:
        """The set holds the class, so its sensitivity is defined."""
        return self.sensitivity.value is not None

    @property
    def shown(self) -> bool:
        """Reached, and by the whole interval: the set shows the floor holds for new patients."""
        interval = self.sensitivity.interval
        return not self.below and interval is not None and interval[0] >= self.floor

    @property
    def status(self) -> str:
        if not self.measured:
            return f"not measured (no {self.class_name} image)"
        return "NOT MET" if self.below else "met" if self.shown else "met, not shown by its interval"

    def warning(self) -> str | None:
        """The report's warning for this floor; None when the set shows it."""
        if self.below:
            return (f"the decision rule's {self.set_name} sensitivity for {self.class_name} is "
                    f"{self.sensitivity.text()}, below the floor {self.floor:g} (--min_sensitivity): it misses "
                    f"patients a triage tool must catch; consider "
                    f"--decision_rule target:{self.class_name}:sensitivity:{self.floor:g}")
        if self.shown or not self.measured:
            return None
        needed = intervals.cases_to_show(self.floor)
        enough = (f"it takes {needed} {self.class_name} images in {self.set_name}, all found, to show it"
                  if needed else "no number of images shows a floor of 1")
        return (f"the decision rule's {self.set_name} sensitivity for {self.class_name} is "
                f"{self.sensitivity.text()}: at the floor {self.floor:g} (--min_sensitivity), but its interval "
                f"reaches below it; {enough}: on new patients the rule may catch fewer")


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


def format_floor_warnings(checks: list[FloorCheck]) -> str:
    """The floors' heading and warnings, printed right after the shortcut audit's."""
    lines = ["DECISION RULE", "============="]
    warnings = [warning for warning in map(FloorCheck.warning, checks) if warning]
    lines += [f"WARNING: {warning}" for warning in warnings]
    measured = [check for check in checks if check.measured]
    if not checks:
        lines.append("no sensitivity floor set (--min_sensitivity)")
    elif measured and not warnings:
        met = ", ".join(f"{check.class_name} {check.floor:g}" for check in measured)
        lines.append(f"every sensitivity floor met on {checks[0].set_name} ({met})")
    lines += [f"{check.class_name}: floor {check.floor:g} {check.status} on {check.set_name}"
              for check in checks if not check.measured]
    return "\n".join(lines)


def check_floors(metrics: ClassificationMetrics, floors: Mapping[str, float], set_name: str = "val"
                 ) -> list[FloorCheck]:
    """Each floored class's sensitivity at the rule `metrics` (of `set_name`) were scored under."""
    return [FloorCheck(name, floor, metrics.per_class[name].sensitivity, set_name) for name, floor in floors.items()]


def rule_reason(spec: str) -> str:
    """Why the rule decides as it does, for the model card."""
    if spec.startswith(f"{TARGET}:"):
        _, name, metric, target = spec.split(":")
        return (f"`--decision_rule {spec}`: {name} is predicted when its prior-corrected probability reaches the "
                f"threshold that gives {metric} {target} on val, so the class a triage tool exists to catch is not "
                "traded away for the frequent ones; the operating point shows what val can promise")
    return ("`--decision_rule argmax`: the argmax after correcting the training class mix (offline copies "
            "included) to val's; a class rare in val loses sensitivity to it, which the operating point shows")


def format_operating_points(at_rule: Mapping[str, ClassificationMetrics],
                            at_argmax: Mapping[str, ClassificationMetrics], checks: list[FloorCheck]) -> str:
    """The val promise and the floors; per set, the confusion matrices at the rule and at the plain argmax."""
    names = contract.CLASS_NAMES
    lines = [f"Operating point: {next(iter(at_rule.values())).decision_rule}" if at_rule else "Operating point"]
    for name, metrics in at_rule.items():
        promise = " (the lower bound is what val can promise for new patients)" if name == "val" else ""
        lines.append(f"  {name} sensitivity at the rule{promise}: "
                     + ", ".join(f"{column} {metrics.per_class[column].sensitivity.text()}" for column in names))
    lines += [f"  {check.class_name}: floor {check.floor:g} (--min_sensitivity), {check.status} on {check.set_name}"
              for check in checks]
    for name, rule_metrics in at_rule.items():
        argmax_metrics = at_argmax[name]
        width = CELL_WIDTH * len(names)
        lines += ["", f"{'':<24}{'at the rule':^{width}}   |{'at argmax':^{width}}",
                  f"{name + ' (true / predicted)':<24}" + _row(names) + "   |" + _row(names)]
        for index, row_name in enumerate(names):
            lines.append(f"{row_name:<24}" + _row(rule_metrics.confusion_matrix[index])
                         + "   |" + _row(argmax_metrics.confusion_matrix[index]))
        lines.append(f"{'sensitivity':<24}" + _row(_sensitivities(rule_metrics)) + "   |"
                     + _row(_sensitivities(argmax_metrics)))
    return "\n".join(line.rstrip() for line in lines)


def _row(cells: Iterable) -> str:
    return "".join(f"{cell:>{CELL_WIDTH}}" for cell in cells)


def _sensitivities(metrics: ClassificationMetrics) -> list[str]:
    return ["n/a" if figures.sensitivity.value is None else f"{figures.sensitivity.value:.2f}"
            for figures in metrics.per_class.values()]

