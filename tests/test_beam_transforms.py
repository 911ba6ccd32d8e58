"""Each DoFn and composite transform of the preprocess and prediction jobs, run alone.

As in apache_beam/examples/complete/estimate_pi_test.py: one transform in a TestPipeline,
its output checked with `assert_that`. The whole jobs are tested in test_preprocess.py
and test_serving.py; these tests name the stage that broke.
"""

import collections
import glob
import json
import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from beam_pipelines import (
    batch_predict,
    example_codec,
    manifest,
    preprocess,
    rejections,
    sources,
    splitting,
    tfrecord_shards,
)
from beam_pipelines.records import SourceImage
from cxr_core import contract, imaging, selection
from cxr_core.rejection import Rejection
from synthetic import phantom

IMAGE_SIZE = 32
FRACTIONS = {"train": 1.0, "val": 0.0, "test": 0.0}
KEY = splitting.PatientKey(value="transform-test-key-of-enough-length")
VIEWS = selection.parse_allowed_views(selection.DEFAULT_ALLOWED_VIEWS)
MULTIPLIERS = {"normal": 3, "pneumonia": 2, "covid19": 5}


def chest_png(tmp_path, name: str, label: str = "normal") -> str:
    path = str(tmp_path / name)
    with open(path, "wb") as handle:
        handle.write(imaging.encode_png(imaging.scale_to_uint8(phantom.render_chest(3, label, 64))))
    return path


def source_image(uri: str, label: str = "normal", patient: str = "p1", key: str | None = None) -> SourceImage:
    return SourceImage(source=sources.CSV, image_uri=uri, image_key=key or os.path.basename(uri),
                       patient_id=patient, label=label)


GRADIENT = np.linspace(0, 255, IMAGE_SIZE * IMAGE_SIZE).astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)


def fields_of(label: str, image_id: str) -> example_codec.ExampleFields:
    return example_codec.ExampleFields(label=label, image_id=image_id, source=sources.CSV, view="PA",
                                       patient_id="f" * 64)


def original(split: str, label: str, image_id: str) -> tfrecord_shards.EncodedExample:
    return tfrecord_shards.EncodedExample(split, label, image_id, 0, example_codec.serialize_example(
        GRADIENT, fields_of(label, image_id)), (sources.CSV, "--csv", 2))


def test_read_and_encode_decodes_good_files_and_rejects_the_rest(beam_pipeline, tmp_path):
    good = chest_png(tmp_path, "good.png")
    not_an_image = str(tmp_path / "notes.png")
    with open(not_an_image, "w") as handle:
        handle.write("not pixels")
    listed = [source_image(good), source_image(str(tmp_path / "absent.png"), patient="p2"),
              source_image(not_an_image, patient="p3")]
    with beam_pipeline as pipeline:
        results = (pipeline
                   | beam.Create(listed)
                   | beam.ParDo(preprocess.ReadAndEncodeFn(
                       IMAGE_SIZE, KEY, FRACTIONS, imaging.DEFAULT_MAX_PIXELS, VIEWS, MULTIPLIERS,
                       seed=1)).with_outputs(preprocess.ReadAndEncodeFn.SUMMARIES, rejections.REJECTED,
                                             main="examples"))
        assert_that(results[preprocess.ReadAndEncodeFn.SUMMARIES] | beam.Map(
            lambda image: (image.split, image.label, image.line)), equal_to([("train", "normal", 0)]),
            label="Summaries")
        assert_that(results.examples | beam.Map(lambda example: (example.split, example.label, example.augmentation)),
                    equal_to([("train", "normal", copy) for copy in range(MULTIPLIERS["normal"])]), label="Examples")
        assert_that(results[rejections.REJECTED] | beam.Map(lambda rejection: (rejection.stage, rejection.kind)),
                    equal_to([("read", "missing_file"), ("decode", "not_an_image")]), label="Rejected")


