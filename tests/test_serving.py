"""Batch prediction, the cxr-predict command and Grad-CAM, with an untrained exported model.

One untrained ResNet50 at 64² serves every test, rather than 32²: at 32² the last block
(`conv5_block3_out`, input / 32 a side) is a single position, so every Grad-CAM map would
be constant; at 64² it is 2×2. The model's weights are random, so the tests check plumbing
and train/serve agreement, not accuracy.
"""

import csv
import glob
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from beam_pipelines import batch_predict as predict
from beam_pipelines import preprocess, sources
from cxr_core import contract, decision_rule, imaging, pseudonyms
from serving import export, features, gradcam, model_store, study, test_time_augmentation
from synthetic import dicom_writer, phantom
from trainer import model as model_lib
from trainer.evaluation import calibration, operating_point

IMAGE_SIZE = 64
STUDY_SIDE = (160, 136)  # Not square, so the framing to a square is part of what is compared.
GOOD_DICOMS = {  # file name → (label, dicom_writer options)
    "study-0.dcm": ("normal", {}),
    "study-1.dcm": ("pneumonia", {"transfer_syntax": "explicit_le", "bits_stored": 12, "photometric": "MONOCHROME1"}),
    "study-2.dcm": ("covid19", {"transfer_syntax": "rle", "bits_stored": 16, "rescale": (2.0, -1024.0),
                                "window": True}),
}
GOOD_PNG = "study,3.png"  # A comma, so the CSV writer must quote the uri.
BAD_FILES = {"garbage.dcm": ("decode", "not_dicom"), "truncated.dcm": ("decode", "truncated_file")}
PATIENT_KEY = "serving-test-patient-key"


def read_prediction_rows(output_path: str) -> dict[str, dict[str, str]]:
    with open(predict.single_file_name(output_path, ".csv"), newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == ("uri", "predicted_class", "p_normal", "p_pneumonia", "p_covid19")
        return {row["uri"]: row for row in reader}


def read_rejections(output_path: str) -> dict[str, dict]:
    with open(predict.single_file_name(predict.rejected_prefix(output_path), ".jsonl")) as handle:
        return {record["uri"]: record for record in map(json.loads, handle) if record}


def probabilities(row: dict[str, str]) -> np.ndarray:
    return np.array([float(row[f"p_{name}"]) for name in contract.CLASS_NAMES])


def model_contract(**changes) -> model_store.ModelContract:
    fields = {"image_size": IMAGE_SIZE, "class_names": contract.CLASS_NAMES,
              "preprocessing_version": contract.PREPROCESSING_VERSION, "training_config": {"batch_size": 4}}
    return model_store.ModelContract(**{**fields, **changes})


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory) -> str:
    """A trainer job dir as the trainer leaves it: export/ and model.keras."""
    job_dir = str(tmp_path_factory.mktemp("job"))
    keras.utils.set_random_seed(3)
    model = model_lib.build_model(IMAGE_SIZE, weights=None)
    export.export_saved_model(model, os.path.join(job_dir, "export"), model_contract())
    model.save(os.path.join(job_dir, gradcam.KERAS_MODEL_FILE))
    return job_dir


@pytest.fixture(scope="module")
def export_dir(job_dir) -> str:
    return os.path.join(job_dir, "export")


def save_signatures(export_dir: str, signatures: dict[str, tf.types.experimental.ConcreteFunction]) -> None:
    """A SavedModel with these signatures only, as another exporter could write it."""
    tf.saved_model.save(tf.Module(), export_dir, signatures=signatures)


