"""The three source layouts, read as published, with every unusable row accounted for."""

import csv
import os

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines import sources
from beam_pipelines.records import SourceImage


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
    rejected = result[sources.REJECTED] | "RejectTuples" >> beam.Map(
        lambda item: (os.path.basename(item.uri), item.stage, item.kind))
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
        images, rejected = read_source(pipeline, rsna_dir, sources.ParseRsnaLabelsFn("exclude"))
        assert_that(images, equal_to([
            ("p-normal", "normal", "p-normal.dcm", ""),
            ("p-four-boxes", "pneumonia", "p-four-boxes.dcm", ""),
        ]), label="Images")
        assert_that(rejected, equal_to([
            ("p-not-normal.dcm", "select", "excluded_not_normal"),
            ("p-conflict.dcm", "label", "invalid_target"),
        ]), label="Rejected")


def test_rsna_not_normal_can_be_mapped_to_pneumonia(beam_pipeline, rsna_dir):
    with beam_pipeline as pipeline:
        images, _ = read_source(pipeline, rsna_dir, sources.ParseRsnaLabelsFn("pneumonia"))
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
        images, rejected = read_source(pipeline, root, sources.ParseCovidMetadataFn())
        assert_that(images, equal_to([
            ("1", "covid19", "a.jpg", "PA"), ("1", "covid19", "b.png", "AP SUPINE"),
            ("2", "pneumonia", "c.jpg", "AP"), ("3", "normal", "d.jpg", "PA"),
        ]), label="Images")
        assert_that(rejected, equal_to([
            ("e.jpg", "select", "not_frontal"), ("f.jpg", "label", "non_infective_finding"),
            ("g.jpg", "select", "not_frontal"),
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
        images, rejected = read_source(pipeline, root, sources.ParseCovidMetadataFn())
        assert_that(images, equal_to([
            ("10", "covid19", "a.jpg", "PA"), ("10", "covid19", "b.jpg", "AP SEMI ERECT"),
            ("11", "pneumonia", "c.jpg", "AP ERECT"), ("12", "pneumonia", "d.png", "AP"),
            ("13", "normal", "e.png", "PA"),
        ]), label="Images")
        assert_that(rejected, equal_to([
            ("f.jpg", "select", "not_xray"), ("g.jpg", "select", "unlabelled_finding"),
            ("h.jpg", "select", "unlabelled_finding"), ("i.jpg", "select", "not_frontal"),
            ("j.jpg", "label", "unknown_finding"),
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
        result = pipeline | sources.ReadSource(path, sources.ParseLabelCsvFn())
        assert_that(result.images, equal_to([
            SourceImage("csv", str(tmp_path / "labels" / "img" / "a.dcm"), "img/a.dcm", "7", "covid19", "PA"),
            SourceImage("csv", "gs://bucket/b.png", "gs://bucket/b.png", "8", "normal", ""),
            SourceImage("csv", "/abs/c.jpg", "/abs/c.jpg", "9", "pneumonia", "AP"),
        ]), label="Images")
        assert_that(result[sources.REJECTED] | beam.Map(lambda item: (item.kind, item.stage)), equal_to([
            ("unknown_label", "label"), ("missing_patient_id", "label")]), label="Rejected")


@pytest.mark.parametrize("finding, expected", [
    ("Pneumonia/Viral/COVID-19", "covid19"), ("COVID-19", "covid19"), ("No Finding", "normal"),
    ("Pneumonia/Bacterial/Streptococcus", "pneumonia"), ("Legionella", "pneumonia"),
    ("Pneumonia/Lipoid", ("non_infective_finding", "finding 'Pneumonia/Lipoid' is not an infection")),
    ("todo", ("unlabelled_finding", "finding 'todo' is not a diagnosis")),
])
def test_covid_finding_classes(finding, expected):
    assert sources.covid_finding_class(finding) == expected


def test_source_problems_name_missing_files_and_columns(tmp_path):
    write_csv(str(tmp_path / "bad.csv"), ["uri", "label"], [["a", "normal"]])
    problems = sources.source_problems(str(tmp_path / "nowhere"), None, str(tmp_path / "bad.csv"))
    assert problems == [
        f"{tmp_path}/nowhere/stage_2_train_labels.csv does not exist",
        f"{tmp_path}/bad.csv lacks columns ['image_uri', 'patient_id']",
    ]
