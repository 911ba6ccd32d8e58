"""The figures within subgroups of patients and images: view, sex and age band, where the records have them.

A model can do well overall and badly for the portable AP films of the sickest patients,
or for one sex or age band; the overall table averages that away. Each subgroup gets
`trainer.evaluation.metrics.classification_metrics` of its own images (every figure with
its 95% interval, a class with fewer than `MIN_PATIENTS_TO_CONCLUDE` patients flagged as
too few to conclude from), under the same decision rule as the split.

The values come from the records: `image/view` (PA, AP, AP SUPINE, …), and `patient/sex`
and `patient/age_band` (coarse categories only: M, F, other; 10-year bands), which some
sources fill and others leave `unknown`. An attribute that no image of the split has is
left out rather than reported as one group of unknowns.
"""

from collections.abc import Mapping

import numpy as np

from cxr_core import contract
from cxr_core.decision_rule import DecisionRule
from trainer.evaluation import intervals
from trainer.evaluation.metrics import (MIN_PATIENTS_TO_CONCLUDE, ClassFigures, ClassificationMetrics,
                                        classification_metrics)

# The attributes, as reports name them, and the record keys they come from.
ATTRIBUTES = {"view": contract.VIEW, "sex": contract.PATIENT_SEX, "age band": contract.PATIENT_AGE_BAND}
UNKNOWN = "unknown"
CELL_WIDTH = 18


def subgroup_metrics(labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray | None,
                     attributes: Mapping[str, np.ndarray], rule: DecisionRule | None = None,
                     resamples: int = intervals.BOOTSTRAP_RESAMPLES,
                     seed: int = intervals.BOOTSTRAP_SEED) -> dict[str, dict[str, ClassificationMetrics]]:
    """{attribute: {value: metrics of its images}} for each attribute [N] that some image has; unknown last."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    result = {}
    for attribute, values in attributes.items():
        values = np.array([value.strip() or UNKNOWN for value in np.asarray(values, dtype=str)])
        if np.all(values == UNKNOWN):
            continue
        result[attribute] = {
            value: classification_metrics(labels[values == value], probabilities[values == value],
                                          None if patients is None else np.asarray(patients)[values == value],
                                          rule, resamples, seed)
            for value in sorted(set(values.tolist()), key=lambda value: (value == UNKNOWN, value))}
    return result


def format_subgroups(by_attribute: Mapping[str, Mapping[str, ClassificationMetrics]], split: str) -> str:
    """A table per attribute: images, patients, each class's sensitivity and the accuracy, with intervals."""
    if not by_attribute:
        return f"Subgroups ({split}): the records give no view, sex or age band"
    header = f"{'':<16} {'n':>6} {'patients':>8} " + " ".join(
        f"{'sens. ' + name:>{CELL_WIDTH}}" for name in contract.CLASS_NAMES) + f" {'accuracy':>{CELL_WIDTH}}"
    lines = [f"Subgroups ({split}; * fewer than {MIN_PATIENTS_TO_CONCLUDE} patients of the class: too few to "
             "conclude from)"]
    for attribute, groups in by_attribute.items():
        lines += ["", f"by {attribute}", header, "-" * len(header)]
        for value, metrics in groups.items():
            cells = [f"{figures.sensitivity.text() + _flag(figures):>{CELL_WIDTH}}"
                     for figures in metrics.per_class.values()]
            lines.append(f"{value:<16} {metrics.num_examples:>6} {metrics.num_patients:>8} " + " ".join(cells)
                         + f" {metrics.accuracy.text():>{CELL_WIDTH}}")
    return "\n".join(lines)


def _flag(figures: ClassFigures) -> str:
    """`*` for a class present in the group with too few patients to conclude from."""
    return "*" if figures.too_small and figures.support else ""
