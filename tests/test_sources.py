"""The three source layouts, read as published, with every unusable row accounted for.

Which rows are used and as which class is tested in test_selection.py, how label files
are parsed in test_label_files.py; here each reader runs as a Beam transform, and the
checks before launch name every broken label file.
"""

import codecs
import csv
import os

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines import label_files, rejections, sources, splitting
from beam_pipelines.records import SourceImage
from cxr_core import pseudonyms, selection

KEY = splitting.PatientKey("test-patient-key-0123456789")
FRONTAL = selection.parse_allowed_views(selection.DEFAULT_ALLOWED_VIEWS)


def write_csv(path, header, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def read_source(pipeline, location, parse_fn):
    result = pipeline | sources.ReadSource(location, parse_fn)
    images = result.images | "ImageTuples" >> beam.Map(
        lambda image: (image.patient_id, image.label, os.path.basename(image.image_uri), image.view))
    rejected = result[rejections.REJECTED] | "RejectTuples" >> beam.Map(
        lambda item: (item.listing, item.line, item.stage, item.kind))
    return images, rejected


@pytest.fixture
def rsna_dir(tmp_path):
    root = str(tmp_path / "rsna")
    write_csv(f"{root}/stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], [
        ["p-normal", "", "", "", "", "0"],
        ["p-four-boxes", "10", "20", "30", "40", "1"],
        ["p-four-boxes", "50", "20", "30", "40", "1"],
        ["p-four-boxes", "10", "80", "30", "40", "1"],
        ["p-four-boxes", "50", "80", "30", "40", "1"],
        ["p-not-normal", "", "", "", "", "0"],
        ["p-conflict", "", "", "", "", "0"],
        ["p-conflict", "1", "2", "3", "4", "1"],
    ])
    write_csv(f"{root}/stage_2_detailed_class_info.csv", ["patientId", "class"], [
        ["p-normal", "Normal"],
        *[["p-four-boxes", "Lung Opacity"]] * 4,
        ["p-not-normal", "No Lung Opacity / Not Normal"],
        ["p-conflict", "Lung Opacity"], ["p-conflict", "Lung Opacity"],
    ])
    return root


def test_rsna_gives_one_image_per_patient_and_rejects_the_rest(beam_pipeline, rsna_dir):
    with beam_pipeline as pipeline:
        images, rejected = read_source(pipeline, rsna_dir, sources.ParseRsnaLabelsFn("exclude", KEY))
        assert_that(images, equal_to([
            ("p-normal", "normal", "p-normal.dcm", ""),
            ("p-four-boxes", "pneumonia", "p-four-boxes.dcm", ""),
        ]), label="Images")
        assert_that(rejected, equal_to([
            (sources.RSNA_LABELS_FILE, 7, "select", "excluded_not_normal"),
            (sources.RSNA_LABELS_FILE, 8, "label", "invalid_target"),
        ]), label="Rejected")


def test_rsna_not_normal_can_be_mapped_to_pneumonia(beam_pipeline, rsna_dir):
    with beam_pipeline as pipeline:
        images, _ = read_source(pipeline, rsna_dir, sources.ParseRsnaLabelsFn("pneumonia", KEY))
        labels = images | beam.MapTuple(lambda patient, label, *_: (patient, label))
        assert_that(labels, equal_to([
            ("p-normal", "normal"), ("p-four-boxes", "pneumonia"), ("p-not-normal", "pneumonia")]))


COVID_2020_HEADER = ["Patientid", "offset", "sex", "age", "finding", "survival", "view", "date",
                     "location", "filename", "doi", " url", "license", "notes"]
COVID_LATER_HEADER = ["patientid", "offset", "sex", "age", "finding", "RT_PCR_positive", "survival",
                      "intubated", "view", "modality", "date", "location", "folder", "filename", "doi",
                      "url", "license", "clinical_notes", "other_notes"]


def covid_2020_row(patient, finding, view, filename):
    row = dict.fromkeys(COVID_2020_HEADER, "")
    row.update({"Patientid": patient, "finding": finding, "view": view, "filename": filename})
    return [row[name] for name in COVID_2020_HEADER]


