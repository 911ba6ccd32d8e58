"""Raw chest X-ray sources → split, class-balanced, sharded TFRecords.

    python -m beam_pipelines.preprocess --rsna_dir RSNA --covid_dir COVID \
        --patient_key_file KEY_FILE --output_dir OUT [--runner DataflowRunner --project P --region R ...]

Steps: list labelled images from each source → Reshuffle → read and decode each
file, keep frontal radiographs (rejects go to the dead-letter output), split by patient
and encode its tf.Examples (train images with their augmented copies) in the same step,
which also emits a small summary of the image → keep one listing of each image (same
bytes), decided on the summaries → write sized shards without the duplicates' examples,
the rejected records and, last, `manifest.json` (counted from the summaries), when the
shards move from a staging folder into the output dir.
"""

import argparse
import hashlib
import logging
import posixpath
import sys
from collections.abc import Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipelines import example_codec, reading, sources, splitting, storage
from beam_pipelines.manifest import CountManifestTablesFn, WriteManifestFn, format_summary, read_manifest
from beam_pipelines.options import build_pipeline_options, configure_logging
from beam_pipelines.records import ImageSummary, Listing, SourceImage
from beam_pipelines.rejections import REJECTED, REJECTED_FILE, WriteRejectedFn, reject
from beam_pipelines.tfrecord_shards import (
    DEFAULT_MIN_TRAIN_SHARDS,
    DEFAULT_TARGET_SHARD_MB,
    EncodedExample,
    WriteShardedTFRecords,
)
from cxr_core import augmentation, contract, imaging, pseudonyms, selection
from cxr_core.rejection import Rejection, UnusableInput, listing_location

PROGRESS_EVERY = 500
DEFAULT_SEED = 42
# Shards are written here and moved into the output dir with the manifest (manifest.py).
STAGING_FOLDER = ".staging"
# An interrupted run also leaves its staged shards and its own temporary files; Beam's temporary
# folders (beam-temp-*) are those of runs that wrote the rejected records with WriteToText.
OUTPUT_PATTERNS = (*(contract.shard_pattern(split) for split in contract.SPLITS), "rejected-*.jsonl",
                   contract.MANIFEST_FILE, storage.TEMPORARY_PATTERN, "beam-temp-*/**", f"{STAGING_FOLDER}/**")


