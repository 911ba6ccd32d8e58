"""python -m trainer.evaluate: an exported model scored on records or raw images it never saw.

One untrained ResNet50 at 64² (the size at which Grad-CAM maps are not constant) is
exported with a decision rule, as the trainer leaves it; its figures are meaningless, so
the tests check what is written, where it comes from, and that it equals training's own
evaluation of the same records.
"""

import csv
import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from beam_pipelines import example_codec
from cxr_core import contract, decision_rule, imaging
from serving import export, gradcam, model_store
from synthetic import records
from trainer import evaluate, input_pipeline
from trainer import model as model_lib
from trainer.evaluation import evaluation_set, model_card, report
from trainer.evaluation import predictions as predictions_lib

IMAGE_SIZE = 64
RULE = decision_rule.DecisionRule("argmax", (0.25, 0.25, 0.5), (0.45, 0.45, 0.1))
TRAINING_SOURCES = {"covid": {"normal": 20, "pneumonia": 10, "covid19": 60},
                    "rsna": {"normal": 200, "pneumonia": 150, "covid19": 0}}


def write_records(path: str, split: str, per_class: int, sources: tuple[str, ...]) -> None:
    """Originals of every class from each of `sources`, with views, sexes and age bands."""
    serialized = []
    for source in sources:
        for label in contract.CLASS_NAMES:
            for index in range(per_class):
                image_id = f"{source}-{label}-{index}"
                fields = example_codec.ExampleFields(
                    label=label, image_id=image_id, source=source, view=("PA", "AP")[index % 2],
                    patient_id=f"patient-{image_id}", sex=("F", "M")[index % 2], age_band="40-49")
                pixels = records.render_pixels(label, IMAGE_SIZE, hash(image_id) % 1000)
                serialized.append(example_codec.serialize_example(pixels, fields))
    os.makedirs(path, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(path, contract.shard_name(split, 0, 1)),
                              options=contract.TFRECORD_COMPRESSION) as writer:
        for record in serialized:
            writer.write(record)


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory) -> str:
    """A job dir as the trainer leaves it, trained on a data dir whose manifest has a source table."""
    training_data = tmp_path_factory.mktemp("training_data")
    (training_data / contract.MANIFEST_FILE).write_text(json.dumps({"originals_by_source": TRAINING_SOURCES}))
    job_dir = str(tmp_path_factory.mktemp("job"))
    keras.utils.set_random_seed(7)
    model = model_lib.build_model(IMAGE_SIZE, weights=None)
    export.export_saved_model(model, os.path.join(job_dir, "export"), model_store.ModelContract(
        image_size=IMAGE_SIZE, class_names=contract.CLASS_NAMES, preprocessing_version=contract.PREPROCESSING_VERSION,
        training_config={"config": {"data_dir": str(training_data), "weights": "none"}}, decision_rule=RULE))
    model.save(os.path.join(job_dir, gradcam.KERAS_MODEL_FILE))
    return job_dir


@pytest.fixture(scope="module")
def external_records(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("external"))
    write_records(path, "test", per_class=4, sources=("hospital-a", "hospital-b"))
    write_records(path, "val", per_class=2, sources=("hospital-a",))
    return path


@pytest.fixture(scope="module")
def external_run(job_dir, external_records, tmp_path_factory) -> tuple[str, evaluate.Evaluation]:
    output_dir = str(tmp_path_factory.mktemp("report"))
    result = evaluate.run([f"--model_dir={job_dir}/export", f"--data_dir={external_records}",
                           f"--output_dir={output_dir}"])
    return output_dir, result