def covid_later_row(patient, finding, view, modality, filename):
    row = dict.fromkeys(COVID_LATER_HEADER, "")
    row.update({"patientid": patient, "finding": finding, "view": view, "modality": modality,
                "folder": "images", "filename": filename})
    return [row[name] for name in COVID_LATER_HEADER]


def test_the_rsna_listing_gives_each_patient_its_verdict_at_its_first_row(rsna_dir):
    listed = [(row.line, row.image_key, row.verdict) for row in sources.list_rsna(rsna_dir, "exclude")]
    assert listed == [
        (2, "stage_2_train_images/p-normal.dcm", selection.Verdict.accept("normal")),
        (3, "stage_2_train_images/p-four-boxes.dcm", selection.Verdict.accept("pneumonia")),
        (7, "stage_2_train_images/p-not-normal.dcm", selection.Verdict.reject(
            "select", "excluded_not_normal",
            "'No Lung Opacity / Not Normal' is excluded (--rsna_not_normal=pneumonia includes it)")),
        (8, "stage_2_train_images/p-conflict.dcm", selection.Verdict.reject(
            "label", "invalid_target", "Target values ['0', '1'] are not a single 0 or 1")),
    ]


def test_covid_2020_header_generation(beam_pipeline, tmp_path):
    root = str(tmp_path / "covid2020")
    write_csv(f"{root}/metadata.csv", COVID_2020_HEADER, [
        covid_2020_row("1", "COVID-19", "PA", "a.jpg"),
        covid_2020_row("1", "COVID-19, ARDS", "AP Supine", "b.png"),
        covid_2020_row("2", "Streptococcus", "AP", "c.jpg"),
        covid_2020_row("3", "No Finding", "PA", "d.jpg"),
        covid_2020_row("4", "SARS", "L", "e.jpg"),
        covid_2020_row("5", "ARDS", "PA", "f.jpg"),
        covid_2020_row("6", "COVID-19", "Axial", "g.jpg"),
    ])
    with beam_pipeline as pipeline:
        images, rejected = read_source(pipeline, root, sources.ParseCovidMetadataFn(KEY, FRONTAL))
        assert_that(images, equal_to([
            ("1", "covid19", "a.jpg", "PA"), ("1", "covid19", "b.png", "AP SUPINE"),
            ("2", "pneumonia", "c.jpg", "AP"), ("3", "normal", "d.jpg", "PA"),
        ]), label="Images")
        assert_that(rejected, equal_to([
            ("metadata.csv", 6, "select", "view_not_allowed"), ("metadata.csv", 7, "label", "non_infective_finding"),
            ("metadata.csv", 8, "select", "view_not_allowed"),
        ]), label="Rejected")


def test_covid_later_header_generation(beam_pipeline, tmp_path):
    root = str(tmp_path / "covid")
    write_csv(f"{root}/metadata.csv", COVID_LATER_HEADER, [
        covid_later_row("10", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "a.jpg"),
        covid_later_row("10", "Pneumonia/Viral/COVID-19", "AP semi erect", "X-ray", "b.jpg"),
        covid_later_row("11", "Pneumonia/Viral/SARS", "AP erect", "X-ray", "c.jpg"),
        covid_later_row("12", "Pneumonia/Fungal/Pneumocystis", "AP", "X-ray", "d.png"),
        covid_later_row("13", "No Finding", "PA", "X-ray", "e.png"),
        covid_later_row("14", "Pneumonia/Viral/COVID-19", "Axial", "CT", "f.jpg"),
        covid_later_row("15", "todo", "PA", "X-ray", "g.jpg"),
        covid_later_row("16", "Unknown", "PA", "X-ray", "h.jpg"),
        covid_later_row("17", "Pneumonia/Bacterial/Klebsiella", "L", "X-ray", "i.jpg"),
        covid_later_row("18", "Pleural effusion", "PA", "X-ray", "j.jpg"),
    ])
    with beam_pipeline as pipeline:
        images, rejected = read_source(pipeline, root, sources.ParseCovidMetadataFn(KEY, FRONTAL))
        assert_that(images, equal_to([
            ("10", "covid19", "a.jpg", "PA"), ("10", "covid19", "b.jpg", "AP SEMI ERECT"),
            ("11", "pneumonia", "c.jpg", "AP ERECT"), ("12", "pneumonia", "d.png", "AP"),
            ("13", "normal", "e.png", "PA"),
        ]), label="Images")
        assert_that(rejected, equal_to([
            ("metadata.csv", 7, "select", "not_xray"), ("metadata.csv", 8, "select", "unlabelled_finding"),
            ("metadata.csv", 9, "select", "unlabelled_finding"), ("metadata.csv", 10, "select", "view_not_allowed"),
            ("metadata.csv", 11, "label", "unknown_finding"),
        ]), label="Rejected")