class ReadAndEncodeFn(beam.DoFn):
    """Reads one listed image, decodes it once, checks its header, and encodes its examples.

    The decoded pixels never leave this DoFn: it outputs the encoded examples (main output,
    each with the image's listing row as its `origin`), one small `ImageSummary` per
    accepted image (SUMMARIES) for duplicate detection and the manifest's counts, and
    rejections. `copies` is the number of examples per train image of each class, the
    original included; with all ones only originals are made (their copies then come from
    `AddAugmentedCopiesFn`, once balanced multipliers are known). A file that cannot be
    used is rejected; an I/O error other than not-found is raised (so the runner retries)
    naming the image by its listing row and image id only.
    """

    SUMMARIES = "summaries"

    def __init__(self, image_size: int, patient_key: splitting.PatientKey, fractions: dict[str, float],
                 max_pixels: int, allowed_views: frozenset[str], copies: dict[str, int], seed: int):
        self._image_size = image_size
        self._patient_key = patient_key
        self._fractions = fractions
        self._max_pixels = max_pixels
        self._allowed_views = allowed_views
        self._copies = copies
        self._seed = seed
        self._key = ""
        self._prepared = beam.metrics.Metrics.counter("decode", "images_prepared")
        self._rejected = beam.metrics.Metrics.counter("decode", "images_rejected")
        self._originals = beam.metrics.Metrics.counter("examples", "originals")
        self._augmented = beam.metrics.Metrics.counter("examples", "augmented_copies")
        self._seen = 0

    def setup(self):
        self._key = self._patient_key.load()

    def process(self, image: SourceImage) -> Iterator:
        self._seen += 1
        if self._seen % PROGRESS_EVERY == 0:
            logging.info("worker has prepared %d images", self._seen)
        image_id = pseudonyms.pseudonymous_image_id(self._key, image.source, image.image_key)
        try:
            data = reading.read_file(image.image_uri, imaging.max_file_bytes(self._max_pixels),
                                     name=f"the image listed at {image.location} ({image_id})")
            decoded = imaging.preprocess_bytes(data, self._image_size, image.image_uri, self._max_pixels)
        except UnusableInput as unusable:
            yield self._reject(image, image_id, unusable.stage, unusable.kind, unusable.reason)
            return
        verdict = selection.header_verdict(image.label, decoded.view, decoded.modality, self._allowed_views)
        if not verdict.accepted:
            yield self._reject(image, image_id, verdict.stage, verdict.kind, verdict.reason)
            return
        for note in decoded.notes:
            beam.metrics.Metrics.counter("notes", note).inc()
        patient_key = pseudonyms.pseudonymous_patient_id(self._key, image.source, image.patient_id)
        split = splitting.assign_split(patient_key, self._fractions)
        self._prepared.inc()
        fields = example_codec.ExampleFields(label=image.label, image_id=image_id, source=image.source,
                                             view=image.view or decoded.view, patient_id=patient_key,
                                             sex=image.sex, age_band=image.age_band)
        row = (image.source, image.listing, image.line)
        copies = self._copies[image.label] if split == "train" else 1
        for copy_index, serialized in example_codec.serialize_with_copies(decoded.pixels, fields, copies,
                                                                          self._seed):
            (self._augmented if copy_index else self._originals).inc()
            yield EncodedExample(split, image.label, image_id, copy_index, serialized, row)
        yield beam.pvalue.TaggedOutput(self.SUMMARIES, ImageSummary(
            image_id=image_id, source=image.source, listing=image.listing, line=image.line, label=image.label,
            split=split, patient_key=patient_key,
            patient_match_key=pseudonyms.patient_match_key(self._key, image.patient_id),
            content_hash=hashlib.sha256(data).hexdigest(), notes=decoded.notes))

    def _reject(self, image: SourceImage, image_id: str, stage: str, kind: str,
                reason: str) -> beam.pvalue.TaggedOutput:
        return reject(Rejection(source=image.source, stage=stage, kind=kind, reason=reason, image_id=image_id,
                                listing=image.listing, line=image.line), self._rejected)


def listing_of(image: ImageSummary) -> tuple[str, Listing]:
    return image.content_hash, Listing(image.source, image.listing, image.line, image.label,
                                       image.patient_match_key)


def duplicate_verdicts(content_hash: str, listings: Iterable[Listing]) -> Iterator[tuple[tuple, tuple[str, str]]]:
    """(listing row, (kind, reason)) for each listing of one image that is not used.

    Listings that agree on label and patient keep the first (by source, file, line);
    the others are `duplicate`. Listings that disagree are all `duplicate_conflict`:
    which one is right cannot be known, and using any would put one image in the data
    with two labels or under two patients (and so possibly in two splits).
    """
    del content_hash
    listings = sorted(listings)
    if len(listings) < 2:
        return
    places = "; ".join(f"{listing.source} {listing_location(listing.listing, listing.line)}"
                       for listing in listings)
    labels = sorted({listing.label for listing in listings})
    patients = len({listing.patient_match_key for listing in listings})
    if len(labels) > 1 or patients > 1:
        conflicts = ([f"labels {labels}"] if len(labels) > 1 else []) + (
            [f"{patients} different patients"] if patients > 1 else [])
        reason = (f"the same image (identical bytes) is listed {len(listings)} times with "
                  f"{' and '.join(conflicts)}: {places}")
        for listing in listings:
            yield listing.row, ("duplicate_conflict", reason)
        return
    kept = listings[0]
    for listing in listings[1:]:
        yield listing.row, ("duplicate", f"the same image (identical bytes) as {kept.source} "
                                         f"{listing_location(kept.listing, kept.line)}, which is used")


