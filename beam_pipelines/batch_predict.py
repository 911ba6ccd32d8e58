"""Batch prediction: chest X-ray files → one CSV row of class probabilities per file.

    python -m beam_pipelines.predict --model_dir JOB_DIR/export \
        --input_pattern 'gs://bucket/incoming/*.dcm' \
        --output_path gs://bucket/predictions/run-001/predictions \
        [--runner DataflowRunner --project P --region R ...]

Steps: list the inputs (a glob of DICOM/PNG/JPEG files, or a CSV whose `image_uri` column
names them) → Reshuffle → read each file and turn it into the record the model serves on,
with `imaging.preprocess_image`, the function that made the training records, at the image
size the model states (`serving.model_store`) → tfx-bsl
in-process inference through the exported `serving_default` signature, keyed by uri →
`PREFIX-00000-of-00001.csv` (`uri,predicted_class,p_normal,p_pneumonia,p_covid19`).
Inputs that cannot be read or decoded go to `rejected-00000-of-00001.jsonl` in the same
folder, with the reason, so that every listed input is in exactly one of the two files.
Both are single files, rewritten by each run: a row is ~100 bytes, so even a million
predictions make one manageable CSV, and no shard of an earlier run can linger among them.
"""

import argparse
import csv
import io
from collections.abc import Iterator

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.runners.runner import PipelineResult
from tensorflow_serving.apis import prediction_log_pb2
from tfx_bsl.public.beam.run_inference import CreateModelHandler
from tfx_bsl.public.proto import model_spec_pb2

from beam_pipelines import label_files, reading, sources
from beam_pipelines.options import build_pipeline_options
from beam_pipelines.rejections import REJECTED, reject
from cxr_core import contract, imaging
from cxr_core.rejection import Rejection, UnusableInput
from serving import model_store

METRICS_NAMESPACE = "predict"
CSV_URI_COLUMN = "image_uri"
GLOB_SOURCE = "glob"
PREDICTION_COLUMNS = ("uri", "predicted_class", *(f"p_{name}" for name in contract.CLASS_NAMES))
SINGLE_FILE_TEMPLATE = "-SSSSS-of-NNNNN"
# Caps RunInference's adaptive batching, which would otherwise grow batches into the thousands:
# 32 ResNet50 inputs at 128² take a few hundred MB of activations, which leaves each SDK
# process of a 4 GB-per-vCPU worker room for its own copy of the model.
MAX_BATCH_SIZE = 32


def lists_uris(input_pattern: str) -> bool:
    """True when the input is a CSV listing the images rather than a glob of them."""
    return input_pattern.lower().endswith(".csv")


