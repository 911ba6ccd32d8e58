"""The manifest's tables and warnings, and the summary printed from it."""

from beam_pipelines import manifest


def by_source(**counts: dict[str, int]) -> dict[str, dict[str, int]]:
    return manifest.source_class_table({(source.replace("_", "-"), name): count
                                        for source, classes in counts.items() for name, count in classes.items()})


def test_the_source_table_has_every_class_of_every_source():
    assert by_source(site_b={"normal": 2}, site_a={"covid19": 1}) == {
        "site-a": {"normal": 0, "pneumonia": 0, "covid19": 1}, "site-b": {"normal": 2, "pneumonia": 0, "covid19": 0}}


def test_the_manifest_warns_of_the_source_shortcut_first():
    table = by_source(nih={"normal": 24, "pneumonia": 24}, ieee={"covid19": 24})
    built = manifest.build_manifest(
        options={}, multipliers={}, inputs_listed=72, patients=dict.fromkeys([("train", "normal")], 1),
        originals={("train", "normal"): 24, ("train", "pneumonia"): 24, ("train", "covid19"): 24},
        source_originals={(source, name): count for source, classes in table.items()
                          for name, count in classes.items()},
        examples={("train", "normal"): 24, ("train", "pneumonia"): 24, ("train", "covid19"): 24},
        rejected={}, shards=[{"file": "train-00000-of-00001.tfrecord.gz", "split": "train", "records": 72}],
        notes={})
    assert built["warnings"][0].startswith("covid19 comes only from ieee, which holds no other class")
    assert built["originals_by_source"] == table


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