class DropDuplicatesFn(beam.DoFn):
    """Passes the summaries of images without a duplicate verdict; rejects the others with theirs."""

    def __init__(self):
        self._unique = beam.metrics.Metrics.counter("dedupe", "images_unique")

    def process(self, image: ImageSummary, verdicts: dict) -> Iterator:
        verdict = verdicts.get(image.row)
        if verdict is None:
            self._unique.inc()
            yield image
            return
        kind, reason = verdict
        yield reject(Rejection(source=image.source, stage="dedupe", kind=kind, reason=reason, image_id=image.image_id,
                               listing=image.listing, line=image.line))


class DropDuplicateImages(beam.PTransform):
    """Uses each image (the same bytes, however listed) at most once, decided on the images' summaries.

    Outputs `unique` (the summaries of used images), `rejected`, and `verdicts`: (listing row,
    (kind, reason)) of every listing not used, so that its examples can be withheld where
    they wait for the shard counts. Only summaries are grouped and read here, never images.
    """

    def expand(self, summaries):
        verdicts = (summaries
                    | "ListingByContent" >> beam.Map(listing_of)
                    | "GroupByContent" >> beam.GroupByKey()
                    | "DuplicateVerdicts" >> beam.FlatMapTuple(duplicate_verdicts))
        kept = summaries | "DropDuplicates" >> beam.ParDo(
            DropDuplicatesFn(), verdicts=beam.pvalue.AsDict(verdicts)).with_outputs(REJECTED, main="unique")
        return {"unique": kept.unique, REJECTED: kept[REJECTED], "verdicts": verdicts}


class AddAugmentedCopiesFn(beam.DoFn):
    """Passes every example; adds a train original's `multiplier - 1` augmented copies, made from its record."""

    def __init__(self, seed: int):
        self._seed = seed
        self._augmented = beam.metrics.Metrics.counter("examples", "augmented_copies")

    def process(self, example: EncodedExample, multipliers: dict[str, int]) -> Iterator[EncodedExample]:
        yield example
        if example.split != "train":
            return
        for copy_index, serialized in example_codec.augmented_copies_of(
                example.serialized, multipliers[example.label], self._seed):
            self._augmented.inc()
            yield example._replace(augmentation=copy_index, serialized=serialized)


class ListSources(beam.PTransform):
    """Every configured source, flattened: outputs `images` and `rejected`."""

    def __init__(self, rsna_dir: str | None, covid_dir: str | None, csv_path: str | None,
                 rsna_not_normal: str, patient_key: splitting.PatientKey, allowed_views: frozenset[str],
                 image_folder: sources.ImageFolder | None = None):
        super().__init__()
        self._readers = []
        if rsna_dir:
            self._readers.append(("Rsna", rsna_dir, sources.ParseRsnaLabelsFn(rsna_not_normal, patient_key)))
        if covid_dir:
            self._readers.append(("Covid", covid_dir, sources.ParseCovidMetadataFn(patient_key, allowed_views)))
        if csv_path:
            self._readers.append(("Csv", csv_path, sources.ParseLabelCsvFn(patient_key, allowed_views)))
        if image_folder:
            self._readers.append(("ImageFolder", image_folder.path,
                                  sources.ParseImageFolderFn(image_folder, patient_key)))

    def expand(self, pipeline):
        listed = [pipeline | f"Read{name}" >> sources.ReadSource(location, parse_fn)
                  for name, location, parse_fn in self._readers]
        return {
            "images": [result.images for result in listed] | "FlattenImages" >> beam.Flatten(),
            REJECTED: [result[REJECTED] for result in listed] | "FlattenRejected" >> beam.Flatten(),
        }


def _count_per_key(pcoll, label: str, key_fn):
    return pcoll | f"{label}Keys" >> beam.Map(key_fn) | f"Count{label}" >> beam.combiners.Count.PerElement()


