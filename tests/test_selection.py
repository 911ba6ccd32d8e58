"""The selection policy: which listed images are used, as which class, and why the others are not."""

import pytest

from cxr_core import selection
from cxr_core.selection import Verdict

FRONTAL = selection.parse_allowed_views(selection.DEFAULT_ALLOWED_VIEWS)
CLASS_INFO = "stage_2_detailed_class_info.csv"


def test_a_verdict_is_a_class_or_a_rejection():
    accepted, rejected = Verdict.accept("normal"), Verdict.reject("label", "unknown_label", "why")
    assert accepted.accepted and accepted.label == "normal"
    assert not rejected.accepted and (rejected.stage, rejected.kind, rejected.reason) == ("label", "unknown_label",
                                                                                          "why")


@pytest.mark.parametrize("finding, expected", [
    ("Pneumonia/Viral/COVID-19", Verdict.accept("covid19")), ("COVID-19", Verdict.accept("covid19")),
    ("No Finding", Verdict.accept("normal")),
    ("Pneumonia/Bacterial/Streptococcus", Verdict.accept("pneumonia")), ("Legionella", Verdict.accept("pneumonia")),
    ("Pneumonia/Lipoid", Verdict.reject("label", "non_infective_finding",
                                        "finding 'Pneumonia/Lipoid' is not an infection")),
    ("todo", Verdict.reject("select", "unlabelled_finding", "finding 'todo' is not a diagnosis")),
    ("Pleural effusion", Verdict.reject("label", "unknown_finding", "finding 'Pleural effusion' is not a known class")),
])
def test_covid_findings(finding, expected):
    assert selection.covid_finding_verdict(finding) == expected


@pytest.mark.parametrize("patient, view, modality, expected_kind", [
    ("nan", "L", "CT", "missing_patient_id"),  # the patient is checked first
    ("1", "Axial", "CT", "not_xray"),
    ("1", "L", "X-ray", "view_not_allowed"),
    ("1", "", "", "view_not_allowed"),  # a covid row must state its view
    ("1", "ap  supine", "", None),  # the 2020 header has no modality column
])
def test_covid_rows(patient, view, modality, expected_kind):
    verdict = selection.covid_verdict(patient, view, modality, "COVID-19", FRONTAL)
    assert (None if verdict.accepted else verdict.kind) == expected_kind


@pytest.mark.parametrize("targets, classes, policy, expected", [
    ({"1"}, None, "exclude", Verdict.accept("pneumonia")),
    ({"0"}, None, "exclude", Verdict.accept("normal")),
    ({"0"}, {"Normal"}, "exclude", Verdict.accept("normal")),
    ({"0"}, {"No Lung Opacity / Not Normal"}, "pneumonia", Verdict.accept("pneumonia")),
    ({"0"}, {"No Lung Opacity / Not Normal"}, "exclude", Verdict.reject(
        "select", "excluded_not_normal",
        "'No Lung Opacity / Not Normal' is excluded (--rsna_not_normal=pneumonia includes it)")),
    ({"0", "1"}, None, "exclude", Verdict.reject(
        "label", "invalid_target", "Target values ['0', '1'] are not a single 0 or 1")),
    ({"2"}, None, "exclude", Verdict.reject("label", "invalid_target", "Target values ['2'] are not a single 0 or 1")),
    ({"0"}, set(), "exclude", Verdict.reject(
        "label", "missing_detailed_class",
        f"Target=0 but the patient is not in {CLASS_INFO}, so normal and not normal cannot be told apart")),
    ({"0"}, {"Normal", "Lung Opacity"}, "exclude", Verdict.reject(
        "label", "inconsistent_class", "detailed classes ['Lung Opacity', 'Normal'] disagree")),
    ({"0"}, {"Lung Opacity"}, "exclude", Verdict.reject(
        "label", "inconsistent_class", "Target=0 but detailed class is 'Lung Opacity'")),
])
def test_rsna_patients(targets, classes, policy, expected):
    assert selection.rsna_verdict(targets, classes, policy, CLASS_INFO) == expected