def test_augmented_copies_are_added_in_train_only_and_match_copies_made_from_the_pixels(beam_pipeline):
    originals = [original("train", "normal", "csv-1"), original("val", "covid19", "csv-2"),
                 original("test", "pneumonia", "csv-3")]
    from_pixels = dict(example_codec.serialize_with_copies(GRADIENT, fields_of("normal", "csv-1"), 3, seed=1))
    with beam_pipeline as pipeline:
        examples = (pipeline
                    | "Originals" >> beam.Create(originals)
                    | beam.ParDo(preprocess.AddAugmentedCopiesFn(seed=1),
                                 multipliers=beam.pvalue.AsSingleton(
                                     pipeline | "Multipliers" >> beam.Create([MULTIPLIERS]))))
        assert_that(examples | beam.Map(lambda example: (example.split, example.key, example.augmentation,
                                                         example.origin)),
                    equal_to([("train", "csv-1", 0, ("csv", "--csv", 2)), ("train", "csv-1", 1, ("csv", "--csv", 2)),
                              ("train", "csv-1", 2, ("csv", "--csv", 2)), ("val", "csv-2", 0, ("csv", "--csv", 2)),
                              ("test", "csv-3", 0, ("csv", "--csv", 2))]), label="Copies")
        assert_that(examples
                    | beam.Filter(lambda example: example.key == "csv-1")
                    | beam.Map(lambda example: (example.augmentation, example.serialized)),
                    equal_to(list(from_pixels.items())), label="SameBytes")


def encoded(split: str, index: int, size: int) -> tfrecord_shards.EncodedExample:
    return tfrecord_shards.EncodedExample(split, "normal", f"csv-{split}-{index}", 0, bytes([index % 256]) * size)


def test_sharded_writer_sizes_and_names_the_shards(beam_pipeline, tmp_path):
    examples = [encoded("train", index, 1000) for index in range(10)] + [encoded("val", 0, 1000)]
    with beam_pipeline as pipeline:
        shards = (pipeline
                  | beam.Create(examples)
                  | tfrecord_shards.WriteShardedTFRecords(str(tmp_path), target_shard_bytes=4000,
                                                         min_train_shards=1))
        assert_that(shards | beam.Map(lambda shard: shard["file"]), equal_to(
            [contract.shard_name("train", index, 3) for index in range(3)] + [contract.shard_name("val", 0, 1)]))
    written = sorted(os.path.basename(path) for path in glob.glob(str(tmp_path / "*")))
    assert written == sorted([contract.shard_name("train", index, 3) for index in range(3)]
                             + [contract.shard_name("val", 0, 1)]), "no temporary file is left behind"
    records = [record for path in glob.glob(str(tmp_path / contract.shard_pattern("train")))
               for record in tf.data.TFRecordDataset(path, compression_type=contract.TFRECORD_COMPRESSION)
               .as_numpy_iterator()]
    assert sorted(records) == sorted(example.serialized for example in examples if example.split == "train")


def test_sharded_writer_withholds_the_examples_of_withheld_origins(beam_pipeline, tmp_path):
    examples = [encoded("train", index, 1000)._replace(origin=("csv", "--csv", index)) for index in range(10)]
    with beam_pipeline as pipeline:
        withheld = pipeline | "Withheld" >> beam.Create([(("csv", "--csv", index), "duplicate") for index in (0, 1)])
        shards = (pipeline
                  | "Examples" >> beam.Create(examples)
                  | tfrecord_shards.WriteShardedTFRecords(str(tmp_path), target_shard_bytes=4000,
                                                         min_train_shards=1, withheld=withheld))
        assert_that(shards | beam.Map(lambda shard: (shard["file"], shard["records"]))
                    | beam.combiners.ToList() | beam.Map(lambda written: (len(written), sum(n for _, n in written))),
                    equal_to([(2, 8)]))
    records = [record for path in glob.glob(str(tmp_path / contract.shard_pattern("train")))
               for record in tf.data.TFRecordDataset(path, compression_type=contract.TFRECORD_COMPRESSION)
               .as_numpy_iterator()]
    assert sorted(records) == sorted(example.serialized for example in examples[2:])