def test_the_report_names_model_data_and_provenance_and_opens_with_the_audit(external_run, job_dir,
                                                                             external_records):
    output_dir, result = external_run
    text = open(os.path.join(output_dir, evaluate.REPORT_FILE)).read()
    lines = text.splitlines()
    assert lines[0] == f"EXTERNAL EVALUATION of the model in {job_dir}/export"
    assert "argmax after prior correction" in lines[1]
    assert lines[2] == (f"data (external): originals of the train+val+test records in {external_records}")
    assert lines[5:7] == ["SHORTCUT AUDIT", "=============="]
    # The external data has two sources and every class in both: no single-source class.
    assert lines[7] == "no shortcut warning" or lines[7].startswith("WARNING: ")
    assert "EXTERNAL\n========" in text and "within each source" in text
    assert result.metrics["external"].overall.num_examples == 2 * 3 * 4 + 3 * 2
    assert set(result.metrics["external"].by_source) == {"hospital-a", "hospital-b"}
    assert result.audit.source_table.counts["hospital-b"] == {"normal": 4, "pneumonia": 4, "covid19": 4}
    assert result.audit.probe.sources == ("hospital-a", "hospital-b")


def test_every_file_of_the_evaluation_is_written(external_run):
    output_dir, result = external_run
    for name in (report.METRICS_FILE, report.CONFUSION_MATRIX_FILE, report.ROC_FILE, report.DECISION_RULE_FILE,
                 evaluate.CALIBRATION_FILE, evaluate.RELIABILITY_FILE, evaluate.SUBGROUPS_FILE, evaluate.AUDIT_FILE,
                 evaluate.gallery_file("external"), evaluate.REPORT_FILE, model_card.FILE_NAME):
        assert os.path.getsize(os.path.join(output_dir, name)) > 0, name
    assert Image.open(os.path.join(output_dir, evaluate.gallery_file("external"))).format == "PNG"
    subgroups = json.load(open(os.path.join(output_dir, evaluate.SUBGROUPS_FILE)))["external"]
    assert set(subgroups) == {"view", "sex", "age band"}
    assert set(subgroups["view"]) == {"AP", "PA"} and set(subgroups["age band"]) == {"40-49"}
    assert json.load(open(os.path.join(output_dir, report.DECISION_RULE_FILE))) == RULE.to_json()
    card = open(os.path.join(output_dir, model_card.FILE_NAME)).read()
    assert "## Evaluation" in card and "### external: 30 images" in card
    # The training data's manifest (read through the model's config) gives the card its source table.
    assert "| rsna | 200 | 150 | 0 |" in card


def test_the_same_records_give_the_same_figures_as_trainings_evaluation(job_dir, external_records, external_run):
    output_dir, _ = external_run
    written = json.load(open(os.path.join(output_dir, report.METRICS_FILE)))["external"]
    # Training's path over the same originals: the input pipeline's eval dataset, predictions.predict, the report.
    shards = [shard for split in contract.SPLITS for shard in input_pipeline.list_shards(external_records, split)]
    split = input_pipeline.SplitData("external", tuple(shards), (10, 10, 10))
    model = gradcam.load_model(job_dir)
    predictions = predictions_lib.predict(model, {"external": input_pipeline.eval_dataset(split, IMAGE_SIZE, 32)})
    expected = report.split_metrics(predictions["external"], RULE).to_json()
    assert_same_figures(json.loads(json.dumps(expected)), written)


def assert_same_figures(expected, written) -> None:
    """Equal JSON, numbers to within float32 rounding of the probabilities."""
    if isinstance(expected, dict):
        assert set(expected) == set(written)
        for key in expected:
            assert_same_figures(expected[key], written[key])
    elif isinstance(expected, list):
        assert len(expected) == len(written)
        for left, right in zip(expected, written):
            assert_same_figures(left, right)
    elif isinstance(expected, float):
        assert written == pytest.approx(expected, abs=1e-6)
    else:
        assert expected == written