def test_csv_source_resolves_relative_uris_and_rejects_unknown_labels(beam_pipeline, tmp_path):
    path = str(tmp_path / "labels" / "mine.csv")
    write_csv(path, ["image_uri", "label", "patient_id", "view"], [
        ["img/a.dcm", "COVID-19", "7", "pa"],
        ["gs://bucket/b.png", "normal", "8", ""],
        ["/abs/c.jpg", "Pneumonia", "9", "AP"],
        ["img/d.dcm", "effusion", "10", ""],
        ["img/e.dcm", "normal", "", ""],
    ])
    with beam_pipeline as pipeline:
        result = pipeline | sources.ReadSource(path, sources.ParseLabelCsvFn(KEY, FRONTAL))
        assert_that(result.images, equal_to([
            SourceImage("csv", str(tmp_path / "labels" / "img" / "a.dcm"), "img/a.dcm", "7", "covid19", "PA",
                        "--csv", 2),
            SourceImage("csv", "gs://bucket/b.png", "gs://bucket/b.png", "8", "normal", "", "--csv", 3),
            SourceImage("csv", "/abs/c.jpg", "/abs/c.jpg", "9", "pneumonia", "AP", "--csv", 4),
        ]), label="Images")
        assert_that(result[rejections.REJECTED] | beam.Map(lambda item: (item.kind, item.stage, item.line)), equal_to([
            ("unknown_label", "label", 5), ("missing_patient_id", "label", 6)]), label="Rejected")


def test_source_problems_name_missing_files_and_columns(tmp_path):
    write_csv(str(tmp_path / "bad.csv"), ["uri", "label"], [["a", "normal"]])
    problems = sources.source_problems(str(tmp_path / "nowhere"), None, str(tmp_path / "bad.csv"))
    assert problems == [
        f"{tmp_path}/nowhere/stage_2_train_labels.csv does not exist",
        f"{tmp_path}/bad.csv lacks columns ['image_uri', 'patient_id']",
    ]


# Every label row on its own (issue items 1, 4, 8) -----------------------------------------------

def rejected_rows(pipeline, location, parse_fn):
    """(listing, line, stage, kind) of every rejection, and the reasons, which must not echo ids."""
    result = pipeline | sources.ReadSource(location, parse_fn)
    return result, result[rejections.REJECTED] | "Where" >> beam.Map(
        lambda item: (item.listing, item.line, item.stage, item.kind))


def test_csv_rows_with_wrong_fields_unknown_labels_or_placeholder_patients_are_rejected_by_line(
        beam_pipeline, tmp_path):
    path = tmp_path / "own.csv"
    path.write_text("image_uri,label,patient_id\n"
                    "img/ok.png,normal,patient-A\n"
                    "img/two-fields.png,normal\n"
                    "\n"
                    "img/four.png,normal,patient-B,extra\n"
                    "img/flu.png,influenza-x,patient-C\n"
                    "img/empty.png,normal,\n"
                    "img/nan.png,pneumonia,nan\n"
                    "img/null.png,pneumonia,NULL\n"
                    "img/none.png,covid19, None \n"
                    ",normal,patient-D\n"
                    ",,\n")
    with beam_pipeline as pipeline:
        result, rejected = rejected_rows(pipeline, str(path), sources.ParseLabelCsvFn(KEY, FRONTAL))
        assert_that(result.images | beam.Map(lambda image: (image.image_key, image.line)),
                    equal_to([("img/ok.png", 2)]), label="Images")
        assert_that(rejected, equal_to([
            ("--csv", 3, "label", "wrong_field_count"), ("--csv", 5, "label", "wrong_field_count"),
            ("--csv", 6, "label", "unknown_label"), ("--csv", 7, "label", "missing_patient_id"),
            ("--csv", 8, "label", "missing_patient_id"), ("--csv", 9, "label", "missing_patient_id"),
            ("--csv", 10, "label", "missing_patient_id"), ("--csv", 11, "label", "missing_image"),
        ]), label="Rejected")
        assert_that(result[rejections.REJECTED] | "Texts" >> beam.Map(lambda item: item.to_json()),
                    lambda lines: _assert_no_identifier(lines, ["patient-", "img/", str(tmp_path)]),
                    label="NoIdentifiers")


