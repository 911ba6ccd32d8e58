"""Raw chest X-ray sources → split, class-balanced, sharded TFRecords.

    python -m beam_pipelines.preprocess --rsna_dir RSNA --covid_dir COVID \
        --output_dir OUT [--runner DataflowRunner --project P --region R ...]

Steps: list labelled images from each source → Reshuffle → read and decode each
file (rejects go to the dead-letter output) → split by patient → expand the train
split with augmented copies → encode tf.Examples → write sized shards, the rejected
records and, last, `manifest.json`.
"""

import argparse
import logging
import sys
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipelines import (
    augmentation,
    contract,
    example_codec,
    reading,
    sources,
    splitting,
)
from beam_pipelines.manifest import WriteManifestFn, format_summary, read_manifest
from beam_pipelines.options import build_pipeline_options, configure_logging
from beam_pipelines.records import PreparedImage, Rejection, SourceImage
from beam_pipelines.tfrecord_shards import (
    DEFAULT_MIN_TRAIN_SHARDS,
    DEFAULT_TARGET_SHARD_MB,
    EncodedExample,
    WriteShardedTFRecords,
)

REJECTED = sources.REJECTED
DEFAULT_PATIENT_KEY = "cxr-classifier-default-key"
PROGRESS_EVERY = 500
DEFAULT_SEED = 42
OUTPUT_PATTERNS = (*(contract.shard_pattern(split) for split in contract.SPLITS), "rejected-*.jsonl",
                   contract.MANIFEST_FILE)


class ReadAndPrepareFn(beam.DoFn):
    """Reads one listed image, decodes it once, and decides its split and ids."""

    def __init__(self, image_size: int, patient_key: str, fractions: dict[str, float]):
        self._image_size = image_size
        self._patient_key = patient_key
        self._fractions = fractions
        self._prepared = beam.metrics.Metrics.counter("decode", "images_prepared")
        self._rejected = beam.metrics.Metrics.counter("decode", "images_rejected")
        self._seen = 0

    def process(self, image: SourceImage) -> Iterator:
        self._seen += 1
        if self._seen % PROGRESS_EVERY == 0:
            logging.info("worker has prepared %d images", self._seen)
        try:
            decoded = reading.read_and_preprocess(image.image_uri, self._image_size)
        except reading.UnusableInput as unusable:
            yield self._reject(image, unusable.stage, unusable.kind, unusable.reason)
            return
        patient_key = splitting.pseudonymous_patient_id(self._patient_key, image.source, image.patient_id)
        self._prepared.inc()
        yield PreparedImage(
            image_id=splitting.pseudonymous_image_id(self._patient_key, image.source, image.image_key),
            patient_key=patient_key,
            split=splitting.assign_split(patient_key, self._fractions),
            label=image.label,
            source=image.source,
            view=image.view or decoded.view,
            pixels=decoded.pixels)

    def _reject(self, image: SourceImage, stage: str, kind: str, reason: str):
        self._rejected.inc()
        beam.metrics.Metrics.counter(stage, kind).inc()
        return beam.pvalue.TaggedOutput(REJECTED, Rejection(image.image_uri, image.source, stage, kind, reason))


class ExpandExamplesFn(beam.DoFn):
    """One record per original; train images also get `multiplier - 1` augmented copies."""

    def __init__(self, seed: int):
        self._seed = seed
        self._originals = beam.metrics.Metrics.counter("examples", "originals")
        self._augmented = beam.metrics.Metrics.counter("examples", "augmented_copies")

    def process(self, image: PreparedImage, multipliers: dict[str, int]) -> Iterator[EncodedExample]:
        copies = multipliers[image.label] if image.split == "train" else 1
        fields = example_codec.ExampleFields(label=image.label, image_id=image.image_id, source=image.source,
                                             view=image.view, patient_id=image.patient_key)
        for copy_index, serialized in example_codec.serialize_with_copies(image.pixels, fields, copies, self._seed):
            (self._augmented if copy_index else self._originals).inc()
            yield EncodedExample(image.split, image.label, image.image_id, copy_index, serialized)