def test_a_csv_of_raw_images_is_read_with_the_jobs_rules_and_decoded_as_serving_does(job_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = [["image_uri", "label", "patient_id", "view", "source", "sex", "age"]]
    sexes, ages = ("female", "M", "", "x", "1980-01-02", "F"), ("47", "047Y", "", "95", "2020-01-01", "9")
    for index, label in enumerate(("normal", "pneumonia", "COVID-19", "normal", "pneumonia", "covid19")):
        pixels = records.render_pixels(label.lower().replace("-", ""), 200, index)
        Image.fromarray(pixels[:, 20:180]).save(images / f"{index}.png")  # Not square: framing is part of it.
        rows.append([f"images/{index}.png", label, f"p{index // 2}", "PA", ("site-a", "site-b")[index % 2],
                     sexes[index], ages[index]])
    rows += [["images/0.png", "normal", "nan", "PA", "", "", ""],
             ["images/1.png", "fracture", "p9", "PA", "", "", ""],
             ["images/2.png", "normal", "p8", "LATERAL", "", "", ""],
             ["images/missing.png", "normal", "p7", "", "", "", ""]]
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    data, left_out = evaluation_set.read_csv("external", str(tmp_path / "labels.csv"), IMAGE_SIZE)
    assert left_out == {"missing_patient_id": 1, "unknown_label": 1, "view_not_allowed": 1, "not_found": 1}
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert data.sources.tolist() == ["site-a", "site-b"] * 3
    assert len(set(data.patients.tolist())) == 6  # p0 at site-a and p0 at site-b are two patients.
    # Coarse categories only, as the preprocess job writes them: a date is not an age or a sex.
    assert data.attributes["sex"].tolist() == ["F", "M", "unknown", "other", "unknown", "F"]
    assert data.attributes["age band"].tolist() == ["40-49", "40-49", "unknown", "90+", "unknown", "0-9"]
    # What cxr-predict does with each file: preprocess_image at the model's size, then the export's predict_png.
    pngs = [imaging.encode_png(imaging.preprocess_image((images / f"{index}.png").read_bytes(), IMAGE_SIZE).pixels)
            for index in range(6)]
    served = model_store.load(job_dir).signatures[contract.SERVING_PNG_SIGNATURE](
        **{contract.PNG_INPUT: tf.constant(pngs)})[contract.PROBABILITIES_OUTPUT].numpy()
    scored = evaluate.score(gradcam.load_model(job_dir), data)
    np.testing.assert_allclose(RULE.adjusted(scored.model_probabilities), served, atol=1e-5)


def test_a_model_exported_with_test_time_zooms_is_scored_as_it_serves(job_dir, external_records, tmp_path):
    """Evaluation averages over the contract's zooms exactly as the export does; the audit's features do not."""
    model = gradcam.load_model(job_dir)
    zooms = (0.9, 1.1)
    zoomed_job = tmp_path / "job"
    export.export_saved_model(model, str(zoomed_job / "export"), dataclasses.replace(
        model_store.load(job_dir).contract, test_time_zooms=zooms))
    model.save(zoomed_job / gradcam.KERAS_MODEL_FILE)
    data = evaluation_set.read_records("external", input_pipeline.list_shards(external_records, "test"), IMAGE_SIZE,
                                       "the test records")

    plain, averaged = evaluate.score(model, data), evaluate.score(model, data, zooms)

    assert np.abs(plain.model_probabilities - averaged.model_probabilities).max() > 1e-4
    np.testing.assert_array_equal(plain.pooled_features, averaged.pooled_features)
    served = model_store.load(str(zoomed_job)).signatures[contract.SERVING_PNG_SIGNATURE](
        **{contract.PNG_INPUT: tf.constant([imaging.encode_png(pixels) for pixels in data.pixels])})
    np.testing.assert_allclose(RULE.adjusted(averaged.model_probabilities),
                               served[contract.PROBABILITIES_OUTPUT].numpy(), atol=1e-5)
    result = evaluate.run([f"--model_dir={zoomed_job}", f"--data_dir={external_records}", "--splits=test",
                           f"--output_dir={tmp_path / 'report'}"])
    assert "averaged over the image and its zooms 0.9, 1.1" in result.text.splitlines()[1]
    written = json.load(open(tmp_path / "report" / report.METRICS_FILE))["external"]
    expected = report.split_metrics(averaged.predictions(1.0), RULE).to_json()
    assert_same_figures(json.loads(json.dumps(expected)), written)
