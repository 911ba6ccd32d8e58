"""The preprocess job end to end, on the synthetic layouts plus every kind of bad input.

The job runs once in this process (`job`) and once from the command line with worker
processes (`command_line_job`, slow); the tests read their outputs and never change them.
"""

import collections
import glob
import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import apache_beam as beam
import pydicom
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to
from pydicom.data import get_testdata_file

from beam_pipelines import example_codec, preprocess, rejections, splitting
from beam_pipelines.options import build_pipeline_options
from beam_pipelines.records import ImageSummary, SourceImage
from cxr_core import contract, imaging, pseudonyms, selection
from synthetic import dicom_writer, phantom
from synthetic import pipeline as synthesize

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATIENT_KEY = "test-patient-key-0123456789"
KEY_FLAG = f"--patient_key={PATIENT_KEY}"
IMAGE_SIZE = 32
MULTIPLIERS = {"normal": 2, "pneumonia": 3, "covid19": 5}
AUGMENT_FLAG = ",".join(f"{name}={value}" for name, value in MULTIPLIERS.items())


def read_records(output_dir: str, split: str) -> list[tf.train.Example]:
    files = sorted(glob.glob(os.path.join(output_dir, contract.shard_pattern(split))))
    return [tf.train.Example.FromString(raw.numpy())
            for raw in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def feature(example: tf.train.Example, key: str):
    value = example.features.feature[key]
    return value.int64_list.value[0] if key in contract.INT64_FEATURES else value.bytes_list.value[0]


def read_rejected(output_dir: str) -> list[dict]:
    rows = []
    for path in glob.glob(os.path.join(output_dir, "rejected-*.jsonl")):
        with open(path) as handle:
            rows.extend(json.loads(line) for line in handle if line.strip())
    return rows


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> str:
    """Synthetic RSNA + covid layouts, with a bad file of every kind planted among them."""
    root = str(tmp_path_factory.mktemp("raw"))
    synthesize.run([f"--output_dir={root}", "--num_rsna=48", "--num_covid=24", "--image_size=96",
                    "--seed=11"])
    images = sorted(glob.glob(f"{root}/rsna/stage_2_train_images/*.dcm"))
    used = [path for path in images if _rsna_label_is_used(root, path)]
    missing, truncated, not_dicom, no_pixels, bad_stream = used[:5]
    os.remove(missing)
    with open(truncated, "rb") as handle:
        data = handle.read()
    with open(truncated, "wb") as handle:
        handle.write(data[: len(data) // 2])
    with open(not_dicom, "wb") as handle:
        handle.write(b"%PDF-1.4 this is a report, not an image")
    shutil.copy(get_testdata_file("rtplan.dcm", download=False), no_pixels)
    shutil.copy(get_testdata_file("JPEG-lossy.dcm", download=False), bad_stream)
    covid_images = sorted(glob.glob(f"{root}/covid/images/*"))
    with open(covid_images[0], "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n broken")
    with open(f"{root}/own.csv", "w") as handle:
        handle.write("image_uri,label,patient_id,view\n")
        handle.write(f"{covid_images[1]},normal,own-1,PA\n")
        handle.write(f"{covid_images[2]},effusion,own-2,PA\n")
        handle.write(f"{root}/does-not-exist.png,covid19,own-3,PA\n")
    return root


def _rsna_label_is_used(root: str, image_path: str) -> bool:
    patient = os.path.basename(image_path)[:-4]
    with open(f"{root}/rsna/stage_2_detailed_class_info.csv") as handle:
        classes = {line.split(",", 1)[0]: line.strip().split(",", 1)[1] for line in handle}
    return classes[patient] != "No Lung Opacity / Not Normal"


def run_job(raw_dir: str, output_dir: str, *extra: str) -> dict:
    return preprocess.run([
        f"--rsna_dir={raw_dir}/rsna", f"--covid_dir={raw_dir}/covid", f"--csv={raw_dir}/own.csv",
        f"--output_dir={output_dir}", f"--image_size={IMAGE_SIZE}", f"--augment={AUGMENT_FLAG}",
        "--seed=5", "--target_shard_mb=0.02", KEY_FLAG, *extra])


@pytest.fixture(scope="module")
def job(raw_dir, tmp_path_factory) -> tuple[str, dict]:
    output_dir = str(tmp_path_factory.mktemp("out_in_memory"))
    manifest = run_job(raw_dir, output_dir)
    return output_dir, manifest


@pytest.fixture(scope="module")
def command_line_job(raw_dir, tmp_path_factory) -> str:
    """The same job as `job`, run as `python -m beam_pipelines.preprocess` on two worker processes.

    Run as `__main__`: whatever crosses a worker process boundary must still be importable by
    name there.
    """
    output_dir = str(tmp_path_factory.mktemp("out_command_line"))
    completed = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.preprocess", f"--rsna_dir={raw_dir}/rsna",
         f"--covid_dir={raw_dir}/covid", f"--csv={raw_dir}/own.csv", f"--output_dir={output_dir}",
         f"--image_size={IMAGE_SIZE}", f"--augment={AUGMENT_FLAG}", "--seed=5", "--target_shard_mb=0.02", KEY_FLAG,
         "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return output_dir


@pytest.fixture(scope="module")
def covid_rerun(raw_dir, job, tmp_path_factory) -> tuple[str, dict, pathlib.Path]:
    """The covid source alone, with the key from a file, over a copy of `job`'s output (--overwrite).

    Returns the output folder, the manifest and the key file.
    """
    key_file = tmp_path_factory.mktemp("key") / "patient_key"
    key_file.write_text(PATIENT_KEY + "\n")
    output_dir = str(tmp_path_factory.mktemp("covid_rerun") / "reused")
    shutil.copytree(job[0], output_dir)
    manifest = preprocess.run([f"--covid_dir={raw_dir}/covid", f"--output_dir={output_dir}", "--overwrite",
                               f"--patient_key_file={key_file}", "--image_size=32"])
    return output_dir, manifest, key_file


def all_records(output_dir: str) -> dict[str, list[tf.train.Example]]:
    return {split: read_records(output_dir, split) for split in contract.SPLITS}


def test_no_patient_is_in_two_splits(job):
    records = all_records(job[0])
    patients = {split: {feature(example, contract.PATIENT_ID) for example in examples}
                for split, examples in records.items()}
    assert patients["train"] and patients["val"] | patients["test"]
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]


def test_multipliers_apply_to_train_only(job):
    records = all_records(job[0])
    copies = collections.defaultdict(set)
    for example in records["train"]:
        label = feature(example, contract.LABEL_TEXT).decode()
        copies[(feature(example, contract.IMAGE_ID), label)].add(feature(example, contract.AUGMENTATION))
    assert copies
    for (_, label), indices in copies.items():
        assert indices == set(range(MULTIPLIERS[label]))
    for split in ("val", "test"):
        assert {feature(example, contract.AUGMENTATION) for example in records[split]} == {0}


def dicom_identifying_values(raw_dir: str) -> set[str]:
    """Every identifying header value the synthetic DICOMs carry."""
    values = set()
    for path in glob.glob(f"{raw_dir}/rsna/stage_2_train_images/*.dcm"):
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # the planted bad files
            continue
        for keyword in ("PatientName", "PatientID", "AccessionNumber", "InstitutionName", "StudyDate",
                        "PatientBirthDate", "ReferringPhysicianName", "StudyInstanceUID", "SOPInstanceUID"):
            if dataset.get(keyword):
                values.add(str(dataset.get(keyword)))
    return values


def test_records_hold_the_schema_and_nothing_from_the_dicom_header(job, raw_dir):
    records = [example for examples in all_records(job[0]).values() for example in examples]
    identifying = dicom_identifying_values(raw_dir)
    assert len(identifying) > 50
    metadata_values = set()
    for example in records:
        assert set(example.features.feature) == contract.FEATURE_KEYS
        assert feature(example, contract.IMAGE_FORMAT) == b"png"
        assert feature(example, contract.IMAGE_HEIGHT) == feature(example, contract.IMAGE_WIDTH) == IMAGE_SIZE
        image = tf.io.decode_png(feature(example, contract.IMAGE_ENCODED)).numpy()
        assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 1)
        assert contract.CLASS_NAMES[feature(example, contract.LABEL)] == feature(example, contract.LABEL_TEXT).decode()
        metadata_values.update(feature(example, key).decode() for key in contract.BYTES_FEATURES
                               if key != contract.IMAGE_ENCODED)
    assert not {value for value in metadata_values for secret in identifying if secret in value}
    everything = b"".join(example.SerializeToString() for example in records)
    assert not [value for value in identifying if len(value) >= 8 and value.encode() in everything]


def test_every_bad_input_is_rejected_with_its_reason(job, raw_dir):
    output_dir, manifest = job
    rejected = read_rejected(output_dir)
    kinds = collections.Counter((row["stage"], row["kind"]) for row in rejected)
    for expected in [("read", "missing_file"), ("decode", "truncated_file"), ("decode", "not_dicom"),
                     ("decode", "no_pixel_data"), ("decode", "not_an_image"), ("label", "unknown_label"),
                     ("select", "excluded_not_normal")]:
        assert kinds[expected] >= 1, f"no rejection {expected} in {kinds}"
    assert kinds[("decode", "pixel_decode_failed")] == 1, "the non-conformant JPEG stream"
    assert all(row["listing"] and row["line"] and row["reason"] for row in rejected)
    assert not [row for row in rejected if "uri" in row or raw_dir in json.dumps(row)]
    assert {"source": "csv", "stage": "read", "kind": "missing_file", "listing": "--csv", "line": 4} in [
        {name: row[name] for name in ("source", "stage", "kind", "listing", "line")} for row in rejected]
    inputs = manifest["inputs"]
    assert inputs["listed"] == inputs["used"] + inputs["rejected"]
    assert inputs["rejected"] == len(rejected)
    assert manifest["rejected"] == {f"{stage}/{kind}": count for (stage, kind), count in sorted(kinds.items())}


def test_manifest_counts_match_the_records(job):
    output_dir, manifest = job
    with open(os.path.join(output_dir, contract.MANIFEST_FILE)) as handle:
        assert json.load(handle) == manifest
    for split, examples in all_records(output_dir).items():
        counted = collections.Counter(feature(example, contract.LABEL_TEXT).decode() for example in examples)
        originals = collections.Counter(feature(example, contract.LABEL_TEXT).decode() for example in examples
                                        if feature(example, contract.AUGMENTATION) == 0)
        assert manifest["examples"][split] == {name: counted[name] for name in contract.CLASS_NAMES}
        assert manifest["originals"][split] == {name: originals[name] for name in contract.CLASS_NAMES}
    assert manifest["augmentation_multipliers"] == MULTIPLIERS
    assert manifest["schema"]["classes"] == list(contract.CLASS_NAMES)
    assert "patient_key" not in manifest["options"]
    assert manifest["options"]["patient_key_fingerprint"] == pseudonyms.key_fingerprint(PATIENT_KEY)
    with open(os.path.join(output_dir, contract.MANIFEST_FILE)) as handle:
        assert PATIENT_KEY not in handle.read()
    shard_files = {shard["file"] for shard in manifest["shards"]}
    assert shard_files == {os.path.basename(path) for path in glob.glob(f"{output_dir}/*.tfrecord.gz")}
    assert not os.path.exists(os.path.join(output_dir, preprocess.STAGING_FOLDER)), "every shard was moved in"
    train_shards = [name for name in shard_files if name.startswith("train-")]
    assert len(train_shards) > 1 and all(name.endswith(f"-of-{len(train_shards):05d}.tfrecord.gz")
                                         for name in train_shards)


@pytest.mark.slow
def test_a_rerun_on_another_runner_mode_gives_identical_records(job, command_line_job):
    first = sorted(os.path.basename(path) for path in glob.glob(f"{job[0]}/*.tfrecord.gz"))
    assert first == sorted(os.path.basename(path) for path in glob.glob(f"{command_line_job}/*.tfrecord.gz"))
    for name in first:
        records = [list(tf.data.TFRecordDataset(os.path.join(directory, name), compression_type="GZIP")
                        .as_numpy_iterator()) for directory in (job[0], command_line_job)]
        assert records[0] == records[1], f"{name} differs between runs"


def test_auto_multipliers_balance_the_train_classes(raw_dir, tmp_path):
    manifest = preprocess.run([f"--covid_dir={raw_dir}/covid", f"--rsna_dir={raw_dir}/rsna",
                               f"--output_dir={tmp_path}", "--image_size=32", "--augment=auto", KEY_FLAG])
    originals = manifest["originals"]["train"]
    largest = max(originals.values())
    for name, count in originals.items():
        assert manifest["augmentation_multipliers"][name] == (max(1, round(largest / count)) if count else 1)
        assert manifest["examples"]["train"][name] == count * manifest["augmentation_multipliers"][name]


@pytest.fixture(scope="module")
def latin1_csv(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("latin1") / "latin1.csv"
    path.write_bytes("image_uri,label,patient_id\na.png,normal,1\nb.png,normal,Jos\xe9\n".encode("latin-1"))
    return str(path)


@pytest.mark.parametrize("flags, message", [
    ([KEY_FLAG], "give at least one source"),
    (["--rsna_dir=/nowhere/rsna", KEY_FLAG], "stage_2_train_labels.csv does not exist"),
    (["--covid_dir={raw}/covid", "--split=0.5,0.5", KEY_FLAG], "--split"),
    (["--covid_dir={raw}/covid", "--augment=covid19=30", KEY_FLAG], "--augment"),
    (["--covid_dir={raw}/covid", "--image_size=4", KEY_FLAG], "--image_size"),
    (["--covid_dir={raw}/covid", "--max_megapixels=0", KEY_FLAG], "--max_megapixels must be positive"),
    (["--covid_dir={raw}/covid", "--allowed_views= , ", KEY_FLAG], "--allowed_views must name at least one view"),
    (["--covid_dir={raw}/covid"], "no patient key: pass --patient_key SECRET or --patient_key_file FILE"),
    (["--covid_dir={raw}/covid", "--patient_key=short"], "use at least 16"),
    (["--covid_dir={raw}/covid", "--patient_key_file={raw}/no-key-here"], "--patient_key_file"),
    (["--csv={latin1}", KEY_FLAG], "latin1.csv is not valid UTF-8: byte 0xe9 on line 3"),
])
def test_bad_flags_fail_fast_with_a_clear_message(raw_dir, latin1_csv, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exited:
        preprocess.run([flag.format(raw=raw_dir, latin1=latin1_csv) for flag in flags] + [f"--output_dir={tmp_path}"])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.listdir(tmp_path), "nothing may be written before the flags are valid"


def test_the_key_can_come_from_a_file(covid_rerun):
    _, manifest, key_file = covid_rerun
    assert manifest["options"]["patient_key_fingerprint"] == pseudonyms.key_fingerprint(PATIENT_KEY)
    assert manifest["options"]["patient_key_file"] == str(key_file)


def test_a_used_output_dir_needs_overwrite(covid_rerun, raw_dir, capsys):
    output_dir, manifest, _ = covid_rerun
    with pytest.raises(SystemExit):
        preprocess.run([f"--covid_dir={raw_dir}/covid", f"--output_dir={output_dir}", KEY_FLAG])
    assert "--overwrite" in capsys.readouterr().err
    shards = {os.path.basename(path) for path in glob.glob(f"{output_dir}/*.tfrecord.gz")}
    assert shards == {shard["file"] for shard in manifest["shards"]}, "no shard of the old run is left"


def test_translates_to_a_dataflow_job_offline(raw_dir, tmp_path):
    """DataflowRunner's dry run builds the job request without calling Google Cloud."""
    parser = preprocess.build_parser()
    args, beam_args = parser.parse_known_args([
        f"--rsna_dir={raw_dir}/rsna", f"--covid_dir={raw_dir}/covid", f"--output_dir={tmp_path}",
        "--runner=DataflowRunner", "--project=test-project", "--region=us-central1",
        "--temp_location=gs://test-bucket/tmp", "--job_name=cxr-preprocess-test", "--no_auth",
        "--dry_run=True", "--sdk_location=container", KEY_FLAG])
    options = build_pipeline_options(beam_args)
    pipeline = beam.Pipeline(options=options)
    preprocess.build_pipeline(pipeline, args)
    result = pipeline.run()
    job = result.job
    assert job.proto.name == "cxr-preprocess-test"
    names = {transform.unique_name for transform in job.proto_pipeline.components.transforms.values()}
    assert {"ListSources", "FanOut", "ReadAndEncode", "DropDuplicateImages", "WriteShards", "WriteRejected",
            "WriteManifest"} <= names
    assert options.view_as(beam.options.pipeline_options.SetupOptions).setup_file.endswith("setup.py")


# The job's own DoFns and composites, one by one ------------------------------------------------

FRACTIONS = splitting.parse_split("0.8,0.1,0.1")
FRONTAL = selection.parse_allowed_views(selection.DEFAULT_ALLOWED_VIEWS)
ORIGINALS_ONLY = {name: 1 for name in contract.CLASS_NAMES}


def listed(uri: str, line: int, image_key: str = "", label: str = "normal", patient: str = "p") -> SourceImage:
    return SourceImage("csv", uri, image_key or os.path.basename(uri), patient, label, "", "--csv", line)


def chest_dicom(path, seed: int, **header) -> bytes:
    """A small synthetic CR chest DICOM at `path`, with header elements overridden."""
    dataset = pydicom.dcmread(io.BytesIO(dicom_writer.dicom_bytes(
        phantom.render_chest(seed, "normal", 64), patient_id="p", view="PA", sex="F", age=40,
        uid_seed=str(seed))))
    for keyword, value in header.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def view_and_shape(example) -> tuple[str, tuple[int, ...]]:
    fields, png = example_codec.fields_and_png(example.serialized)
    return fields.view, imaging.decode_png(png).shape


def test_read_and_encode_keeps_frontal_radiographs_and_rejects_the_rest(beam_pipeline, tmp_path):
    data = chest_dicom(tmp_path / "pa.dcm", 1)
    chest_dicom(tmp_path / "lateral.dcm", 2, ViewPosition="LL")
    chest_dicom(tmp_path / "ct.dcm", 3, Modality="CT")
    chest_dicom(tmp_path / "large.dcm", 4, Rows=4000, Columns=4000)
    images = [listed(str(tmp_path / name), line) for line, name in enumerate(
        ["pa.dcm", "lateral.dcm", "ct.dcm", "large.dcm", "missing.dcm"], start=2)]
    key = splitting.PatientKey(PATIENT_KEY)

    def image_id(name: str) -> str:
        return pseudonyms.pseudonymous_image_id(PATIENT_KEY, "csv", name)

    with beam_pipeline as pipeline:
        result = (pipeline | beam.Create(images) | beam.ParDo(preprocess.ReadAndEncodeFn(
            IMAGE_SIZE, key, FRACTIONS, max_pixels=1000 * 1000, allowed_views=FRONTAL, copies=ORIGINALS_ONLY,
            seed=1)).with_outputs(preprocess.ReadAndEncodeFn.SUMMARIES, rejections.REJECTED, main="examples"))
        assert_that(result[preprocess.ReadAndEncodeFn.SUMMARIES] | beam.Map(lambda image: (
            image.line, image.image_id, image.content_hash)), equal_to([
                (2, image_id("pa.dcm"), hashlib.sha256(data).hexdigest())]), label="Summaries")
        assert_that(result.examples | beam.Map(lambda example: (example.origin, example.key, *view_and_shape(example))),
                    equal_to([(("csv", "--csv", 2), image_id("pa.dcm"), "PA", (IMAGE_SIZE, IMAGE_SIZE))]),
                    label="Examples")
        assert_that(result[rejections.REJECTED] | beam.Map(
            lambda item: (item.line, item.stage, item.kind, item.image_id)), equal_to([
                (3, "select", "view_not_allowed", image_id("lateral.dcm")),
                (4, "select", "not_xray", image_id("ct.dcm")),
                (5, "decode", "image_too_large", image_id("large.dcm")),
                (6, "read", "missing_file", image_id("missing.dcm")),
            ]), label="Rejected")


def test_an_io_error_other_than_not_found_fails_the_bundle_naming_the_row_not_the_path(beam_pipeline, tmp_path):
    folder = tmp_path / "Jane-Doe-1961"
    folder.mkdir()  # a directory listed as an image: an OSError that is not "not found"
    image_id = pseudonyms.pseudonymous_image_id(PATIENT_KEY, "csv", "Jane-Doe-1961")
    with pytest.raises(Exception) as raised:
        with beam_pipeline as pipeline:
            _ = (pipeline | beam.Create([listed(str(folder), 7)])
                 | beam.ParDo(preprocess.ReadAndEncodeFn(IMAGE_SIZE, splitting.PatientKey(PATIENT_KEY), FRACTIONS,
                                                          imaging.DEFAULT_MAX_PIXELS, FRONTAL, ORIGINALS_ONLY, 1)))
    message = str(raised.value)
    assert "IsADirectoryError" in message and f"the image listed at line 7 of --csv ({image_id})" in message
    assert "Jane-Doe" not in message


def prepared(source: str, line: int, label: str, content: str, patient: str) -> ImageSummary:
    return ImageSummary(image_id=f"{source}-{line}", source=source,
                        listing="--csv" if source == "csv" else "metadata.csv", line=line, label=label, split="train",
                        patient_key=f"key-{patient}", patient_match_key=patient, content_hash=content)


def test_duplicates_are_used_once_and_conflicting_listings_not_at_all(beam_pipeline):
    images = [
        prepared("csv", 2, "normal", "unique", "A"),
        prepared("csv", 3, "normal", "twice", "B"), prepared("csv", 4, "normal", "twice", "B"),
        prepared("csv", 5, "normal", "two-labels", "C"), prepared("csv", 6, "pneumonia", "two-labels", "C"),
        prepared("csv", 7, "normal", "two-patients", "D"), prepared("csv", 8, "normal", "two-patients", "E"),
        prepared("covid", 9, "covid19", "two-sources", "F"), prepared("csv", 10, "covid19", "two-sources", "F"),
    ]
    with beam_pipeline as pipeline:
        result = pipeline | beam.Create(images) | preprocess.DropDuplicateImages()
        assert_that(result["unique"] | beam.Map(lambda image: (image.source, image.line)), equal_to([
            ("csv", 2), ("csv", 3), ("covid", 9)]), label="Unique")
        assert_that(result["verdicts"] | beam.Map(lambda verdict: (verdict[0], verdict[1][0])), equal_to([
            (("csv", "--csv", 4), "duplicate"), (("csv", "--csv", 5), "duplicate_conflict"),
            (("csv", "--csv", 6), "duplicate_conflict"), (("csv", "--csv", 7), "duplicate_conflict"),
            (("csv", "--csv", 8), "duplicate_conflict"), (("csv", "--csv", 10), "duplicate")]), label="Verdicts")
        assert_that(result[rejections.REJECTED] | beam.Map(
            lambda item: (item.source, item.line, item.stage, item.kind)), equal_to([("csv", 4, "dedupe", "duplicate"),
                              ("csv", 5, "dedupe", "duplicate_conflict"), ("csv", 6, "dedupe", "duplicate_conflict"),
                              ("csv", 7, "dedupe", "duplicate_conflict"), ("csv", 8, "dedupe", "duplicate_conflict"),
                              ("csv", 10, "dedupe", "duplicate")]), label="Rejected")


def test_duplicate_reasons_name_the_conflict_and_the_rows():
    listings = [preprocess.listing_of(image)[1] for image in (
        prepared("csv", 5, "normal", "h", "C"), prepared("csv", 6, "pneumonia", "h", "D"))]
    verdicts = dict(preprocess.duplicate_verdicts("h", listings))
    reason = ("the same image (identical bytes) is listed 2 times with labels ['normal', 'pneumonia'] and "
              "2 different patients: csv line 5 of --csv; csv line 6 of --csv")
    assert verdicts == {("csv", "--csv", 5): ("duplicate_conflict", reason),
                        ("csv", "--csv", 6): ("duplicate_conflict", reason)}
    assert dict(preprocess.duplicate_verdicts("h", listings[:1])) == {}


@pytest.mark.slow
def test_the_command_line_job_writes_the_same_records(job, command_line_job):
    for split in contract.SPLITS:
        assert ([example.SerializeToString() for example in read_records(command_line_job, split)]
                == [example.SerializeToString() for example in read_records(job[0], split)]), split