def write_manifest(pipeline: beam.Pipeline, output_dir: str, staging_dir: str, examples: dict, shards: list):
    counts = {("train", "normal"): 2, ("val", "normal"): 1, ("test", "covid19"): 1}
    tables = {"inputs": {"listed": 5}, "patients": counts, "originals": counts, "examples": examples,
              "source_originals": {("site-a", "normal"): 3, ("rsna", "normal"): 1, ("covid", "covid19"): 1},
              "rejected": {"read/missing_file": 1}, "notes": {"invalid_voi_window": 1}}
    side = {name: beam.pvalue.AsList(pipeline | f"Side{name}" >> beam.Create(values)) for name, values in {
        "shards": shards, "rejected_files": ["rejected-00000-of-00001.jsonl"]}.items()}
    return (pipeline
            | "Seed" >> beam.Create([None])
            | beam.ParDo(manifest.WriteManifestFn(output_dir, staging_dir, {"image_size": IMAGE_SIZE}),
                         multipliers=beam.pvalue.AsSingleton(
                             pipeline | "Multipliers" >> beam.Create([{"normal": 2, "pneumonia": 2, "covid19": 30}])),
                         counts=beam.pvalue.AsSingleton(pipeline | "Counts" >> beam.Create([tables])),
                         **side))


def test_manifest_tables_are_counted_in_one_combine(beam_pipeline):
    keys = [("inputs", "listed")] * 4 + [
        ("originals", ("train", "normal")), ("originals", ("train", "normal")), ("originals", ("val", "covid19")),
        ("patients", ("train", "normal", "p1")), ("patients", ("train", "normal", "p1")),
        ("patients", ("train", "normal", "p2")), ("patients", ("val", "covid19", "p3")),
        ("rejected", "read/missing_file"), ("notes", "invalid_voi_window")]
    with beam_pipeline as pipeline:
        counts = pipeline | beam.Create(keys) | beam.CombineGlobally(manifest.CountManifestTablesFn())
        assert_that(counts, equal_to([{
            "inputs": {"listed": 4}, "originals": {("train", "normal"): 2, ("val", "covid19"): 1},
            "patients": {("train", "normal"): 2, ("val", "covid19"): 1}, "source_originals": {}, "examples": {},
            "rejected": {"read/missing_file": 1}, "notes": {"invalid_voi_window": 1}}]))


def staged_shards(staging_dir, records_per_split: dict[str, int]) -> list[dict]:
    staging_dir.mkdir()
    shards = []
    for split, records in records_per_split.items():
        name = contract.shard_name(split, 0, 1)
        (staging_dir / name).write_bytes(b"shard")
        shards.append({"split": split, "file": name, "records": records, "bytes": 5})
    return shards


def test_manifest_writer_writes_the_counts_it_is_given_and_moves_the_shards_in(beam_pipeline, tmp_path):
    staging_dir = tmp_path / "staging"
    shards = staged_shards(staging_dir, {"train": 4, "val": 1, "test": 1})
    examples = {("train", "normal"): 4, ("val", "normal"): 1, ("test", "covid19"): 1}
    with beam_pipeline as pipeline:
        written = write_manifest(pipeline, str(tmp_path), str(staging_dir), examples, shards)
        assert_that(written | beam.Map(lambda written_manifest: written_manifest["inputs"]),
                    equal_to([{"listed": 5, "used": 4, "rejected": 1}]))
    with open(tmp_path / contract.MANIFEST_FILE) as handle:
        on_disk = json.load(handle)
    assert on_disk["examples"]["train"] == {"normal": 4, "pneumonia": 0, "covid19": 0}
    assert on_disk["rejected"] == {"read/missing_file": 1}
    assert on_disk["notes"] == {"invalid_voi_window": 1}
    assert any("pneumonia" in warning and "val" in warning for warning in on_disk["warnings"])
    assert on_disk["originals_by_source"] == {"covid": {"normal": 0, "pneumonia": 0, "covid19": 1},
                                              "rsna": {"normal": 1, "pneumonia": 0, "covid19": 0},
                                              "site-a": {"normal": 3, "pneumonia": 0, "covid19": 0}}
    assert on_disk["warnings"][:2] == [
        "normal comes only from rsna and site-a, which hold no other class: normal vs the rest can be learnt from the "
        "source; only within-source figures show what the model reads",
        "covid19 comes only from covid, which holds no other class: covid19 vs the rest can be learnt from the "
        "source; only within-source figures show what the model reads"]
    assert sorted(os.listdir(tmp_path)) == sorted([contract.MANIFEST_FILE] + [shard["file"] for shard in shards])


