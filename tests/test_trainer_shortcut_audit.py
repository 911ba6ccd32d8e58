"""The shortcut audit: the single-source flag, the source probe, the Grad-CAM central share, the baseline."""

import json

import numpy as np
import pytest
import sklearn.metrics
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, cross_val_predict

from cxr_core import contract
from trainer.evaluation import pixel_baseline, shortcut_audit
from trainer.evaluation.metrics import SplitPredictions, split_metrics

MANIFEST_TABLE = {"covid": {"covid19": 120, "normal": 20, "pneumonia": 15},
                  "rsna": {"covid19": 0, "normal": 300, "pneumonia": 280}}


def two_source_images(num_patients: int, images_per_patient: int, source_shift: float, seed: int):
    """Features [N, 32], sources, patients, labels: half the patients per source, every class in both sources."""
    rng = np.random.default_rng(seed)
    patient_sources = np.where(np.arange(num_patients) % 2 == 0, "covid", "rsna")
    patient_labels = (np.arange(num_patients) // 2) % 3
    patient_of_image = np.repeat(np.arange(num_patients), images_per_patient)
    sources, labels = patient_sources[patient_of_image], patient_labels[patient_of_image]
    features = rng.normal(0.0, 1.0, (len(sources), 32))
    features[:, :4] += source_shift * (sources == "covid")[:, None]
    patients = np.array([f"patient-{index}" for index in patient_of_image])
    return features, sources, patients, labels


def test_the_probe_finds_the_source_in_features_that_carry_it():
    features, sources, patients, labels = two_source_images(90, 2, source_shift=2.0, seed=0)
    probe = shortcut_audit.source_probe(features, sources, patients, labels)
    assert probe.sources == ("covid", "rsna")
    assert probe.folds == shortcut_audit.PROBE_FOLDS
    assert probe.roc_auc > 0.95
    assert all(auc > 0.9 for auc in probe.within_class.values())
    audit = shortcut_audit.ShortcutAudit(None, probe, None, None)
    assert sum("tell the sources apart" in warning for warning in audit.warnings()) == 3


def test_the_probe_finds_nothing_in_features_that_do_not_carry_the_source():
    features, sources, patients, labels = two_source_images(90, 2, source_shift=0.0, seed=1)
    probe = shortcut_audit.source_probe(features, sources, patients, labels)
    assert abs(probe.roc_auc - 0.5) < 0.15
    assert shortcut_audit.ShortcutAudit(None, probe, None, None).warnings() == []


def test_the_probe_keeps_a_patients_images_in_one_fold():
    # Each patient's images share a random vector (the patient, not the source): a probe that saw the
    # patient in training recognises it, so only folds by patient show that the source is not there.
    rng = np.random.default_rng(2)
    _, sources, patients, labels = two_source_images(60, 4, source_shift=0.0, seed=2)
    patient_vectors = rng.normal(0.0, 1.0, (60, 32))
    features = patient_vectors[np.repeat(np.arange(60), 4)] + rng.normal(0.0, 0.05, (240, 32))
    probe = shortcut_audit.source_probe(features, sources, patients, labels)
    assert abs(probe.roc_auc - 0.5) < 0.2
    leaky = cross_val_predict(LogisticRegression(max_iter=2000), features, sources == "covid",
                              cv=KFold(5, shuffle=True, random_state=0), method="predict_proba")[:, 1]
    assert sklearn.metrics.roc_auc_score(sources == "covid", leaky) > 0.9


def test_one_source_gets_no_probe():
    features, _, patients, labels = two_source_images(30, 1, source_shift=2.0, seed=3)
    probe = shortcut_audit.source_probe(features, np.full(30, "rsna"), patients, labels)
    assert probe.roc_auc is None and probe.note == "one source: no probe"
    assert set(probe.within_class.values()) == {None}


def test_a_class_drawn_from_one_source_is_flagged_from_the_manifest(tmp_path):
    (tmp_path / contract.MANIFEST_FILE).write_text(json.dumps({"originals_by_source": MANIFEST_TABLE}))
    table = shortcut_audit.source_table_from_manifest(shortcut_audit.read_manifest(str(tmp_path)))
    assert table.counts["rsna"] == {"normal": 300, "pneumonia": 280, "covid19": 0}
    assert table.confounding.single_source_classes == {"covid19": "covid"}
    audit = shortcut_audit.ShortcutAudit(table, None, None, None)
    assert audit.warnings() == table.confounding.warnings()
    assert audit.warnings()[0].startswith("covid19 comes only from covid: no image from another source is covid19")
    printed = shortcut_audit.format_audit(audit, "test").splitlines()
    assert printed[2] == f"WARNING: {audit.warnings()[0]}"
    assert printed[6].split() == ["covid", "20", "15", "120"]


def test_without_a_manifest_table_the_counts_come_from_the_records(tmp_path):
    assert shortcut_audit.read_manifest(str(tmp_path)) is None
    (tmp_path / contract.MANIFEST_FILE).write_text(json.dumps({"originals": {}}))
    assert shortcut_audit.source_table_from_manifest(shortcut_audit.read_manifest(str(tmp_path))) is None
    table = shortcut_audit.source_table_from_records(np.array([0, 1, 2, 2, 0]),
                                                     np.array(["a", "a", "b", "b", "b"]), "val and test records")
    assert table.counts == {"a": {"normal": 1, "pneumonia": 1, "covid19": 0},
                            "b": {"normal": 1, "pneumonia": 0, "covid19": 2}}
    confounding = table.confounding
    assert (confounding.isolated_classes, confounding.single_source_classes, confounding.separated_pairs) == (
        {}, {"pneumonia": "a", "covid19": "b"}, (("pneumonia", "covid19"),))
    one_source = shortcut_audit.source_table_from_records(np.array([0, 1, 2]), np.full(3, "a"), "records")
    assert shortcut_audit.ShortcutAudit(one_source, None, None, None).warnings() == []


def test_central_share_of_hand_built_maps():
    size = 64
    band = round(size * shortcut_audit.BORDER_FRACTION)  # 8 pixels along each edge
    border_only = np.zeros((size, size))
    border_only[:band, :] = 1.0
    centre_only = np.zeros((size, size))
    centre_only[band:-band, band:-band] = 0.5
    half_and_half = np.zeros((size, size))
    half_and_half[:band, :band] = 1.0  # 64 pixels in the top left corner ...
    half_and_half[30:32, 24:56] = 1.0  # ... and 64 in the middle.
    shares = shortcut_audit.central_share(np.stack([border_only, centre_only, np.ones((size, size)), half_and_half,
                                                    np.zeros((size, size))]))
    np.testing.assert_allclose(shares[:4], [0.0, 1.0, shortcut_audit.UNIFORM_CENTRAL_SHARE, 0.5])
    assert shortcut_audit.UNIFORM_CENTRAL_SHARE == pytest.approx(48 * 48 / 64 ** 2)
    assert np.isnan(shares[4])


def test_central_share_is_averaged_by_predicted_class():
    size = 32
    band = round(size * shortcut_audit.BORDER_FRACTION)
    centre, border = np.zeros((size, size)), np.zeros((size, size))
    centre[band:-band, band:-band] = 1.0
    border[:band] = 1.0
    maps = np.stack([centre, border, border, centre, np.zeros((size, size)), np.ones((size, size))])
    share = shortcut_audit.central_share_by_class(maps, np.array([0, 0, 0, 2, 2, 1]))
    assert share.mean == pytest.approx({"normal": 1 / 3, "pneumonia": shortcut_audit.UNIFORM_CENTRAL_SHARE,
                                        "covid19": 1.0})
    assert share.images == {"normal": 3, "pneumonia": 1, "covid19": 1}  # An empty map is left out.
    assert (share.map_side, share.too_coarse) == (1, True)  # A 32² map comes from one position.
    assert "too coarse to tell the border from the chest" in shortcut_audit.format_checks(
        shortcut_audit.ShortcutAudit(None, None, share, None), "test")
    fine = shortcut_audit.central_share_by_class(np.zeros((1, 128, 128)), np.array([0]))
    assert (fine.map_side, fine.too_coarse) == (4, False)
    audit = shortcut_audit.ShortcutAudit(None, None, share, None)
    # An evenly spread map (pneumonia) is not flagged; one with most mass on the border is.
    assert audit.warnings() == [f"Grad-CAM of the images predicted normal lies mostly on the border (central share "
                                f"0.33, {shortcut_audit.UNIFORM_CENTRAL_SHARE:.2f} if spread evenly)"]


def test_a_model_that_does_not_beat_the_pixel_baseline_is_flagged():
    rng = np.random.default_rng(4)
    labels = np.tile(np.arange(3), 40)
    images = rng.integers(40, 120, (len(labels), 32, 32)).astype(np.uint8)
    for image, label in zip(images, labels):
        image[:, label * 10:(label + 1) * 10] += 80  # The class is where a bright band lies.
    thumbnails = pixel_baseline.thumbnails(images)
    baseline = pixel_baseline.fit(thumbnails[:60], labels[:60], thumbnails[60:90], labels[60:90])
    sources = np.where(np.arange(30) % 2 == 0, "covid", "rsna")
    guessing = SplitPredictions(labels[90:], rng.dirichlet(np.ones(3), 30), sources, None)
    comparison = shortcut_audit.baseline_comparison(
        baseline, {"test": thumbnails[90:]}, {"test": guessing}, {"test": split_metrics(guessing, resamples=0)},
        resamples=0)
    assert comparison.baseline["test"].overall.macro.roc_auc.value > 0.95
    warnings = shortcut_audit.ShortcutAudit(None, None, None, comparison).warnings()
    assert warnings[0].startswith("on test the model does not beat logistic regression on 32x32 thumbnails")
    assert {warning.split(" the model")[0] for warning in warnings} == {
        "on test", "on test within covid", "on test within rsna"}
    printed = shortcut_audit.format_audit(shortcut_audit.ShortcutAudit(None, None, None, comparison), "test")
    assert "test overall baseline" in printed and "test rsna model" in printed
    written = json.loads(json.dumps(comparison.to_json()))["metrics"]["test"]
    assert written["macro"]["roc_auc"] > 0.95
    assert set(written["by_source"]) == {"covid", "rsna"}
    assert written["by_source"]["rsna"]["per_class"]["pneumonia"]["roc_auc"] == (
        comparison.baseline["test"].by_source["rsna"].per_class["pneumonia"].roc_auc.value)