@pytest.fixture(scope="module")
def export_without_contract(tmp_path_factory) -> str:
    """A SavedModel that serves examples but states nothing about itself: no `metadata` signature."""
    export_dir = str(tmp_path_factory.mktemp("export_without_contract"))
    serve = tf.function(lambda examples: {"probabilities": tf.zeros([tf.size(examples), 3])},
                        input_signature=[tf.TensorSpec([None], tf.string)])
    save_signatures(export_dir, {contract.SERVING_EXAMPLES_SIGNATURE: serve.get_concrete_function()})
    return export_dir


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> str:
    """images/ with DICOMs of several encodings, a PNG and two bad files; labels.csv lists the good ones."""
    root = tmp_path_factory.mktemp("studies")
    images = root / "images"
    images.mkdir()
    for index, (name, (label, options)) in enumerate(GOOD_DICOMS.items()):
        pixels = phantom.render_chest(index, label, max(STUDY_SIDE))[:STUDY_SIDE[0], :STUDY_SIDE[1]]
        (images / name).write_bytes(dicom_writer.dicom_bytes(
            np.ascontiguousarray(pixels), patient_id=f"patient-{index}", view="PA", sex="F", age=50, **options))
    png_pixels = (phantom.render_chest(9, "pneumonia", max(STUDY_SIDE)) >> 8).astype(np.uint8)
    Image.fromarray(png_pixels[:STUDY_SIDE[1], :STUDY_SIDE[0]]).save(images / GOOD_PNG)
    (images / "garbage.dcm").write_bytes(b"%PDF-1.4 a report, not an image")
    (images / "truncated.dcm").write_bytes((images / "study-0.dcm").read_bytes()[:3000])
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_uri", "label", "patient_id"])
        for index, (name, (label, _)) in enumerate(GOOD_DICOMS.items()):
            writer.writerow([f"images/{name}", label, f"patient-{index}"])
    return str(root)


@pytest.fixture(scope="module")
def glob_run(studies, export_dir, tmp_path_factory) -> str:
    output_path = str(tmp_path_factory.mktemp("glob_run") / "predictions")
    # The model states its image size (64, not the default 128).
    predict.run([f"--model_dir={export_dir}", f"--input_pattern={studies}/images/*", f"--output_path={output_path}"])
    return output_path


@pytest.fixture(scope="module")
def training_records(studies, tmp_path_factory) -> dict[str, bytes]:
    """The preprocess job's original (augmentation 0) records of labels.csv, by image id."""
    output_dir = str(tmp_path_factory.mktemp("tfrecords"))
    preprocess.run([f"--csv={studies}/labels.csv", f"--output_dir={output_dir}", f"--image_size={IMAGE_SIZE}",
                    "--augment=normal=1,pneumonia=1,covid19=1", f"--patient_key={PATIENT_KEY}"])
    files = glob.glob(os.path.join(output_dir, "*" + contract.TFRECORD_SUFFIX))
    records = {}
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        features = tf.train.Example.FromString(raw).features.feature
        if features[contract.AUGMENTATION].int64_list.value[0] == 0:
            records[features[contract.IMAGE_ID].bytes_list.value[0].decode()] = raw
    return records


# Model store ----------------------------------------------------------------------------------

def test_the_model_store_reads_the_contract_of_a_job_dir_or_its_export(job_dir, export_dir):
    for model_dir in (job_dir, export_dir):
        loaded = model_store.load(model_dir)

        assert loaded.export_dir == export_dir
        assert loaded.contract == model_contract()
        assert set(loaded.signatures) == {contract.SERVING_EXAMPLES_SIGNATURE, contract.SERVING_PNG_SIGNATURE,
                                          contract.SERVING_METADATA_SIGNATURE}


def test_an_export_without_its_contract_is_refused(export_without_contract):
    with pytest.raises(model_store.ModelStoreError, match=re.escape(
            f"the model in {export_without_contract} cannot be served: this export has no metadata signature: "
            "re-export it with the current trainer")):
        model_store.load(export_without_contract)


def test_an_export_with_an_incomplete_contract_is_refused(tmp_path):
    outputs = {name: value for name, value in model_contract().as_tensors().items()
               if name != contract.METADATA_DECISION_RULE}
    metadata = tf.function(lambda: outputs, input_signature=[])
    save_signatures(str(tmp_path), {contract.SERVING_METADATA_SIGNATURE: metadata.get_concrete_function()})

    lacks = f"its metadata signature lacks '{contract.METADATA_DECISION_RULE}': re-export it with the current trainer"
    with pytest.raises(model_store.ModelStoreError, match=re.escape(lacks)):
        model_store.load(str(tmp_path))