def test_manifest_writer_leaves_the_shards_staged_when_examples_are_missing_from_them(beam_pipeline, tmp_path):
    staging_dir = tmp_path / "staging"
    shards = staged_shards(staging_dir, {"train": 3, "val": 1, "test": 1})
    examples = {("train", "normal"): 4, ("val", "normal"): 1, ("test", "covid19"): 1}
    with pytest.raises(Exception, match="4 train examples encoded but 3 written to its shards"):
        with beam_pipeline as pipeline:
            write_manifest(pipeline, str(tmp_path), str(staging_dir), examples, shards)
    assert os.listdir(tmp_path) == ["staging"], "no shard is published and no manifest written"
    assert sorted(os.listdir(staging_dir)) == sorted(shard["file"] for shard in shards)


def test_list_sources_flattens_every_configured_source(beam_pipeline, tmp_path):
    listing = tmp_path / "labels.csv"
    listing.write_text("image_uri,label,patient_id\na.png,normal,p1\nb.png,covid19,p2\nc.png,flu,p3\n")
    for name in ("Covid-19/x.png", "Other/y.png"):
        (tmp_path / "folder" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "folder" / name).write_bytes(b"pixels")
    folder = sources.ImageFolder(str(tmp_path / "folder"), "folder", selection.parse_folder_classes(""))
    with beam_pipeline as pipeline:
        listed = pipeline | preprocess.ListSources(None, None, str(listing), "exclude", KEY, VIEWS, folder)
        assert_that(listed["images"] | beam.Map(lambda image: (image.source, image.label)),
                    equal_to([("csv", "normal"), ("csv", "covid19"), ("folder", "covid19")]), label="Images")
        assert_that(listed[rejections.REJECTED] | beam.Map(lambda rejection: (rejection.source, rejection.kind)),
                    equal_to([("csv", "unknown_label"), ("folder", "unknown_folder")]), label="Rejected")


def prediction_log(probabilities: list[float]) -> prediction_log_pb2.PredictionLog:
    response = predict_pb2.PredictResponse()
    response.outputs[contract.PROBABILITIES_OUTPUT].CopyFrom(
        tf.make_tensor_proto(np.array([probabilities], dtype=np.float32)))
    response.outputs[contract.CLASS_ID_OUTPUT].CopyFrom(
        tf.make_tensor_proto(np.array([int(np.argmax(probabilities))], dtype=np.int64)))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(response=response))


def test_prediction_formatter_writes_one_csv_row_per_prediction(beam_pipeline):
    keyed_logs = [("gs://b/a.dcm", prediction_log([0.1, 0.2, 0.7])),
                  ("gs://b/with,comma.png", prediction_log([0.6, 0.3, 0.1]))]
    with beam_pipeline as pipeline:
        rows = pipeline | beam.Create(keyed_logs) | beam.ParDo(batch_predict.FormatPredictionFn())
        assert_that(rows, equal_to([
            "gs://b/a.dcm,covid19,0.1,0.2,0.7",  # float32 values, written at the float32 shortest round trip
            '"gs://b/with,comma.png",normal,0.6,0.3,0.1']))


def test_prediction_inputs_are_listed_from_a_glob_or_a_csv(beam_pipeline, tmp_path):
    for name in ("x.png", "y.png"):
        chest_png(tmp_path, name)
    listing = tmp_path / "inputs.csv"
    listing.write_text("image_uri,note\nx.png,first\n,no uri\n")
    with beam_pipeline as pipeline:
        listed = (pipeline
                  | beam.Create([str(tmp_path / "*.png"), str(listing)])
                  | beam.ParDo(batch_predict.ListInputsFn()).with_outputs(rejections.REJECTED, main="uris"))
        assert_that(listed.uris, equal_to([str(tmp_path / "x.png"), str(tmp_path / "y.png"),
                                           str(tmp_path / "x.png")]), label="Uris")
        assert_that(listed[rejections.REJECTED] | beam.Map(lambda rejection: rejection.kind),
                    equal_to(["empty_uri"]), label="Rejected")


