"""The printed evaluation table and the files of the eval dir."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from scored_splits import probabilities_for, scored_split

from cxr_core import decision_rule
from trainer.evaluation import intervals, operating_point, report
from trainer.evaluation import metrics as metrics_lib

# The confusion matrix [true, predicted] is [[3, 1, 0], [0, 2, 1], [1, 0, 2]].
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PREDICTED = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])




def test_write_report_writes_metrics_and_figures(tmp_path):
    one_source = np.full(len(LABELS), "rsna")
    results = {"val": metrics_lib.SplitPredictions(LABELS, probabilities_for(PREDICTED), one_source),
               "test": metrics_lib.SplitPredictions(LABELS, probabilities_for(LABELS), one_source)}

    metrics = report.write_report(str(tmp_path), results)

    with open(tmp_path / report.METRICS_FILE) as handle:
        assert json.load(handle) == {split: split_metrics.to_json() for split, split_metrics in metrics.items()}
    assert metrics["test"].overall.accuracy.value == 1.0
    for name in (report.CONFUSION_MATRIX_FILE, report.ROC_FILE):
        with Image.open(io.BytesIO((tmp_path / name).read_bytes())) as figure:
            assert figure.format == "PNG"
            assert figure.width == 2 * figure.height  # One panel per split.
    assert not (tmp_path / report.DECISION_RULE_FILE).exists()  # No rule applied.
    assert metrics["val"].overall.per_class["covid19"].sensitivity.interval == pytest.approx(
        intervals.wilson_interval(2, 3))
    table = report.format_table(metrics)
    val_section, test_section = table.split(report.TEST_HEADING)
    assert table.count(report.TEST_HEADING) == 1 and report.VAL_HEADING in val_section
    covid19_row = next(line for line in val_section.splitlines() if line.startswith("covid19"))
    assert covid19_row.split()[:5] == ["covid19*", "3", "3", "0.67", "[0.21–0.94]"]  # Wilson 2/3.
    assert ["accuracy", "10", "10", "1.00", "[0.72–1.00]"] in [line.split() for line in test_section.splitlines()]
    assert "fewer than 30 patients in test: too few to conclude from" in test_section
    assert "within each source" not in table  # One source: its breakdown would repeat the split.


def test_the_table_prints_test_last_whatever_the_order_given():
    predictions = metrics_lib.SplitPredictions(LABELS, probabilities_for(PREDICTED), np.full(len(LABELS), "rsna"))
    split = metrics_lib.split_metrics(predictions, resamples=0)
    table = report.format_table({"test": split, "val": split})
    assert table.index(report.VAL_HEADING) < table.index(report.TEST_HEADING)


def test_the_table_has_a_column_per_figure_and_reads_na_where_undefined():
    labels = np.array([0, 0, 1, 1])
    predictions = metrics_lib.SplitPredictions(labels, probabilities_for(np.array([0, 1, 1, 2])),
                                               np.full(len(labels), "rsna"))
    table = report.format_table({"val": metrics_lib.split_metrics(predictions)})
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("class"))
    assert header.split() == ["class", "n", "patients", "sensitivity", "PPV", "specificity", "F1", "ROC-AUC"]
    covid19_row = next(line for line in lines if line.startswith("covid19"))
    assert covid19_row.split() == ["covid19", "0", "0", "n/a", "0.00", "[0.00–0.79]", "0.75", "[0.30–0.95]",
                                   "0.00", "[0.00–0.00]", "n/a"]
    assert len(covid19_row) == len(header)  # Cells line up under their titles.
    assert lines[2] == f"decision rule: {metrics_lib.UNCORRECTED_ARGMAX}"


def test_a_source_table_shows_each_class_within_each_source():
    # Source "covid" holds every covid19 image plus normal and pneumonia ones; "rsna" has none.
    labels = np.array([0, 1, 0, 1, 2, 2, 2, 0, 1])
    sources = np.array(["rsna"] * 4 + ["covid"] * 5)
    covid_score = np.where(sources == "covid", 0.6, 0.2)
    probabilities = np.stack([(1 - covid_score) / 2, (1 - covid_score) / 2, covid_score], axis=-1)

    table = report.format_table({"test": metrics_lib.split_metrics(
        metrics_lib.SplitPredictions(labels, probabilities, sources))})

    assert "One-vs-rest ROC-AUC within each source" in table
    covid_row = next(line for line in table.splitlines() if line.startswith("covid "))
    rsna_row = next(line for line in table.splitlines() if line.startswith("rsna "))
    assert [cell for cell in covid_row.split() if not cell.startswith("[")] == [
        "covid", "5", "0.50", "0.50", "0.50", "0.60"]
    assert [cell for cell in rsna_row.split() if not cell.startswith("[")] == [
        "rsna", "4", "0.50", "0.50", "n/a", "0.50"]
    assert table.splitlines()[-1] == ("* fewer than 30 patients of the class in the source: "
                                      "too few to conclude from")


def test_only_present_classes_with_too_few_patients_are_flagged():
    labels, probabilities, patients = scored_split(num_patients=120)  # 40 patients per class.
    keep = (labels != 2) | (np.char.lstrip(patients, "p").astype(int) < 60)  # covid19: 20 patients.
    metrics = metrics_lib.split_metrics(metrics_lib.SplitPredictions(
        labels[keep], probabilities[keep], np.full(keep.sum(), "rsna"), patients[keep]))
    rows = {line.split()[0]: line for line in report.format_table({"test": metrics}).splitlines() if line}
    assert "covid19*" in rows and "normal" in rows and "normal*" not in rows


def test_write_report_records_the_rule(tmp_path):
    labels, probabilities, patients = scored_split()
    rule = operating_point.choose_decision_rule(decision_rule.parse_decision_rule("argmax"), labels,
                                                probabilities, (10, 10, 80))
    results = {"val": metrics_lib.SplitPredictions(labels, probabilities, np.full(len(labels), "rsna"), patients)}
    metrics = report.write_report(str(tmp_path), results, rule)
    with open(tmp_path / report.DECISION_RULE_FILE) as handle:
        assert decision_rule.DecisionRule.from_json(json.load(handle)) == rule
    assert metrics["val"].overall.decision_rule == rule.describe()
    assert "decision rule: " + rule.describe() in report.format_table(metrics)