def patient_key_of(args: argparse.Namespace) -> splitting.PatientKey:
    return splitting.PatientKey(value=args.patient_key or "", path=args.patient_key_file or "")


def image_folder_of(args: argparse.Namespace) -> sources.ImageFolder | None:
    """The `--image_folder` and its flags; its source defaults to the folder's own name, sanitised."""
    if not args.image_folder:
        return None
    source = args.image_folder_source or sources.sanitized_source_name(
        posixpath.basename(args.image_folder.rstrip("/")))
    return sources.ImageFolder(args.image_folder, source, selection.parse_folder_classes(args.folder_classes or ""),
                               args.patient_id_regex or "")


def not_withheld(keyed: tuple, withheld: dict) -> bool:
    """True unless the (origin, ...) record's origin is one of `withheld`'s (a duplicate's listing row)."""
    return keyed[0] not in withheld


def example_count_key(example: EncodedExample) -> tuple[tuple, tuple[str, tuple[str, str]]]:
    """(origin, the manifest's (table, key) pair of one example): the origin decides whether it is written."""
    return example.origin, ("examples", (example.split, example.label))


def used_image_count_keys(image: ImageSummary) -> Iterator[tuple[str, tuple | str]]:
    """The manifest's (table, key) pairs of one used image: its original, its patient, its notes."""
    yield "originals", (image.split, image.label)
    yield "source_originals", (image.source, image.label)
    yield "patients", (image.split, image.label, image.patient_key)
    for note in image.notes:
        yield "notes", note


def build_pipeline(pipeline: beam.Pipeline, args: argparse.Namespace) -> None:
    """Adds the whole preprocess graph to `pipeline`.

    Only small records are grouped or read by more than one step: the decode step encodes
    each image's examples where it decodes it and emits a summary beside them; duplicates
    and every count of the manifest are decided on the summaries, and duplicates' examples
    are withheld where all examples wait for the shard counts anyway.
    """
    fractions = splitting.parse_split(args.split)
    configured_multipliers = augmentation.parse_multipliers(args.augment)
    patient_key = patient_key_of(args)
    allowed_views = selection.parse_allowed_views(args.allowed_views)
    listed = pipeline | "ListSources" >> ListSources(args.rsna_dir, args.covid_dir, args.csv, args.rsna_not_normal,
                                                     patient_key, allowed_views, image_folder_of(args))

    originals_only = {name: 1 for name in contract.CLASS_NAMES}
    encoded = (listed["images"]
               | "FanOut" >> beam.Reshuffle()
               | "ReadAndEncode" >> beam.ParDo(ReadAndEncodeFn(
                   args.image_size, patient_key, fractions, imaging.max_pixels_for(args.max_megapixels),
                   allowed_views, configured_multipliers or originals_only, args.seed)).with_outputs(
                       ReadAndEncodeFn.SUMMARIES, REJECTED, main="examples"))
    deduplicated = encoded[ReadAndEncodeFn.SUMMARIES] | "DropDuplicateImages" >> DropDuplicateImages()
    used = deduplicated["unique"]

    if configured_multipliers:
        multipliers = pipeline | "Multipliers" >> beam.Create([configured_multipliers])
        examples = encoded.examples
    else:
        train_originals = _count_per_key(used | "TrainOnly" >> beam.Filter(lambda image: image.split == "train"),
                                         "TrainOriginals", lambda image: image.label)
        multipliers = (pipeline
                       | "MultiplierSeed" >> beam.Create([None])
                       | "BalanceMultipliers" >> beam.Map(
                           lambda _, counts: augmentation.balanced_multipliers(counts),
                           counts=beam.pvalue.AsDict(train_originals)))
        examples = encoded.examples | "AddAugmentedCopies" >> beam.ParDo(
            AddAugmentedCopiesFn(args.seed), multipliers=beam.pvalue.AsSingleton(multipliers))

    staging_dir = FileSystems.join(args.output_dir, STAGING_FOLDER)
    verdicts = deduplicated["verdicts"]
    shards = examples | "WriteShards" >> WriteShardedTFRecords(
        staging_dir, int(args.target_shard_mb * 1024 * 1024), args.min_shards, withheld=verdicts)

    rejected = ((listed[REJECTED], encoded[REJECTED], deduplicated[REJECTED]) | "AllRejected" >> beam.Flatten())
    rejected_files = (rejected
                      | "RejectedJson" >> beam.Map(Rejection.to_json)
                      | "RejectedLines" >> beam.combiners.ToList()
                      | "WriteRejected" >> beam.ParDo(WriteRejectedFn(
                          FileSystems.join(args.output_dir, REJECTED_FILE))))

    counts = ((listed["images"] | "ListedKeys" >> beam.Map(lambda _: ("inputs", "listed")),
               listed[REJECTED] | "LabelRejectKeys" >> beam.Map(lambda _: ("inputs", "listed")),
               used | "UsedImageKeys" >> beam.FlatMap(used_image_count_keys),
               examples
               | "ExampleKeys" >> beam.Map(example_count_key)
               | "ExamplesKept" >> beam.Filter(not_withheld, withheld=beam.pvalue.AsDict(verdicts))
               | "ExampleTableKeys" >> beam.Values(),
               rejected | "RejectedKeys" >> beam.Map(lambda item: ("rejected", item.counter_key)))
              | "ManifestKeys" >> beam.Flatten()
              | "CountManifestTables" >> beam.CombineGlobally(CountManifestTablesFn()))
    _ = (pipeline
         | "ManifestSeed" >> beam.Create([None])
         | "WriteManifest" >> beam.ParDo(
             WriteManifestFn(args.output_dir, staging_dir, _recorded_options(args)),
             multipliers=beam.pvalue.AsSingleton(multipliers), counts=beam.pvalue.AsSingleton(counts),
             shards=beam.pvalue.AsList(shards), rejected_files=beam.pvalue.AsList(rejected_files)))