def test_prediction_reader_encodes_what_training_decodes_and_rejects_the_rest(beam_pipeline, tmp_path):
    good = chest_png(tmp_path, "good.png")
    with beam_pipeline as pipeline:
        results = (pipeline
                   | beam.Create([good, str(tmp_path / "absent.png")])
                   | beam.ParDo(batch_predict.ReadAndEncodeFn(IMAGE_SIZE, batch_predict.GLOB_SOURCE)).with_outputs(
                       rejections.REJECTED, main="examples"))
        expected_png = imaging.encode_png(imaging.preprocess_image(open(good, "rb").read(), IMAGE_SIZE).pixels)
        assert_that(results.examples, equal_to([(good, batch_predict.serving_example(expected_png))]),
                    label="Examples")
        assert_that(results[rejections.REJECTED] | beam.Map(lambda rejection: (rejection.stage, rejection.kind)),
                    equal_to([("read", "missing_file")]), label="Rejected")


def test_rejections_serialise_to_one_json_object():
    rejection = Rejection(source=sources.CSV, stage="decode", kind="not_an_image", reason="not a readable image",
                          image_id="csv-1", listing="labels.csv", line=3)
    assert json.loads(rejection.to_json()) == {"image_id": "csv-1", "listing": "labels.csv", "line": 3,
                                               "source": sources.CSV, "stage": "decode",
                                               "kind": "not_an_image", "reason": "not a readable image"}
    assert rejection.counter_key == "decode/not_an_image"


class RejectOddFn(beam.DoFn):
    """Rejects odd numbers with a total of its own and multiples of 4 without one; passes the rest."""

    def __init__(self):
        self._odd = beam.metrics.Metrics.counter("test", "odd_rejected")

    def process(self, number: int):
        if number % 2:
            yield rejections.reject(Rejection(source=sources.CSV, stage="label", kind="odd", reason="an odd number",
                                              line=number), self._odd)
        elif number % 4 == 0:
            yield rejections.reject(Rejection(source=sources.CSV, stage="select", kind="four",
                                              reason="a multiple of 4", line=number))
        else:
            yield number


def test_reject_counts_each_rejection_and_tags_it_for_the_rejected_output(beam_pipeline):
    results = (beam_pipeline
               | beam.Create([1, 2, 3, 4, 5, 6])
               | beam.ParDo(RejectOddFn()).with_outputs(rejections.REJECTED, main="kept"))
    assert_that(results.kept, equal_to([2, 6]), label="Kept")
    assert_that(results[rejections.REJECTED] | beam.Map(lambda rejection: (rejection.line, rejection.counter_key)),
                equal_to([(1, "label/odd"), (3, "label/odd"), (5, "label/odd"), (4, "select/four")]),
                label="Rejected")
    result = beam_pipeline.run()
    result.wait_until_finish()
    counters = collections.Counter()
    for counter in result.metrics().query()["counters"]:
        counters[f"{counter.key.metric.namespace}/{counter.key.metric.name}"] += counter.committed
    assert counters == {"label/odd": 3, "test/odd_rejected": 3, "select/four": 1}


def test_shard_writer_writes_one_shard_in_record_order(beam_pipeline, tmp_path):
    grouped = [(("test", 1, 2), {"records": [("b-order", b"second"), ("a-order", b"first")]})]
    with beam_pipeline as pipeline:
        written = pipeline | beam.Create(grouped) | beam.ParDo(tfrecord_shards.WriteShardFn(str(tmp_path)))
        assert_that(written, equal_to([{"split": "test", "file": contract.shard_name("test", 1, 2),
                                         "records": 2, "bytes": len(b"second") + len(b"first")}]))
    path = str(tmp_path / contract.shard_name("test", 1, 2))
    assert list(tf.data.TFRecordDataset(path, compression_type=contract.TFRECORD_COMPRESSION)
                .as_numpy_iterator()) == [b"first", b"second"]


def test_rejected_records_are_written_sorted_to_one_file(beam_pipeline, tmp_path):
    lines = ['{"line": 3}', '{"line": 1}', '{"line": 2}']
    path = str(tmp_path / rejections.REJECTED_FILE)
    with beam_pipeline as pipeline:
        written = (pipeline
                   | beam.Create(lines)
                   | beam.combiners.ToList()
                   | beam.ParDo(rejections.WriteRejectedFn(path)))
        assert_that(written, equal_to([path]))
    assert (tmp_path / rejections.REJECTED_FILE).read_bytes() == b'{"line": 1}\n{"line": 2}\n{"line": 3}\n'
    assert os.listdir(tmp_path) == [rejections.REJECTED_FILE], "no temporary file is left behind"