def _assert_no_identifier(lines, identifiers):
    assert lines
    for line in lines:
        assert not [identifier for identifier in identifiers if identifier in line], line


def test_rsna_rows_are_judged_one_by_one(beam_pipeline, tmp_path):
    root = tmp_path / "rsna"
    root.mkdir()
    (root / sources.RSNA_LABELS_FILE).write_text(
        "patientId,x,y,width,height,Target\n"
        "p-normal,,,,,0\n"
        "p-no-target,,,,\n"
        "nan,,,,,1\n"
        "p-pneumonia,1,2,3,4,1\n"
        "p-not-in-class-info,,,,,0\n"
        "p-pneumonia-not-in-class-info,1,2,3,4,1\n")
    (root / sources.RSNA_CLASS_INFO_FILE).write_text(
        "patientId,class\n"
        "p-normal,Normal\n"
        "p-no-target,Normal\n"
        "p-pneumonia,Lung Opacity\n"
        "p-broken\n")
    with beam_pipeline as pipeline:
        result, rejected = rejected_rows(pipeline, str(root), sources.ParseRsnaLabelsFn("exclude", KEY))
        assert_that(result.images | beam.Map(lambda image: (image.patient_id, image.label, image.line)), equal_to([
            ("p-normal", "normal", 2), ("p-pneumonia", "pneumonia", 5),
            ("p-pneumonia-not-in-class-info", "pneumonia", 7)]), label="Images")
        assert_that(rejected, equal_to([
            (sources.RSNA_LABELS_FILE, 3, "label", "wrong_field_count"),
            (sources.RSNA_LABELS_FILE, 4, "label", "missing_patient_id"),
            (sources.RSNA_LABELS_FILE, 6, "label", "missing_detailed_class"),
            (sources.RSNA_CLASS_INFO_FILE, 5, "label", "wrong_field_count"),
        ]), label="Rejected")


def test_covid_rows_without_a_patient_are_rejected_not_merged(beam_pipeline, tmp_path):
    root = str(tmp_path / "covid")
    write_csv(f"{root}/metadata.csv", COVID_LATER_HEADER, [
        covid_later_row("", "COVID-19", "PA", "X-ray", "a.jpg"),
        covid_later_row("", "COVID-19", "PA", "X-ray", "b.jpg"),
        covid_later_row("nan", "No Finding", "PA", "X-ray", "c.jpg"),
        covid_later_row("7", "No Finding", "PA", "X-ray", ""),
        covid_later_row("8", "No Finding", "PA", "X-ray", "d.jpg")[:5],
        covid_later_row("9", "No Finding", "PA", "X-ray", "e.jpg"),
    ])
    with beam_pipeline as pipeline:
        result, rejected = rejected_rows(pipeline, root, sources.ParseCovidMetadataFn(KEY, FRONTAL))
        assert_that(result.images | beam.Map(lambda image: image.patient_id), equal_to(["9"]), label="Images")
        assert_that(rejected, equal_to([
            ("metadata.csv", 2, "label", "missing_patient_id"), ("metadata.csv", 3, "label", "missing_patient_id"),
            ("metadata.csv", 4, "label", "missing_patient_id"), ("metadata.csv", 5, "label", "missing_image"),
            ("metadata.csv", 6, "label", "wrong_field_count")]), label="Rejected")