def _recorded_options(args: argparse.Namespace) -> dict:
    """The job's own flags for the manifest; the patient key is a secret: only its fingerprint goes in."""
    recorded = {name: value for name, value in vars(args).items() if name not in ("patient_key", "overwrite")}
    recorded["patient_key_fingerprint"] = pseudonyms.key_fingerprint(patient_key_of(args).load())
    return recorded


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipelines.preprocess", description=__doc__.split("\n")[0],
        epilog="All other flags are Beam pipeline options (--runner, --project, --region, ...).")
    parser.add_argument("--rsna_dir", help="RSNA Pneumonia Detection Challenge folder (local or gs://).")
    parser.add_argument("--covid_dir", help="ieee8023 covid-chestxray-dataset folder (metadata.csv, images/).")
    parser.add_argument("--csv", help="CSV of image_uri,label,patient_id[,view,source,sex,age] for your own data; "
                                      "source names the collection or site of a row (default csv).")
    parser.add_argument("--image_folder",
                        help="Folder (local or gs://) with one sub-folder of images per class, e.g. "
                             "No_findings/, Pneumonia/, Covid-19/ or NORMAL/, PNEUMONIA/.")
    parser.add_argument("--folder_classes",
                        help="FOLDER=CLASS pairs for --image_folder's sub-folders, e.g. "
                             "'No_findings=normal,Covid-19=covid19', over defaults for common names (normal, "
                             "no findings, healthy; pneumonia, bacteria, viral; covid, covid-19), any case. Files "
                             "in other sub-folders are rejected as unknown_folder.")
    parser.add_argument("--patient_id_regex",
                        help="Regular expression with one group that finds the patient id in an --image_folder "
                             "file name, e.g. 'person(\\d+)_'. Without it every image is its own patient and the "
                             "split is by image, not patient (the manifest warns).")
    parser.add_argument("--image_folder_source",
                        help=f"Source name of --image_folder ({sources.SOURCE_NAME_RULE}); default: the folder's "
                             "own name, sanitised.")
    parser.add_argument("--output_dir", required=True, help="Where shards, rejected-*.jsonl and manifest.json go.")
    parser.add_argument("--image_size", type=int, default=contract.DEFAULT_IMAGE_SIZE,
                        help="Side of the square output images.")
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions of patients.")
    parser.add_argument("--augment", default=augmentation.DEFAULT_MULTIPLIERS,
                        help="Examples per train image, original included: class=N pairs, or 'auto'.")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="Seed of the augmentation randomness.")
    parser.add_argument("--rsna_not_normal", choices=selection.NOT_NORMAL_POLICIES, default="exclude",
                        help="What RSNA 'No Lung Opacity / Not Normal' patients become.")
    parser.add_argument("--patient_key",
                        help="Secret key (at least 16 characters) of the patient-id hash that makes the "
                             "pseudonyms and decides the split; keep it stable so patients keep their split. "
                             "Required unless --patient_key_file is given; there is no default.")
    parser.add_argument("--patient_key_file",
                        help="File (local or gs://) holding the patient key, read where it is used, so the key "
                             "stays out of the job graph and the template parameters. Preferred to --patient_key.")
    parser.add_argument("--max_megapixels", type=float, default=imaging.DEFAULT_MAX_MEGAPIXELS,
                        help="Largest image accepted, in megapixels per frame (DICOM pixel data may take "
                             f"{imaging.PIXEL_BYTES_PER_ALLOWED_PIXEL} bytes per allowed pixel); checked from the "
                             "header before decoding. Larger ones are rejected as image_too_large.")
    parser.add_argument("--allowed_views", default=selection.DEFAULT_ALLOWED_VIEWS,
                        help="Comma-separated views used for training, from the listing or the DICOM "
                             "ViewPosition; others (laterals L, LL, RL, ...) are rejected as view_not_allowed. "
                             "Images whose CSV and header state no view are kept.")
    parser.add_argument("--target_shard_mb", type=float, default=DEFAULT_TARGET_SHARD_MB,
                        help="Approximate size of one TFRecord shard.")
    parser.add_argument("--min_shards", type=int, default=DEFAULT_MIN_TRAIN_SHARDS,
                        help="Fewest train shards, however small the data, so that each machine of a "
                             "multi-worker training job reads its own files (some may be empty).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Delete an earlier run's shards, rejected records, manifest and temporary files first.")
    return parser