def serving_example(png: bytes) -> bytes:
    """The serialized tf.Example that `serving_default` parses.

    It reads `image/encoded` only; the label and id features are left out rather than
    filled with placeholders, since nothing about a study to predict is known.
    """
    feature = {contract.IMAGE_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[png]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def inference_spec(model_dir: str) -> model_spec_pb2.InferenceSpecType:
    """In-process inference with the SavedModel's `serving_default` signature."""
    return model_spec_pb2.InferenceSpecType(
        saved_model_spec=model_spec_pb2.SavedModelSpec(
            model_path=model_dir, signature_name=[contract.SERVING_EXAMPLES_SIGNATURE]),
        batch_parameters=model_spec_pb2.BatchParameters(max_batch_size=MAX_BATCH_SIZE))


def rejected_prefix(output_path: str) -> str:
    """`rejected` in the folder of the prediction files."""
    return FileSystems.join(FileSystems.split(output_path)[0], "rejected")


def single_file_name(prefix: str, suffix: str) -> str:
    """Name WriteToText gives the one shard of `prefix`."""
    return f"{prefix}-00000-of-00001{suffix}"


def _counter(name: str) -> beam.metrics.metricbase.Counter:
    return beam.metrics.Metrics.counter(METRICS_NAMESPACE, name)


class ListInputsFn(beam.DoFn):
    """A glob → the files it matches; a CSV → the uris of its `image_uri` column.

    Relative uris in a CSV resolve next to it, as in the preprocess job's CSV source.
    """

    def __init__(self):
        self._listed = _counter("inputs_listed")
        self._rejected = _counter("rejected")

    def process(self, input_pattern: str) -> Iterator:
        if not lists_uris(input_pattern):
            for match in FileSystems.match([input_pattern]):
                for metadata in match.metadata_list:
                    self._listed.inc()
                    yield metadata.path
            return
        _, rows = label_files.read_csv_rows(input_pattern)
        for row in rows:
            self._listed.inc()
            uri = row.get(CSV_URI_COLUMN, "")
            if not uri:
                yield reject(Rejection(source=sources.CSV, stage="read", kind="empty_uri",
                                       reason="a row has no image_uri", uri=input_pattern), self._rejected)
                continue
            yield label_files.resolve_listed_uri(uri, input_pattern)


class ReadAndEncodeFn(beam.DoFn):
    """Reads one file and encodes it as the model's input, decoded exactly as in training."""

    def __init__(self, image_size: int, source: str):
        self._image_size = image_size
        self._source = source
        self._encoded = _counter("images_encoded")
        self._rejected = _counter("rejected")

    def process(self, uri: str) -> Iterator:
        try:
            decoded = reading.read_and_preprocess(uri, self._image_size)
        except UnusableInput as unusable:
            yield reject(Rejection(source=self._source, stage=unusable.stage, kind=unusable.kind,
                                   reason=unusable.reason, uri=uri), self._rejected)
            return
        self._encoded.inc()
        yield uri, serving_example(imaging.encode_png(decoded.pixels))


class FormatPredictionFn(beam.DoFn):
    """(uri, PredictionLog) → one CSV line; probabilities keep full float32 precision."""

    def __init__(self):
        self._per_class = {name: _counter(f"predicted_{name}") for name in contract.CLASS_NAMES}

    def process(self, keyed_log: tuple[str, prediction_log_pb2.PredictionLog]) -> Iterator[str]:
        uri, log = keyed_log
        outputs = log.predict_log.response.outputs
        probabilities = tf.make_ndarray(outputs[contract.PROBABILITIES_OUTPUT]).reshape(-1)
        class_name = contract.CLASS_NAMES[int(tf.make_ndarray(outputs[contract.CLASS_ID_OUTPUT]).reshape(-1)[0])]
        self._per_class[class_name].inc()
        yield csv_line([uri, class_name, *(str(np.float32(value)) for value in probabilities)])


def csv_line(values: list[str]) -> str:
    """One CSV record without its line end (WriteToText adds it); quotes uris with commas."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def build_pipeline(pipeline: beam.Pipeline, args: argparse.Namespace) -> None:
    """Adds the whole prediction graph to `pipeline`."""
    source = sources.CSV if lists_uris(args.input_pattern) else GLOB_SOURCE
    listed = (pipeline
              | "InputPattern" >> beam.Create([args.input_pattern])
              | "ListInputs" >> beam.ParDo(ListInputsFn()).with_outputs(REJECTED, main="uris"))
    encoded = (listed.uris
               | "FanOut" >> beam.Reshuffle()
               | "ReadAndEncode" >> beam.ParDo(ReadAndEncodeFn(args.image_size, source)).with_outputs(
                   REJECTED, main="examples"))

    model_handler = KeyedModelHandler(CreateModelHandler(inference_spec(args.model_dir)))
    _ = (encoded.examples
         | "Predict" >> RunInference(model_handler)
         | "FormatRows" >> beam.ParDo(FormatPredictionFn())
         | "WritePredictions" >> beam.io.WriteToText(
             args.output_path, file_name_suffix=".csv", shard_name_template=SINGLE_FILE_TEMPLATE, num_shards=1,
             header=",".join(PREDICTION_COLUMNS)))

    _ = ((listed[REJECTED], encoded[REJECTED])
         | "AllRejected" >> beam.Flatten()
         | "RejectedJson" >> beam.Map(Rejection.to_json)
         | "WriteRejected" >> beam.io.WriteToText(
             rejected_prefix(args.output_path), file_name_suffix=".jsonl",
             shard_name_template=SINGLE_FILE_TEMPLATE, num_shards=1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipelines.predict", description=__doc__.split("\n")[0],
        epilog="All other flags are Beam pipeline options (--runner, --project, --region, ...).")
    parser.add_argument("--model_dir", required=True,
                        help="The trainer's export/ SavedModel folder (or the job dir that holds it).")
    parser.add_argument("--input_pattern", required=True,
                        help="Glob of DICOM/PNG/JPEG files, or a .csv whose image_uri column lists them "
                             "(relative uris resolve next to the CSV).")
    parser.add_argument("--output_path", required=True,
                        help="Prefix of the prediction CSV, e.g. out/predictions → out/predictions-00000-of-00001.csv; "
                             "rejected-00000-of-00001.jsonl goes to the same folder.")
    return parser


def input_problem(input_pattern: str) -> str | None:
    """What makes the input unusable: a missing CSV or column, or a glob matching nothing."""
    if lists_uris(input_pattern):
        if not FileSystems.exists(input_pattern):
            return f"{input_pattern} does not exist"
        header, _ = label_files.read_csv_rows(input_pattern)
        return None if CSV_URI_COLUMN in header else f"{input_pattern} has no {CSV_URI_COLUMN} column"
    if not FileSystems.match([input_pattern], limits=[1])[0].metadata_list:
        return f"{input_pattern} matches no files"
    return None


def load_model(model_dir: str) -> tuple[str, int]:
    """The export folder and the image size its contract states; runs `serving_default` once on a blank image.

    Raises:
      model_store.ModelStoreError: no servable model.
    """
    loaded = model_store.load(model_dir)
    image_size = loaded.contract.image_size
    if contract.SERVING_EXAMPLES_SIGNATURE not in loaded.signatures:
        raise model_store.ModelStoreError(
            f"the SavedModel at {loaded.export_dir} has no {contract.SERVING_EXAMPLES_SIGNATURE} signature")
    blank = serving_example(imaging.encode_png(np.zeros((image_size, image_size), dtype=np.uint8)))
    try:
        loaded.signatures[contract.SERVING_EXAMPLES_SIGNATURE](tf.constant([blank]))
    except tf.errors.InvalidArgumentError as error:
        raise model_store.ModelStoreError(
            f"the model at {loaded.export_dir} does not take the {image_size}x{image_size} images its metadata "
            "states: re-export it with the current trainer") from error
    return loaded.export_dir, image_size


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, int]:
    """Fails fast, before any work, on bad flags, a missing input or an unusable model.

    Returns the model's export folder and the image size it was trained on.
    """
    if args.output_path.endswith("/"):
        parser.error(f"--output_path is a file prefix such as out/predictions, not a folder: {args.output_path}")
    if problem := input_problem(args.input_pattern):
        parser.error(problem)
    try:
        return load_model(args.model_dir)
    except model_store.ModelStoreError as error:
        parser.error(str(error))


def format_summary(result: PipelineResult, args: argparse.Namespace) -> str:
    """Counts of predictions per class and of rejected inputs, from the job's metrics."""
    counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    counts = {}
    for counter in counters:
        counts[counter.key.metric.name] = counts.get(counter.key.metric.name, 0) + (counter.result or 0)
    per_class = ", ".join(f"{name} {counts.get(f'predicted_{name}', 0)}" for name in contract.CLASS_NAMES)
    predicted = sum(counts.get(f"predicted_{name}", 0) for name in contract.CLASS_NAMES)
    return (f"{counts.get('inputs_listed', 0)} inputs: {predicted} predictions ({per_class}) in "
            f"{single_file_name(args.output_path, '.csv')}; {counts.get('rejected', 0)} rejected in "
            f"{single_file_name(rejected_prefix(args.output_path), '.jsonl')}")


def run(argv: list[str] | None = None) -> PipelineResult:
    """Runs the job and waits for it; prints a one-line summary."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    args.model_dir, args.image_size = validate_args(parser, args)
    pipeline = beam.Pipeline(options=build_pipeline_options(beam_args))
    build_pipeline(pipeline, args)
    result = pipeline.run()
    result.wait_until_finish()
    print(format_summary(result, args))
    return result