def test_views_outside_the_allowed_ones_are_rejected_for_csv_sources(beam_pipeline, tmp_path):
    path = tmp_path / "own.csv"
    path.write_text("image_uri,label,patient_id,view\n"
                    "a.png,normal,1,PA\nb.png,normal,2,L\nc.png,normal,3,ll\nd.png,normal,4,Lateral\n"
                    "e.png,normal,5,\nf.png,normal,6,rl\n")
    with beam_pipeline as pipeline:
        result, rejected = rejected_rows(pipeline, str(path), sources.ParseLabelCsvFn(
            KEY, selection.parse_allowed_views("PA, ll")))
        assert_that(result.images | beam.Map(lambda image: (image.image_key, image.view)), equal_to([
            ("a.png", "PA"), ("c.png", "LL"), ("e.png", "")]), label="Images")
        assert_that(rejected, equal_to([("--csv", line, "select", "view_not_allowed") for line in (3, 5, 7)]),
                    label="Rejected")


# Label files that cannot be read row by row fail before the job starts -------------------------

def test_a_non_utf8_byte_deep_in_a_file_is_found_before_launch(tmp_path):
    path = tmp_path / "own.csv"
    rows = "".join(f"img/{index}.png,normal,patient-{index}\n" for index in range(2000))
    path.write_bytes(b"image_uri,label,patient_id\n" + rows.encode() + "img/x.png,normal,Jos\xe9\n".encode("latin-1"))
    assert sources.source_problems(None, None, str(path)) == [
        f"{path} is not valid UTF-8: byte 0xe9 on line 2002; save it as UTF-8"]


def test_a_utf16_file_is_named_before_launch(tmp_path):
    path = tmp_path / "own.csv"
    path.write_bytes(codecs.BOM_UTF16_LE + "image_uri,label,patient_id\na.png,normal,1\n".encode("utf-16-le"))
    assert sources.source_problems(None, None, str(path)) == [f"{path} is UTF-16 text; save it as UTF-8"]


@pytest.mark.parametrize("text, opened_on", [
    ('image_uri,label,patient_id\na.png,normal,1\nb.png,"normal,2\nc.png,normal,3\nd.png,normal,4\n', 3),
    ('image_uri,label,patient_id\na.png,"normal",1\nb.png,"pneumonia,2\nc.png,normal,3\n"e.png",normal,5\n', 3),
])
def test_an_unclosed_quote_that_swallows_rows_fails_before_launch(tmp_path, text, opened_on):
    path = tmp_path / "own.csv"
    path.write_text(text)
    [problem] = sources.source_problems(None, None, str(path))
    assert problem.startswith(f"{path}: a quote opened in the row starting on line {opened_on} is not closed")


def test_a_quoted_line_break_in_free_text_is_kept(tmp_path):
    root = tmp_path / "covid"
    row = covid_later_row("1", "COVID-19", "PA", "X-ray", "a.jpg")
    row[COVID_LATER_HEADER.index("clinical_notes")] = "cough, fever\nday 3: worse, admitted"
    write_csv(str(root / "metadata.csv"), COVID_LATER_HEADER, [row, covid_later_row("2", "No Finding", "PA",
                                                                                      "X-ray", "b.jpg")])
    assert sources.source_problems(None, str(root), None) == []
    rows = label_files.read_label_file(str(root / "metadata.csv")).rows
    assert [row.line for row in rows] == [2, 4]


def test_every_label_file_has_its_columns_checked_before_launch(tmp_path):
    rsna = tmp_path / "rsna"
    rsna.mkdir()
    (rsna / sources.RSNA_LABELS_FILE).write_text("patientId,x,y,width,height\np,,,,\n")
    (rsna / sources.RSNA_CLASS_INFO_FILE).write_text("patientId,klass\np,Normal\n")
    covid = tmp_path / "covid"
    write_csv(str(covid / "metadata.csv"), ["PatientID", "finding", "view"], [["1", "COVID-19", "PA"]])
    assert sources.source_problems(str(rsna), str(covid), None) == [
        f"{rsna}/{sources.RSNA_LABELS_FILE} lacks columns ['Target']",
        f"{rsna}/{sources.RSNA_CLASS_INFO_FILE} lacks columns ['class']",
        f"{covid}/metadata.csv lacks columns ['filename']",
    ]


# A CSV's own sources and patient categories -----------------------------------------------------

