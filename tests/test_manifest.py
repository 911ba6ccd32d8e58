"""The manifest's tables and warnings, and the summary printed from it."""

from beam_pipelines import manifest


def by_source(**counts: dict[str, int]) -> dict[str, dict[str, int]]:
    return manifest.source_class_table({(source.replace("_", "-"), name): count
                                        for source, classes in counts.items() for name, count in classes.items()})


def test_the_source_table_has_every_class_of_every_source():
    assert by_source(site_b={"normal": 2}, site_a={"covid19": 1}) == {
        "site-a": {"normal": 0, "pneumonia": 0, "covid19": 1}, "site-b": {"normal": 2, "pneumonia": 0, "covid19": 0}}


def test_a_class_drawn_from_one_source_among_several_is_flagged():
    table = by_source(nih={"normal": 24, "pneumonia": 24}, ieee={"covid19": 24})
    assert manifest.single_source_warnings(table) == [
        "normal comes only from nih: normal vs the rest can be learnt from the source",
        "pneumonia comes only from nih: pneumonia vs the rest can be learnt from the source",
        "covid19 comes only from ieee: covid19 vs the rest can be learnt from the source"]
    mixed = by_source(rsna={"normal": 5, "pneumonia": 5}, covid={"normal": 1, "pneumonia": 2, "covid19": 9})
    assert manifest.single_source_warnings(mixed) == [
        "covid19 comes only from covid: covid19 vs the rest can be learnt from the source"]


def test_one_source_alone_cannot_be_told_apart_from_itself():
    assert manifest.single_source_warnings(by_source(rsna={"normal": 5, "pneumonia": 5})) == []


def test_an_image_folder_without_a_patient_pattern_is_flagged_as_split_by_image():
    assert manifest.split_by_image_warnings({"image_folder": "/data/xray", "patient_id_regex": ""})
    assert not manifest.split_by_image_warnings({"image_folder": "/data/xray", "patient_id_regex": r"person(\d+)_"})
    assert not manifest.split_by_image_warnings({"image_folder": None, "csv": "labels.csv"})


def test_the_summary_opens_with_the_warnings_and_shows_the_source_table():
    classes = {"normal": 0, "pneumonia": 0, "covid19": 0}
    tables = {split: dict(classes) for split in ("train", "val", "test")}
    summary = manifest.format_summary({
        "warnings": ["covid19 comes only from ieee: covid19 vs the rest can be learnt from the source"],
        "patients": tables, "originals": tables, "examples": tables,
        "originals_by_source": by_source(nih={"normal": 24, "pneumonia": 23}, ieee_8023={"covid19": 7}),
        "inputs": {"listed": 54, "used": 54, "rejected": 0}, "rejected": {}, "notes": {},
        "augmentation_multipliers": {}, "shards": []}).splitlines()
    assert summary[0] == "WARNING: covid19 comes only from ieee: covid19 vs the rest can be learnt from the source"
    table = summary[summary.index("originals per source (all splits):") + 1:][:4]
    assert table == ["source       normal  pneumonia  covid19",
                     "---------------------------------------",
                     "ieee-8023         0          0        7",
                     "nih              24         23        0"]
