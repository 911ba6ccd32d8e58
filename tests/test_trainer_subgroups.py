"""Subgroup figures: each group scored alone, attributes nobody has left out, small groups flagged."""

import numpy as np
import pytest

from trainer.evaluation import metrics as metrics_lib
from trainer.evaluation import subgroups

LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 0])
PREDICTED = np.array([0, 1, 2, 1, 1, 0, 0, 0])
VIEWS = np.array(["PA", "PA", "PA", "AP", "AP", "AP", "", "PA"])


def probabilities_for(predicted: np.ndarray) -> np.ndarray:
    return 0.1 + 0.7 * np.eye(3)[predicted]


def test_each_view_is_scored_on_its_own_images_and_unknown_comes_last():
    by_attribute = subgroups.subgroup_metrics(
        LABELS, probabilities_for(PREDICTED), None,
        {"view": VIEWS, "sex": np.full(8, "unknown"), "age band": np.full(8, "")}, resamples=0)
    assert list(by_attribute) == ["view"]  # No image has a sex or an age band.
    views = by_attribute["view"]
    assert list(views) == ["AP", "PA", "unknown"]
    assert views["PA"].num_examples == 4 and views["PA"].accuracy.value == 1.0
    assert views["AP"].confusion_matrix == ((0, 1, 0), (0, 1, 0), (1, 0, 0))
    assert views["AP"].accuracy.value == pytest.approx(1 / 3)
    assert views["unknown"].num_examples == 1
    reference = metrics_lib.classification_metrics(LABELS[VIEWS == "AP"], probabilities_for(PREDICTED)[VIEWS == "AP"],
                                                   resamples=0)
    assert views["AP"] == reference


def test_the_printed_table_flags_groups_too_small_to_conclude_from():
    by_attribute = subgroups.subgroup_metrics(LABELS, probabilities_for(PREDICTED), None,
                                              {"sex": np.array(["F", "M"] * 4)}, resamples=0)
    printed = subgroups.format_subgroups(by_attribute, "test")
    rows = {line.split()[0]: line for line in printed.splitlines() if line[:1] in ("F", "M")}
    assert set(rows) == {"F", "M"}
    assert "*" in rows["F"]  # A handful of patients per class: every present class is flagged.
    assert subgroups.format_subgroups({}, "test") == "Subgroups (test): the records give no view, sex or age band"