@pytest.mark.parametrize("image, label, patient, view, expected", [
    ("a.png", "COVID-19", "7", "PA", Verdict.accept("covid19")),
    ("a.png", "Covid", "7", "", Verdict.accept("covid19")),
    ("", "normal", "7", "", Verdict.reject("label", "missing_image", "image_uri is empty")),
    ("a.png", "effusion", "7", "", Verdict.reject(
        "label", "unknown_label", "label 'effusion' is not one of normal, pneumonia, covid19")),
    ("a.png", "normal", " N/A ", "", Verdict.reject(
        "label", "missing_patient_id", "patient_id is empty or a placeholder (nan, null, none)")),
    ("a.png", "normal", "7", "LL", Verdict.reject(
        "select", "view_not_allowed",
        "listed view 'LL' is not an allowed view (AP, AP ERECT, AP SEMI ERECT, AP SUPINE, PA; see --allowed_views)")),
])
def test_csv_rows(image, label, patient, view, expected):
    assert selection.csv_verdict(image, label, patient, view, FRONTAL) == expected


@pytest.mark.parametrize("view, modality, expected", [
    ("PA", "CR", None), ("AP", "DX", None), ("", "", None),
    ("LL", "CR", "view_not_allowed"), ("LATERAL", "DX", "view_not_allowed"), ("RL", "", "view_not_allowed"),
    ("PA", "CT", "not_xray"), ("", "MR", "not_xray"),
])
def test_dicom_header_views_and_modalities(view, modality, expected):
    verdict = selection.header_verdict("normal", view, modality, FRONTAL)
    assert (verdict.label if verdict.accepted else verdict.kind) == (expected or "normal")
    assert verdict.accepted or verdict.stage == "select"


def test_allowed_views_are_normalised_and_never_empty():
    assert selection.parse_allowed_views(" pa, ap  supine ,") == {"PA", "AP SUPINE"}
    with pytest.raises(ValueError, match="--allowed_views must name at least one view"):
        selection.parse_allowed_views(" , ")


@pytest.mark.parametrize("folder, expected", [
    ("No_findings", "normal"), ("NORMAL", "normal"), ("no finding", "normal"), ("Pneumonia", "pneumonia"),
    ("PNEUMONIA", "pneumonia"), ("bacteria", "pneumonia"), ("Viral", "pneumonia"), ("Covid-19", "covid19"),
    ("COVID19", "covid19"), ("covid", "covid19"), ("Lung_Opacity", None), ("Jane-Doe", None),
])
def test_class_folders_of_public_releases_are_known_by_default(folder, expected):
    verdict = selection.image_folder_verdict(folder, selection.parse_folder_classes(""), "p1")
    assert (verdict.label if verdict.accepted else None) == expected


def test_folder_classes_add_to_and_override_the_defaults():
    classes = selection.parse_folder_classes("Lung_Opacity=pneumonia, normal=covid19,Sick=COVID-19")
    assert classes["lungopacity"] == "pneumonia" and classes["normal"] == "covid19" and classes["sick"] == "covid19"
    assert classes["nofindings"] == "normal"
    for bad in ("Lung_Opacity", "Lung_Opacity=flu", "=normal"):
        with pytest.raises(ValueError, match="--folder_classes must be FOLDER=CLASS pairs"):
            selection.parse_folder_classes(bad)


def test_image_folder_files_need_a_class_folder_then_a_patient():
    classes = selection.parse_folder_classes("")
    assert selection.image_folder_verdict("Jane Doe", classes, "") == Verdict.reject(
        "label", "unknown_folder", "the sub-folder it is in names no class (map it with --folder_classes)")
    assert selection.image_folder_verdict("NORMAL", classes, "") == Verdict.reject(
        "label", "missing_patient_id", "--patient_id_regex finds no patient id in the file name")
    assert selection.image_folder_verdict("NORMAL", classes, "123") == Verdict.accept("normal")
