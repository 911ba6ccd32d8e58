"""Operating points for triage: the sensitivity floors and the rule against the plain argmax."""

import numpy as np
import pytest

from cxr_core import decision_rule
from trainer.evaluation import triage
from trainer.evaluation.metrics import classification_metrics

# 20 COVID-19 images whose covid19 probability is modest: the argmax catches 16, prior correction toward a
# val mix where COVID-19 is rare catches fewer.
LABELS = np.array([0] * 40 + [1] * 40 + [2] * 20)


def probabilities() -> np.ndarray:
    rng = np.random.default_rng(0)
    result = np.full((len(LABELS), 3), 0.1)
    result[np.arange(len(LABELS)), LABELS] = 0.8
    result[80:96] = [0.3, 0.2, 0.5]  # caught by the argmax, lost to a prior that makes COVID-19 rare
    result[96:] = [0.6, 0.2, 0.2]  # missed by both
    return result + rng.uniform(0, 1e-3, result.shape)


def test_floors_parse_and_refuse_what_is_not_a_class_or_a_rate():
    assert triage.parse_min_sensitivity(triage.DEFAULT_MIN_SENSITIVITY) == {"covid19": 0.9}
    assert triage.parse_min_sensitivity(" covid19=0.95, pneumonia=0.8 ") == {"covid19": 0.95, "pneumonia": 0.8}
    assert triage.parse_min_sensitivity("") == {}
    for text in ("covid=0.9", "covid19", "covid19=1.5", "covid19=0", "covid19=high"):
        with pytest.raises(ValueError, match="--min_sensitivity must be class=value pairs"):
            triage.parse_min_sensitivity(text)


def test_a_rule_below_the_floor_on_val_is_flagged_with_its_interval():
    rule = decision_rule.DecisionRule("argmax", (0.3, 0.3, 0.4), (0.45, 0.45, 0.1))
    at_rule = classification_metrics(LABELS, probabilities(), rule=rule, resamples=0)
    at_argmax = classification_metrics(LABELS, probabilities(), resamples=0)
    assert at_argmax.per_class["covid19"].sensitivity.value == pytest.approx(16 / 20)
    assert at_rule.per_class["covid19"].sensitivity.value == pytest.approx(0.0)
    (check,) = triage.check_floors(at_rule, {"covid19": 0.9})
    assert check.below
    assert check.warning().startswith("the decision rule's val sensitivity for covid19 is 0.00 [0.00–0.16], "
                                      "below the floor 0.9")
    (met,) = triage.check_floors(at_rule, {"normal": 0.9})
    assert not met.below
    printed = triage.format_operating_points({"val": at_rule}, {"val": at_argmax}, [check, met])
    lines = printed.splitlines()
    assert lines[0] == f"Operating point: {rule.describe()}"
    assert lines[1].startswith("  val sensitivity at the rule (the lower bound is what val can promise")
    assert "covid19 0.00 [0.00–0.16]" in lines[1]
    assert lines[2:4] == ["  covid19: floor 0.9 (--min_sensitivity), NOT MET on val",
                          "  normal: floor 0.9 (--min_sensitivity), met on val"]
    covid_row = next(line for line in lines if line.startswith("covid19 "))
    rule_cells, argmax_cells = covid_row[24:].split("|")
    assert rule_cells.split() == ["20", "0", "0"]
    assert argmax_cells.split() == ["4", "0", "16"]


def test_the_reason_for_the_rule_names_it():
    assert triage.rule_reason("target:covid19:sensitivity:0.95").startswith(
        "`--decision_rule target:covid19:sensitivity:0.95`: covid19 is predicted when")
    assert triage.rule_reason("argmax").startswith("`--decision_rule argmax`")


def test_the_floor_warnings_follow_the_checks():
    at_rule = classification_metrics(LABELS, probabilities(), resamples=0)  # argmax: covid19 0.80, normal 1.00
    below = triage.check_floors(at_rule, {"covid19": 0.9})
    assert triage.format_floor_warnings(below).splitlines() == [
        "DECISION RULE", "=============", f"WARNING: {below[0].warning()}"]
    met = triage.check_floors(at_rule, {"normal": 0.9, "pneumonia": 0.8})
    assert triage.format_floor_warnings(met).splitlines()[2] == (
        "every sensitivity floor met on val (normal 0.9, pneumonia 0.8)")
    assert triage.format_floor_warnings([]).splitlines()[2] == "no sensitivity floor set (--min_sensitivity)"


def test_a_floor_reached_on_too_few_images_is_met_but_not_shown():
    """16 of 20 reach a floor of 0.8, but 0.80 [0.58–0.92] cannot show it; 40 of 40 show 0.9 (lower bound 0.91)."""
    at_argmax = classification_metrics(LABELS, probabilities(), resamples=0)
    unshown, shown = triage.check_floors(at_argmax, {"covid19": 0.8, "normal": 0.9})
    assert not unshown.below and not unshown.shown and unshown.status == "met, not shown by its interval"
    assert unshown.warning() == (
        "the decision rule's val sensitivity for covid19 is 0.80 [0.58–0.92]: at the floor 0.8 "
        "(--min_sensitivity), but its interval reaches below it; it takes 16 covid19 images in val, all found, "
        "to show it: on new patients the rule may catch fewer")
    assert shown.shown and shown.status == "met" and shown.warning() is None
    assert triage.format_floor_warnings([unshown, shown]).splitlines()[2:] == [f"WARNING: {unshown.warning()}"]
    (certain,) = triage.check_floors(at_argmax, {"normal": 1.0})
    assert not certain.shown and "no number of images shows a floor of 1" in certain.warning()
    without_covid = classification_metrics(LABELS[:80], probabilities()[:80], resamples=0)
    (unmeasured,) = triage.check_floors(without_covid, {"covid19": 0.9})
    assert unmeasured.status == "not measured (no covid19 image)" and unmeasured.warning() is None
    assert triage.format_floor_warnings([unmeasured]).splitlines()[2:] == [
        "covid19: floor 0.9 not measured (no covid19 image) on val"]