def _existing_outputs(output_dir: str) -> list[str]:
    patterns = [FileSystems.join(output_dir, pattern) for pattern in OUTPUT_PATTERNS]
    return [metadata.path for result in FileSystems.match(patterns) for metadata in result.metadata_list]


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fails fast, before any work, on bad flags, missing inputs or a used output dir."""
    if not (args.rsna_dir or args.covid_dir or args.csv or args.image_folder):
        parser.error("give at least one source: --rsna_dir, --covid_dir, --csv or --image_folder")
    if problem := contract.image_size_problem(args.image_size):
        parser.error(f"--image_size: {problem}")
    if args.target_shard_mb <= 0:
        parser.error("--target_shard_mb must be positive")
    if not args.max_megapixels > 0:
        parser.error("--max_megapixels must be positive")
    if args.min_shards < 1:
        parser.error(f"--min_shards must be at least 1, got {args.min_shards}")
    try:
        splitting.parse_split(args.split)
        augmentation.parse_multipliers(args.augment)
        selection.parse_allowed_views(args.allowed_views)
        selection.parse_folder_classes(args.folder_classes or "")
    except ValueError as error:
        parser.error(str(error))
    if args.patient_id_regex and (problem := sources.patient_id_regex_problem(args.patient_id_regex)):
        parser.error(problem)
    if args.image_folder_source and (problem := sources.source_name_problem(args.image_folder_source)):
        parser.error(f"--image_folder_source: {problem}")
    if problem := splitting.patient_key_problem(patient_key_of(args)):
        parser.error(problem)
    problems = sources.source_problems(args.rsna_dir, args.covid_dir, args.csv, args.image_folder)
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
