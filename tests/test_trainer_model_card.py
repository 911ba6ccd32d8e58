"""The model card: every section present, each filled from its input."""

import re

import numpy as np
import pytest

from cxr_core import decision_rule
from trainer.evaluation import calibration, model_card, shortcut_audit, subgroups, triage
from trainer.evaluation.metrics import SplitPredictions, split_metrics

MANIFEST = {
    "created": "2026-11-27T10:00:00+00:00",
    "schema": {"version": 2},
    "options": {"image_size": 64, "split": "0.6,0.2,0.2", "patient_key_fingerprint": "0123456789abcdef"},
    "augmentation_multipliers": {"normal": 1, "pneumonia": 1, "covid19": 8},
    "inputs": {"listed": 1600, "used": 1080, "rejected": 520},
    "patients": {split: {"normal": 100, "pneumonia": 90, "covid19": 40} for split in ("train", "val", "test")},
    "originals": {split: {"normal": 120, "pneumonia": 100, "covid19": 60} for split in ("train", "val", "test")},
    "examples": {split: {"normal": 120, "pneumonia": 100, "covid19": 480} for split in ("train", "val", "test")},
    "originals_by_source": {"covid": {"normal": 30, "pneumonia": 20, "covid19": 180},
                            "rsna": {"normal": 330, "pneumonia": 280, "covid19": 0}},
    "warnings": ["covid19 comes only from covid: covid19 vs the rest can be learnt from the source"],
}
RUN = {"config": {"weights": "none", "image_size": 64, "stage2_epochs": 30, "decision_rule": "argmax", "seed": 42},
       "preprocessing_version": 1, "tensorflow_version": "2.21.0"}


def predictions(seed: int, size: int = 90) -> SplitPredictions:
    rng = np.random.default_rng(seed)
    labels = np.arange(size) % 3
    logits = rng.normal(0.0, 1.0, (size, 3))
    logits[np.arange(size), labels] += 2.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    sources = np.where(labels == 2, "covid", np.where(np.arange(size) % 2 == 0, "rsna", "covid"))
    return SplitPredictions(labels, probabilities, sources, None)


@pytest.fixture(scope="module")
def card() -> str:
    val, test, external = predictions(0), predictions(1), predictions(2, size=30)
    rule = decision_rule.DecisionRule("argmax", (0.2, 0.2, 0.6), (0.4, 0.4, 0.2))
    metrics = {name: split_metrics(split, rule, resamples=50)
               for name, split in (("val", val), ("test", test), ("external", external))}
    temperature = calibration.fit_temperature(val.labels, val.probabilities)
    calibrations = {name: (calibration.calibration(split.labels, split.probabilities, resamples=50),
                           calibration.calibration(split.labels,
                                                   calibration.apply_temperature(split.probabilities, temperature),
                                                   resamples=50))
                    for name, split in (("val", val), ("test", test))}
    audit = shortcut_audit.ShortcutAudit(shortcut_audit.source_table_from_manifest(MANIFEST), None, None, None)
    views = {"view": np.where(np.arange(90) % 2 == 0, "PA", "AP")}
    by_view = subgroups.subgroup_metrics(test.labels, test.probabilities, None, views, rule, resamples=0)
    return model_card.model_card(model_card.ModelCardInputs(
        model="demo_output/model", run_description=RUN, manifest=MANIFEST, metrics=metrics,
        calibration=calibrations, temperature=temperature, rule=rule,
        rule_reason="the default: prior correction to val's class mix", audit=audit, audited_set="test",
        subgroups={"test": by_view}, external_provenance={"external": "records in /data/other-hospital"},
        floor_checks=triage.check_floors(metrics["val"].overall, {"covid19": 0.9})))


def section(card: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n\n(.*?)(?=^## |\Z)", card, re.MULTILINE | re.DOTALL)
    assert match, f"no section {title!r}"
    return match.group(1)


def test_every_section_is_present_in_order(card):
    titles = re.findall(r"^## (.+)$", card, re.MULTILINE)
    assert titles == ["Intended use", "Not intended for", "Training data", "Training configuration", "Evaluation",
                      "Subgroups", "Calibration", "Decision rule", "Shortcut audit", "Known limits"]
    assert all(section(card, title).strip() for title in titles)


def test_intended_use_says_research_tool_not_medical_device(card):
    assert "research tool" in section(card, "Intended use")
    assert "not a medical device" in section(card, "Intended use")
    assert "Diagnosis, triage" in section(card, "Not intended for")


def test_training_data_and_configuration_come_from_the_manifest_and_config(card):
    data = section(card, "Training data")
    assert "| rsna | 330 | 280 | 0 |" in data
    assert "| test | 100 / 120 / 120 | 90 / 100 / 100 | 40 / 60 / 480 |" in data
    assert "patient key fingerprint: 0123456789abcdef" in data
    assert "inputs listed / used / rejected: 1600 / 1080 / 520" in data
    assert "manifest warning: covid19 comes only from covid" in data
    configuration = section(card, "Training configuration")
    assert "- weights: none" in configuration and "- tensorflow_version: 2.21.0" in configuration


def test_evaluation_calibration_rule_and_audit_are_filled_from_the_results(card):
    evaluation = section(card, "Evaluation")
    for name in ("val", "test", "external"):
        assert f"### {name}: " in evaluation
    assert "Data: records in /data/other-hospital" in evaluation
    assert "within each source" in evaluation and "| rsna |" in evaluation
    assert "| PA |" in section(card, "Subgroups") and "| AP |" in section(card, "Subgroups")
    assert re.search(r"Temperature T = \d\.\d{3}", section(card, "Calibration"))
    assert re.search(r"^\| test \| \d\.\d\d", section(card, "Calibration"), re.MULTILINE)
    assert "argmax after prior correction" in section(card, "Decision rule")
    assert "Why: the default: prior correction" in section(card, "Decision rule")
    assert re.search(r"- covid19: sensitivity on val 0\.\d\d \[.*\] against the floor 0\.9: NOT MET",
                     section(card, "Decision rule"))
    assert "WARNING: covid19 comes only from covid" in section(card, "Shortcut audit")
    limits = section(card, "Known limits")
    assert "Shortcut audit: covid19 comes only from covid" in limits
    assert "external: fewer than 30 patients of normal, pneumonia, covid19" in limits


def test_a_card_without_manifest_says_the_provenance_is_unknown():
    empty = model_card.ModelCardInputs(model="m", run_description={}, manifest=None, metrics={}, calibration={},
                                       temperature=1.0, rule=None, rule_reason="default", audit=None,
                                       audited_set="test", subgroups={})
    card = model_card.model_card(empty)
    assert "manifest was not found" in section(card, "Training data")
    assert "provenance is unknown" in section(card, "Known limits")
    assert "Temperature T = 1.000" in section(card, "Calibration")