class ListSources(beam.PTransform):
    """Every configured source, flattened: outputs `images` and `rejected`."""

    def __init__(self, rsna_dir: str | None, covid_dir: str | None, csv_path: str | None,
                 rsna_not_normal: str):
        super().__init__()
        self._readers = []
        if rsna_dir:
            self._readers.append(("Rsna", rsna_dir, sources.ParseRsnaLabelsFn(rsna_not_normal)))
        if covid_dir:
            self._readers.append(("Covid", covid_dir, sources.ParseCovidMetadataFn()))
        if csv_path:
            self._readers.append(("Csv", csv_path, sources.ParseLabelCsvFn()))

    def expand(self, pipeline):
        listed = [pipeline | f"Read{name}" >> sources.ReadSource(location, parse_fn)
                  for name, location, parse_fn in self._readers]
        return {
            "images": [result.images for result in listed] | "FlattenImages" >> beam.Flatten(),
            REJECTED: [result[REJECTED] for result in listed] | "FlattenRejected" >> beam.Flatten(),
        }


def _count_per_key(pcoll, label: str, key_fn):
    return pcoll | f"{label}Keys" >> beam.Map(key_fn) | f"Count{label}" >> beam.combiners.Count.PerElement()


def build_pipeline(pipeline: beam.Pipeline, args: argparse.Namespace) -> None:
    """Adds the whole preprocess graph to `pipeline`."""
    fractions = splitting.parse_split(args.split)
    configured_multipliers = augmentation.parse_multipliers(args.augment)
    listed = pipeline | "ListSources" >> ListSources(args.rsna_dir, args.covid_dir, args.csv, args.rsna_not_normal)

    prepared = (listed["images"]
                | "FanOut" >> beam.Reshuffle()
                | "ReadAndPrepare" >> beam.ParDo(
                    ReadAndPrepareFn(args.image_size, args.patient_key, fractions)).with_outputs(
                        REJECTED, main="prepared"))

    if configured_multipliers:
        # Known up front: decoding, augmentation and encoding then fuse into one stage.
        multipliers = pipeline | "Multipliers" >> beam.Create([configured_multipliers])
    else:
        train_originals = _count_per_key(
            prepared.prepared | "TrainOnly" >> beam.Filter(lambda image: image.split == "train"),
            "TrainOriginals", lambda image: image.label)
        multipliers = (pipeline
                       | "MultiplierSeed" >> beam.Create([None])
                       | "BalanceMultipliers" >> beam.Map(
                           lambda _, counts: augmentation.balanced_multipliers(counts),
                           counts=beam.pvalue.AsDict(train_originals)))

    examples = prepared.prepared | "ExpandAndEncode" >> beam.ParDo(
        ExpandExamplesFn(args.seed), multipliers=beam.pvalue.AsSingleton(multipliers))
    shards = examples | "WriteShards" >> WriteShardedTFRecords(
        args.output_dir, int(args.target_shard_mb * 1024 * 1024), args.min_shards)

    rejected = ((listed[REJECTED], prepared[REJECTED]) | "AllRejected" >> beam.Flatten())
    rejected_files = (rejected
                      | "RejectedJson" >> beam.Map(Rejection.to_json)
                      | "WriteRejected" >> beam.io.WriteToText(
                          FileSystems.join(args.output_dir, "rejected"), file_name_suffix=".jsonl",
                          shard_name_template="-SSSSS-of-NNNNN", num_shards=1))

    inputs_listed = ((listed["images"] | "CountListed" >> beam.combiners.Count.Globally(),
                      listed[REJECTED] | "CountLabelRejects" >> beam.combiners.Count.Globally())
                     | "ListedParts" >> beam.Flatten()
                     | "SumListed" >> beam.CombineGlobally(sum))
    side = beam.pvalue
    _ = (pipeline
         | "ManifestSeed" >> beam.Create([None])
         | "WriteManifest" >> beam.ParDo(
             WriteManifestFn(args.output_dir, _recorded_options(args)),
             multipliers=side.AsSingleton(multipliers),
             inputs_listed=side.AsSingleton(inputs_listed),
             patients=side.AsList(
                 prepared.prepared
                 | "PatientKeys" >> beam.Map(lambda image: (image.split, image.label, image.patient_key))
                 | "DistinctPatients" >> beam.Distinct()
                 | "PatientSplitClass" >> beam.Map(lambda key: (key[0], key[1]))
                 | "CountPatients" >> beam.combiners.Count.PerElement()),
             originals=side.AsList(_count_per_key(prepared.prepared, "Originals",
                                                  lambda image: (image.split, image.label))),
             examples=side.AsList(_count_per_key(examples, "Examples",
                                                 lambda example: (example.split, example.label))),
             rejected=side.AsList(_count_per_key(rejected, "Rejected", lambda item: item.counter_key)),
             shards=side.AsList(shards),
             rejected_files=side.AsList(rejected_files)))