def test_a_csv_row_names_its_own_source_and_coarse_sex_and_age(beam_pipeline, tmp_path):
    path = tmp_path / "sites.csv"
    path.write_text("image_uri,label,patient_id,view,source,sex,age\n"
                    "a.png,normal,1,PA,site-a,F,47\n"
                    "b.png,pneumonia,2,,site-b-2,male,090Y\n"
                    "c.png,covid19,3,,,,\n"
                    "d.png,flu,4,,site-a,F,1961-04-02\n")
    with beam_pipeline as pipeline:
        result = pipeline | sources.ReadSource(str(path), sources.ParseLabelCsvFn(KEY, FRONTAL))
        assert_that(result.images | beam.Map(lambda image: (image.image_key, image.source, image.sex, image.age_band)),
                    equal_to([("a.png", "site-a", "F", "40-49"), ("b.png", "site-b-2", "M", "90+"),
                              ("c.png", "csv", "unknown", "unknown")]), label="Images")
        assert_that(result[rejections.REJECTED] | beam.Map(lambda item: (item.line, item.source, item.image_id)),
                    equal_to([(5, "site-a", pseudonyms.pseudonymous_image_id(KEY.load(), "site-a", "d.png"))]),
                    label="Rejected")


def test_csv_sources_that_break_the_naming_rule_are_found_before_launch(tmp_path):
    path = tmp_path / "sites.csv"
    path.write_text("image_uri,label,patient_id,source\n"
                    "a.png,normal,1,site-a\nb.png,normal,2,\nc.png,normal,3,Site A\nd.png,normal,4\n"
                    f"e.png,normal,5,{'x' * 33}\nf.png,normal,6,site_b\n")
    assert sources.source_problems(None, None, str(path)) == [
        f"{path} line 4: the source column must hold lowercase letters, digits and dashes, at most 32 characters "
        "(and 2 more rows)"]


@pytest.mark.parametrize("name, problem", [
    ("nih-chestxray8", False), ("a", False), ("x" * 32, False),
    ("", True), ("x" * 33, True), ("Site", True), ("site_a", True), ("site a", True), ("sité", True),
])
def test_source_names(name, problem):
    assert (sources.source_name_problem(name) is not None) == problem


@pytest.mark.parametrize("folder_name, source", [
    ("X-Ray Image DataSet", "x-ray-image-dataset"), ("chest_xray", "chest-xray"), ("__", "image-folder"),
    ("A" * 40, "a" * 32), ("Site " + "b" * 27 + "-c", "site-" + "b" * 27),
])
def test_an_image_folder_name_becomes_a_source_name(folder_name, source):
    assert sources.sanitized_source_name(folder_name) == source
    assert sources.source_name_problem(source) is None


def test_the_covid_reader_passes_sex_and_age_as_categories(tmp_path):
    root = str(tmp_path / "covid")
    rows = [covid_later_row("1", "COVID-19", "PA", "X-ray", "a.jpg"), covid_later_row("2", "No Finding", "PA",
                                                                                      "X-ray", "b.jpg")]
    rows[0][COVID_LATER_HEADER.index("sex")], rows[0][COVID_LATER_HEADER.index("age")] = "M", "65"
    write_csv(f"{root}/metadata.csv", COVID_LATER_HEADER, rows)
    assert [(row.sex, row.age_band) for row in sources.list_covid(root, FRONTAL)] == [
        ("M", "60-69"), ("unknown", "unknown")]


# An image folder: one sub-folder per class ------------------------------------------------------

@pytest.fixture
def image_folder(tmp_path):
    """A Kermany-style release: NORMAL/ and PNEUMONIA/, a folder named after a patient, a README at the top."""
    root = tmp_path / "chest_xray"
    files = ["NORMAL/IM-0115-0001.jpeg", "NORMAL/IM-0117-0001.jpeg", "PNEUMONIA/person1_bacteria_1.jpeg",
             "PNEUMONIA/person1_virus_6.jpeg", "PNEUMONIA/person22_bacteria_77.jpeg", "Jane Doe/scan.png"]
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"pixels")
    (root / "README.md").write_text("not an image of any class")
    (root / "NORMAL" / "nested").mkdir()
    (root / "NORMAL" / "nested" / "deeper.png").write_bytes(b"pixels")
    return root