@pytest.mark.parametrize("changes, message", [
    ({"class_names": ("normal", "covid19", "pneumonia")}, "predicts classes ['normal', 'covid19', 'pneumonia']"),
    ({"preprocessing_version": contract.PREPROCESSING_VERSION + 1}, "was trained on preprocessing version"),
])
def test_a_model_of_another_contract_is_refused(changes, message, tmp_path):
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    tiny = keras.Model(inputs, keras.layers.Dense(contract.NUM_CLASSES, activation="softmax")(pooled))
    export.export_saved_model(tiny, str(tmp_path), model_contract(**changes))

    with pytest.raises(model_store.ModelStoreError, match=re.escape(message)):
        model_store.load(str(tmp_path))


def tiny_model_and_pngs() -> tuple[keras.Model, list[bytes], np.ndarray]:
    """A one-layer model whose classes follow the image's brightness, 30 flat PNGs and its probabilities."""
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    head = keras.layers.Dense(contract.NUM_CLASSES, activation="softmax")
    tiny = keras.Model(inputs, head(pooled))
    # The blue channel's mean (about -104 to 151 after ResNet50's preprocessing) moves normal to covid19.
    head.set_weights([np.array([[-0.02, 0.0, 0.02], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
                      np.zeros(contract.NUM_CLASSES)])
    pngs = [imaging.encode_png(np.full((IMAGE_SIZE, IMAGE_SIZE), level, np.uint8))
            for level in np.linspace(0, 255, 30).astype(np.uint8)]
    return tiny, pngs, tiny(features.decode_images(tf.constant(pngs), IMAGE_SIZE)).numpy()


def served_outputs(loaded: model_store.LoadedModel, pngs: list[bytes]) -> dict[str, dict[str, tf.Tensor]]:
    return {
        "examples": loaded.signatures[contract.SERVING_EXAMPLES_SIGNATURE](
            **{contract.EXAMPLES_INPUT: tf.constant([predict.serving_example(png) for png in pngs])}),
        "pngs": loaded.signatures[contract.SERVING_PNG_SIGNATURE](**{contract.PNG_INPUT: tf.constant(pngs)}),
    }


def test_an_export_serves_the_classes_of_its_decision_rule_and_records_it(tmp_path):
    """The rule chosen on val is the rule served: same class ids, same prior-corrected probabilities."""
    tiny, pngs, raw = tiny_model_and_pngs()
    labels = np.arange(len(pngs)) % contract.NUM_CLASSES
    rule = operating_point.choose_decision_rule(
        decision_rule.parse_decision_rule("target:covid19:sensitivity:0.8"), labels, raw, (10, 10, 80))
    expected = rule.apply(raw)
    assert rule.threshold is not None and not np.array_equal(expected, np.argmax(raw, axis=1))
    assert len(set(expected.tolist())) > 1

    export.export_saved_model(tiny, str(tmp_path), model_contract(decision_rule=rule))
    loaded = model_store.load(str(tmp_path))

    assert loaded.contract == model_contract(decision_rule=rule)
    for name, outputs in served_outputs(loaded, pngs).items():
        np.testing.assert_array_equal(outputs[contract.CLASS_ID_OUTPUT], expected, err_msg=name)
        np.testing.assert_allclose(outputs[contract.PROBABILITIES_OUTPUT], rule.adjusted(raw), atol=1e-5,
                                   err_msg=name)


def test_an_export_scales_by_its_temperature_before_the_rule_and_carries_its_model_card(tmp_path):
    """Val fits the temperature, then the rule on the scaled probabilities; serving does both, in that order."""
    tiny, pngs, raw = tiny_model_and_pngs()
    labels = np.arange(len(pngs)) % contract.NUM_CLASSES
    temperature = 0.4
    scaled = calibration.apply_temperature(raw, temperature)
    rule = operating_point.choose_decision_rule(
        decision_rule.parse_decision_rule("target:covid19:sensitivity:0.8"), labels, scaled, (10, 10, 80))
    assert not np.array_equal(rule.adjusted(scaled), rule.adjusted(raw))

    written = model_contract(decision_rule=rule, temperature=temperature, model_card="# Model card\n\nresearch only")
    export.export_saved_model(tiny, str(tmp_path), written)
    loaded = model_store.load(str(tmp_path))

    assert loaded.contract == written
    for name, outputs in served_outputs(loaded, pngs).items():
        np.testing.assert_array_equal(outputs[contract.CLASS_ID_OUTPUT], rule.apply(scaled), err_msg=name)
        np.testing.assert_allclose(outputs[contract.PROBABILITIES_OUTPUT], rule.adjusted(scaled), atol=1e-5,
                                   err_msg=name)


def test_an_export_averages_over_its_test_time_zooms_before_the_temperature(tmp_path):
    """Both signatures average the model over the image and the contract's zooms, then scale and apply the rule."""
    tiny, _, _ = tiny_model_and_pngs()
    pngs = []
    for side in range(2, IMAGE_SIZE, 4):  # Centred squares: a zoom changes the bright share the model reads.
        pixels = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        start = (IMAGE_SIZE - side) // 2
        pixels[start:start + side, start:start + side] = 255
        pngs.append(imaging.encode_png(pixels))
    images = features.decode_images(tf.constant(pngs), IMAGE_SIZE)
    zooms, temperature = (0.9, 1.2), 0.5
    averaged = test_time_augmentation.averaged_probabilities(tiny, images, zooms).numpy()
    assert np.abs(averaged - tiny(images).numpy()).max() > 1e-3

    written = model_contract(temperature=temperature, test_time_zooms=zooms)
    export.export_saved_model(tiny, str(tmp_path), written)
    loaded = model_store.load(str(tmp_path))

    assert loaded.contract == written
    expected = calibration.apply_temperature(averaged, temperature)
    for name, outputs in served_outputs(loaded, pngs).items():
        np.testing.assert_allclose(outputs[contract.PROBABILITIES_OUTPUT], expected, atol=1e-5, err_msg=name)


# Batch prediction -----------------------------------------------------------------------------

def test_every_input_is_a_row_or_a_rejection(studies, glob_run):
    rows = read_prediction_rows(glob_run)
    rejections = read_rejections(glob_run)

    image_dir = os.path.join(studies, "images")
    assert set(rows) == {os.path.join(image_dir, name) for name in [*GOOD_DICOMS, GOOD_PNG]}
    assert {uri: (record["stage"], record["kind"]) for uri, record in rejections.items()} == {
        os.path.join(image_dir, name): expected for name, expected in BAD_FILES.items()}
    assert all(record["source"] == "glob" and record["reason"] for record in rejections.values())
    for row in rows.values():
        assert probabilities(row).sum() == pytest.approx(1.0, abs=1e-5)
        assert row["predicted_class"] == contract.CLASS_NAMES[int(np.argmax(probabilities(row)))]


def test_csv_listing_resolves_relative_uris_and_rejects_missing_files(studies, export_dir, glob_run, tmp_path):
    listing = os.path.join(studies, "listing.csv")
    with open(listing, "w", newline="") as handle:
        csv.writer(handle).writerows([
            ["image_uri", "note"],
            ["images/study-0.dcm", "relative to the CSV"],
            [os.path.join(studies, "images", "study-1.dcm"), "absolute"],
            ["images/missing.dcm", "listed, not there"],
            ["", "no uri"],
        ])
    output_path = str(tmp_path / "predictions")

    predict.run([f"--model_dir={export_dir}", f"--input_pattern={listing}", f"--output_path={output_path}"])

    rows = read_prediction_rows(output_path)
    first, second = (os.path.join(studies, "images", name) for name in ("study-0.dcm", "study-1.dcm"))
    assert set(rows) == {first, second}
    glob_rows = read_prediction_rows(glob_run)
    for uri in (first, second):
        assert rows[uri]["predicted_class"] == glob_rows[uri]["predicted_class"]
        # Batches differ between the runs, and oneDNN's float sums with them.
        np.testing.assert_allclose(probabilities(rows[uri]), probabilities(glob_rows[uri]), rtol=0, atol=1e-5)
    rejections = read_rejections(output_path)
    assert {uri: (record["stage"], record["kind"]) for uri, record in rejections.items()} == {
        os.path.join(studies, "images", "missing.dcm"): ("read", "missing_file"),
        listing: ("read", "empty_uri"),
    }


def test_predictions_equal_the_served_training_records(studies, glob_run, training_records, export_dir):
    """Train/serve skew: a DICOM through batch prediction = its training record through serving_default."""
    rows = read_prediction_rows(glob_run)
    serving_default = tf.saved_model.load(export_dir).signatures[contract.SERVING_EXAMPLES_SIGNATURE]

    for name in GOOD_DICOMS:
        image_id = pseudonyms.pseudonymous_image_id(PATIENT_KEY, sources.CSV, f"images/{name}")
        record = training_records[image_id]
        served = serving_default(**{contract.EXAMPLES_INPUT: tf.constant([record])})["probabilities"].numpy()[0]

        np.testing.assert_allclose(probabilities(rows[os.path.join(studies, "images", name)]), served,
                                   rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("flags, message", [
    (["--input_pattern={studies}/images/*.jpg"], "matches no files"),
    (["--input_pattern={studies}/labels.csv", "--model_dir={bare}"],
     "the model in {bare} cannot be served: this export has no metadata signature"),
    (["--input_pattern={studies}/labels.csv", "--model_dir={studies}"], "{studies} holds no SavedModel"),
    (["--input_pattern={studies}/images/*", "--output_path={studies}/out/"], "is a file prefix"),
])
def test_bad_flags_fail_before_the_job_starts(flags, message, studies, export_dir, export_without_contract, capsys):
    defaults = [f"--model_dir={export_dir}", f"--output_path={studies}/unused/predictions"]

    with pytest.raises(SystemExit) as exit_info:
        predict.run(defaults + [flag.format(studies=studies, bare=export_without_contract) for flag in flags])

    assert exit_info.value.code == 2
    assert message.format(studies=studies, bare=export_without_contract) in capsys.readouterr().err
    assert not os.path.exists(os.path.join(studies, "unused"))


# cxr-predict ----------------------------------------------------------------------------------

def printed_values(output: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in output.strip().splitlines())


def test_study_prints_the_batch_prediction_and_writes_grad_cam(studies, job_dir, glob_run, tmp_path, capsys):
    dicom = os.path.join(studies, "images", "study-2.dcm")
    overlay_path = str(tmp_path / "gradcam.png")

    study.main([dicom, f"--model_dir={job_dir}", f"--gradcam={overlay_path}"])

    printed = printed_values(capsys.readouterr().out)
    batch_row = read_prediction_rows(glob_run)[dicom]
    assert printed["predicted_class"] == batch_row["predicted_class"]
    np.testing.assert_allclose([float(printed[f"p_{name}"]) for name in contract.CLASS_NAMES],
                               probabilities(batch_row), rtol=0, atol=1e-5)
    assert printed["gradcam"] == overlay_path
    with Image.open(overlay_path) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (512, 512))


def test_study_accepts_the_export_folder(studies, export_dir, capsys):
    study.main([os.path.join(studies, "images", GOOD_PNG), f"--model_dir={export_dir}"])

    assert set(printed_values(capsys.readouterr().out)) == {
        "predicted_class", "p_normal", "p_pneumonia", "p_covid19"}


@pytest.mark.parametrize("name, message", [
    ("garbage.dcm", "cannot use {path}: no DICM preamble and no readable DICOM dataset"),
    ("absent.dcm", "cannot read {path}: No such file or directory"),
])
def test_study_reports_an_unreadable_file_in_one_line(name, message, studies, job_dir):
    path = os.path.join(studies, "images", name)

    result = subprocess.run([sys.executable, "-m", "serving.study", path, f"--model_dir={job_dir}"],
                            capture_output=True, text=True, check=False, timeout=60)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["cxr-predict: " + message.format(path=path)]


@pytest.mark.parametrize("flags, message", [
    (["--model_dir={bare}"], "the model in {bare} cannot be served: this export has no metadata signature: "
                             "re-export it with the current trainer"),
    (["--gradcam={tmp}/gradcam.png", "--model_dir={tmp}/copied_export"], "Grad-CAM needs the model.keras"),
    (["--model_dir={tmp}"], "holds no SavedModel"),
    (["--gradcam={tmp}/missing/gradcam.png"], "cannot write {tmp}/missing/gradcam.png"),
])
def test_study_reports_model_and_output_problems_in_one_line(flags, message, studies, job_dir,
                                                             export_without_contract, tmp_path):
    os.symlink(os.path.join(job_dir, "export"), tmp_path / "copied_export")
    argv = [os.path.join(studies, "images", "study-0.dcm"), f"--model_dir={job_dir}"]

    with pytest.raises(SystemExit) as exit_info:
        study.main(argv + [flag.format(tmp=tmp_path, bare=export_without_contract) for flag in flags])

    expected = message.format(tmp=tmp_path, bare=export_without_contract)
    assert expected in str(exit_info.value.code) and "\n" not in str(exit_info.value.code)
    assert not (tmp_path / "gradcam.png").exists()


# Grad-CAM -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras_model(job_dir) -> keras.Model:
    return gradcam.load_model(job_dir)


@pytest.fixture(scope="module")
def grad_cam(keras_model) -> gradcam.GradCam:
    return gradcam.GradCam(keras_model, batch_size=2)


@pytest.fixture(scope="module")
def study_pixels(studies) -> np.ndarray:
    with open(os.path.join(studies, "images", "study-1.dcm"), "rb") as handle:
        return imaging.preprocess_image(handle.read(), IMAGE_SIZE).pixels


def test_grad_cam_of_the_prediction_is_a_non_constant_map_at_the_image_size(grad_cam, study_pixels):
    heat_map = grad_cam.heat_map(study_pixels)

    assert heat_map.shape == study_pixels.shape
    assert heat_map.min() >= 0.0 and heat_map.max() == pytest.approx(1.0)
    assert np.ptp(heat_map) > 0.1


@pytest.mark.parametrize("class_id", range(contract.NUM_CLASSES))
def test_grad_cam_of_any_class_is_scaled_to_its_peak_or_empty(grad_cam, study_pixels, class_id):
    heat_map = grad_cam.heat_map(study_pixels, class_id)

    assert heat_map.shape == study_pixels.shape
    assert heat_map.min() >= 0.0 and heat_map.max() in (0.0, pytest.approx(1.0))


def test_grad_cam_explains_the_predicted_class_by_default(keras_model, grad_cam, study_pixels):
    image = features.decode_image(imaging.encode_png(study_pixels), IMAGE_SIZE)
    predicted = int(np.argmax(keras_model(image[tf.newaxis], training=False)[0]))

    np.testing.assert_array_equal(grad_cam.heat_map(study_pixels), grad_cam.heat_map(study_pixels, predicted))


def test_grad_cam_of_a_batch_is_each_images_own_map(grad_cam, study_pixels):
    # Three images in batches of two, each with its own class: a batch must not mix its images' gradients.
    pixels = np.stack([study_pixels, study_pixels[::-1], np.ascontiguousarray(study_pixels[:, ::-1])])
    class_ids = np.array([0, 2, 1])
    maps = grad_cam.heat_maps(pixels, class_ids)

    assert maps.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    for image, class_id, heat_map in zip(pixels, class_ids, maps):
        np.testing.assert_allclose(heat_map, grad_cam.heat_map(image, int(class_id)), atol=1e-5)


def test_grad_cam_needs_the_model_input_size(grad_cam):
    with pytest.raises(ValueError, match="the model takes 64x64 images, got 32x32"):
        grad_cam.heat_map(np.zeros((32, 32), dtype=np.uint8))


def test_overlay_blends_a_blue_to_red_colormap_over_the_image(tmp_path):
    pixels = np.full((4, 8), 200, dtype=np.uint8)
    heat_map = np.tile(np.linspace(0.0, 1.0, 8, dtype=np.float32), (4, 1))

    colours = gradcam.jet_colormap(heat_map)
    blended = gradcam.overlay(pixels, heat_map)

    assert colours.dtype == np.uint8 and colours.shape == (4, 8, 3)
    assert np.argmax(colours[0, 0]) == 2 and np.argmax(colours[0, -1]) == 0  # cold is blue, hot is red
    expected = np.round(0.6 * 200 + 0.4 * colours.astype(np.float32)).astype(np.uint8)
    np.testing.assert_array_equal(blended, expected)
    path = str(tmp_path / "overlay.png")
    gradcam.save_overlay(path, pixels, heat_map)
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.size == (8 * 64, 4 * 64)
        np.testing.assert_array_equal(np.asarray(image), gradcam.enlarged(blended))