def _recorded_options(args: argparse.Namespace) -> dict:
    """The job's own flags for the manifest; the patient key is a secret and stays out."""
    recorded = {name: value for name, value in vars(args).items() if name not in ("patient_key", "overwrite")}
    recorded["patient_key_is_default"] = args.patient_key == DEFAULT_PATIENT_KEY
    return recorded


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipelines.preprocess", description=__doc__.split("\n")[0],
        epilog="All other flags are Beam pipeline options (--runner, --project, --region, ...).")
    parser.add_argument("--rsna_dir", help="RSNA Pneumonia Detection Challenge folder (local or gs://).")
    parser.add_argument("--covid_dir", help="ieee8023 covid-chestxray-dataset folder (metadata.csv, images/).")
    parser.add_argument("--csv", help="CSV of image_uri,label,patient_id[,view] for your own data.")
    parser.add_argument("--output_dir", required=True, help="Where shards, rejected-*.jsonl and manifest.json go.")
    parser.add_argument("--image_size", type=int, default=contract.DEFAULT_IMAGE_SIZE,
                        help="Side of the square output images.")
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions of patients.")
    parser.add_argument("--augment", default=augmentation.DEFAULT_MULTIPLIERS,
                        help="Examples per train image, original included: class=N pairs, or 'auto'.")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="Seed of the augmentation randomness.")
    parser.add_argument("--rsna_not_normal", choices=sources.NOT_NORMAL_POLICIES, default="exclude",
                        help="What RSNA 'No Lung Opacity / Not Normal' patients become.")
    parser.add_argument("--patient_key", default=DEFAULT_PATIENT_KEY,
                        help="Secret key of the patient-id hash (pseudonyms and split). Keep it stable "
                             "so patients keep their split; set your own to make ids unlinkable.")
    parser.add_argument("--target_shard_mb", type=float, default=DEFAULT_TARGET_SHARD_MB,
                        help="Approximate size of one TFRecord shard.")
    parser.add_argument("--min_shards", type=int, default=DEFAULT_MIN_TRAIN_SHARDS,
                        help="Fewest train shards, however small the data, so that each machine of a "
                             "multi-worker training job reads its own files (some may be empty).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Delete an earlier run's shards, rejected records and manifest first.")
    return parser


def _existing_outputs(output_dir: str) -> list[str]:
    patterns = [FileSystems.join(output_dir, pattern) for pattern in OUTPUT_PATTERNS]
    return [metadata.path for result in FileSystems.match(patterns) for metadata in result.metadata_list]


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fails fast, before any work, on bad flags, missing inputs or a used output dir."""
    if not (args.rsna_dir or args.covid_dir or args.csv):
        parser.error("give at least one source: --rsna_dir, --covid_dir or --csv")
    if problem := contract.image_size_problem(args.image_size):
        parser.error(f"--image_size: {problem}")
    if args.target_shard_mb <= 0:
        parser.error("--target_shard_mb must be positive")
    if args.min_shards < 1:
        parser.error(f"--min_shards must be at least 1, got {args.min_shards}")
    try:
        splitting.parse_split(args.split)
        augmentation.parse_multipliers(args.augment)
    except ValueError as error:
        parser.error(str(error))
    problems = sources.source_problems(args.rsna_dir, args.covid_dir, args.csv)
    if problems:
        parser.error("input problem: " + "; ".join(problems))
    existing = _existing_outputs(args.output_dir)
    if existing and not args.overwrite:
        parser.error(f"{args.output_dir} already holds a previous run's output ({len(existing)} files, "
                     "e.g. " + existing[0] + "); pass --overwrite to replace it or choose another --output_dir")
    if existing:
        FileSystems.delete(existing)


def run(argv: list[str] | None = None) -> dict | None:
    """Runs the job; returns the manifest when the runner waited for completion."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    validate_args(parser, args)
    options = build_pipeline_options(beam_args)
    with beam.Pipeline(options=options) as pipeline:
        build_pipeline(pipeline, args)
    if FileSystems.exists(FileSystems.join(args.output_dir, contract.MANIFEST_FILE)):
        manifest = read_manifest(args.output_dir)
        print(format_summary(manifest))
        return manifest
    return None


if __name__ == "__main__":
    configure_logging()
    run(sys.argv[1:])