def test_an_image_folder_lists_its_files_by_their_place_in_the_sorted_listing(image_folder):
    assert sources.image_folder_files(str(image_folder)) == [
        "Jane Doe/scan.png", "NORMAL/IM-0115-0001.jpeg", "NORMAL/IM-0117-0001.jpeg",
        "PNEUMONIA/person1_bacteria_1.jpeg", "PNEUMONIA/person1_virus_6.jpeg", "PNEUMONIA/person22_bacteria_77.jpeg"]
    rows = list(sources.list_image_folder(str(image_folder), selection.parse_folder_classes("")))
    assert [(row.listing, row.line, row.verdict.label or row.verdict.kind, row.patient_id) for row in rows] == [
        ("--image_folder", 1, "unknown_folder", "Jane Doe/scan.png"),
        ("--image_folder", 2, "normal", "NORMAL/IM-0115-0001.jpeg"),
        ("--image_folder", 3, "normal", "NORMAL/IM-0117-0001.jpeg"),
        ("--image_folder", 4, "pneumonia", "PNEUMONIA/person1_bacteria_1.jpeg"),
        ("--image_folder", 5, "pneumonia", "PNEUMONIA/person1_virus_6.jpeg"),
        ("--image_folder", 6, "pneumonia", "PNEUMONIA/person22_bacteria_77.jpeg"),
    ]
    assert rows[1].image_uri == str(image_folder / "NORMAL" / "IM-0115-0001.jpeg")


def test_an_image_folder_reader_takes_patients_from_file_names_and_names_no_folder(beam_pipeline, image_folder):
    folder = sources.ImageFolder(str(image_folder), "kermany", selection.parse_folder_classes(""),
                                 r"person(\d+)_")
    with beam_pipeline as pipeline:
        result = pipeline | sources.ReadSource(folder.path, sources.ParseImageFolderFn(folder, KEY))
        assert_that(result.images | beam.Map(lambda image: (image.line, image.source, image.label, image.patient_id)),
                    equal_to([(4, "kermany", "pneumonia", "1"), (5, "kermany", "pneumonia", "1"),
                              (6, "kermany", "pneumonia", "22")]), label="Images")
        rejected = result[rejections.REJECTED]
        assert_that(rejected | beam.Map(lambda item: (item.listing, item.line, item.source, item.stage, item.kind)),
                    equal_to([("--image_folder", 1, "kermany", "label", "unknown_folder"),
                              ("--image_folder", 2, "kermany", "label", "missing_patient_id"),
                              ("--image_folder", 3, "kermany", "label", "missing_patient_id")]), label="Rejected")
        assert_that(rejected | "Texts" >> beam.Map(lambda item: item.to_json()),
                    lambda lines: _assert_no_identifier(lines, ["Jane", "IM-0115", str(image_folder)]),
                    label="NoIdentifiers")


@pytest.mark.parametrize("regex, problem", [
    (r"person(\d+)_", None), (r"^(IM-\d+)-", None),
    (r"person\d+_", "--patient_id_regex must have exactly one group, the patient id (e.g. person(\\d+)_), not 0"),
    (r"(person)(\d+)", "--patient_id_regex must have exactly one group, the patient id (e.g. person(\\d+)_), not 2"),
    (r"person(\d+", "--patient_id_regex is not a regular expression (missing ), unterminated subpattern at "
                    "position 6)"),
])
def test_patient_id_regexes_need_one_group(regex, problem):
    assert sources.patient_id_regex_problem(regex) == problem


def test_an_image_folder_without_files_in_sub_folders_is_refused_before_launch(tmp_path, image_folder):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(b"pixels")
    assert sources.source_problems(None, None, None, str(image_folder)) == []
    assert sources.source_problems(None, None, None, str(flat)) == [
        f"{flat} does not exist or holds no file in a sub-folder; give one sub-folder of images per class"]
    assert sources.source_problems(None, None, None, str(tmp_path / "nowhere")) == [
        f"{tmp_path}/nowhere does not exist or holds no file in a sub-folder; give one sub-folder of images per class"]
