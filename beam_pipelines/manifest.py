"""The preprocess job's manifest: what went in, what came out, and with what.

It is written last, once every shard and the rejected records exist, and atomically
(temporary name, then rename), so its presence means the output directory is complete.
Shards are written to a staging folder and moved into the output directory only once
the job's accounting holds (every listed input used or rejected, every encoded example
in a shard), so a job that fails leaves no shard where a trainer would read it.
"""

import collections
import datetime
import importlib.metadata
import json
import logging
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipelines import storage
from cxr_core import contract
from cxr_core.confounding import find_confounding

# The tables the job counts for its manifest, all from (table, key) pairs in one combine
# (`CountManifestTablesFn`): `inputs` has the one key `listed`; `patients` keys are
# (split, class, patient key), each counted once for its (split, class).
COUNTED_TABLES = ("inputs", "patients", "originals", "source_originals", "examples", "rejected", "notes")
REPORTED_PACKAGES = ("cxr-classifier", "apache-beam", "tensorflow", "tfx-bsl", "pydicom",
                     "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pillow", "numpy")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def schema_description() -> dict:
    return {
        "version": contract.SCHEMA_VERSION,
        "classes": list(contract.CLASS_NAMES),
        "bytes_features": list(contract.BYTES_FEATURES),
        "int64_features": list(contract.INT64_FEATURES),
        "image_format": contract.IMAGE_FORMAT_PNG,
        "compression": contract.TFRECORD_COMPRESSION,
    }


def split_class_table(counts: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    """{(split, class): n} → {split: {class: n}} with every split and class present."""
    return {split: {name: counts.get((split, name), 0) for name in contract.CLASS_NAMES}
            for split in contract.SPLITS}


def source_class_table(counts: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    """{(source, class): n} → {source: {class: n}} with every class present, for the sources in `counts`."""
    return {source: {name: counts.get((source, name), 0) for name in contract.CLASS_NAMES}
            for source in sorted({source for source, _ in counts})}


def coverage_warnings(patients: dict[str, dict[str, int]]) -> list[str]:
    """A class with no patient in val or test cannot be evaluated: say so loudly."""
    return [f"class {name!r} has no patient in the {split} split; its metrics there are undefined"
            for split in ("val", "test") for name in contract.CLASS_NAMES if patients[split][name] == 0]


def split_by_image_warnings(options: dict) -> list[str]:
    """An image folder without a patient pattern is split by image: one patient's images can be in two splits."""
    if options.get("image_folder") and not options.get("patient_id_regex"):
        return ["--image_folder has no --patient_id_regex, so its images are split by image, not by patient: "
                "images of one patient can be in train and test; pass --patient_id_regex to split by patient"]
    return []


def accounting_errors(inputs_listed: int, used: int, rejected: int, examples: dict[str, dict[str, int]],
                      shards: list[dict]) -> list[str]:
    """What does not add up: inputs neither used nor rejected, or examples missing from the shards."""
    errors = []
    if used + rejected != inputs_listed:
        errors.append(f"{inputs_listed} inputs listed but {used} used + {rejected} rejected")
    for split in contract.SPLITS:
        encoded = sum(examples[split].values())
        written = sum(shard["records"] for shard in shards if shard["split"] == split)
        if written != encoded:
            errors.append(f"{encoded} {split} examples encoded but {written} written to its shards")
    return errors


def build_manifest(*, options: dict, multipliers: dict[str, int], inputs_listed: int,
                   patients: dict, originals: dict, source_originals: dict, examples: dict,
                   rejected: dict[str, int], shards: list[dict], notes: dict[str, int]) -> dict:
    """The manifest; `notes` counts used images by what was tolerated in them (e.g. an invalid VOI window).

    `source_originals` counts originals by (source, class) over all splits.

    Raises:
      RuntimeError: the counts do not add up (`accounting_errors`).
    """
    patient_table = split_class_table(patients)
    originals_table = split_class_table(originals)
    by_source = source_class_table(source_originals)
    examples_table = split_class_table(examples)
    used = sum(originals.values())
    rejected_total = sum(rejected.values())
    if errors := accounting_errors(inputs_listed, used, rejected_total, examples_table, shards):
        raise RuntimeError("accounting error: " + "; ".join(errors))
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "schema": schema_description(),
        "options": options,
        "augmentation_multipliers": multipliers,
        "inputs": {"listed": inputs_listed, "used": used, "rejected": rejected_total},
        "patients": patient_table,
        "originals": originals_table,
        "originals_by_source": by_source,
        "examples": examples_table,
        "rejected": dict(sorted(rejected.items())),
        "notes": dict(sorted(notes.items())),
        "shards": sorted(shards, key=lambda shard: shard["file"]),
        "packages": package_versions(),
        "warnings": (find_confounding(by_source).warnings() + split_by_image_warnings(options)
                     + coverage_warnings(patient_table)),
    }


def counted_tables(counts: collections.Counter) -> dict[str, dict]:
    """{(table, key): n} → {table: {key: n}} for each of COUNTED_TABLES; patients counted per (split, class)."""
    tables = {table: {} for table in COUNTED_TABLES}
    for (table, key), count in counts.items():
        if table == "patients":
            tables[table][key[:2]] = tables[table].get(key[:2], 0) + 1
        else:
            tables[table][key] = count
    return tables


class CountManifestTablesFn(beam.CombineFn):
    """Every count of the manifest in one pass: (table, key) pairs → `counted_tables`.

    One combine instead of one per table: each is a stage of its own on the local runner,
    and the job's start-up grows with its stages.
    """

    def create_accumulator(self) -> collections.Counter:
        return collections.Counter()

    def add_input(self, counts: collections.Counter, table_key: tuple[str, object]) -> collections.Counter:
        counts[table_key] += 1
        return counts

    def merge_accumulators(self, accumulators) -> collections.Counter:
        merged = collections.Counter()
        for counts in accumulators:
            merged.update(counts)
        return merged

    def extract_output(self, counts: collections.Counter) -> dict[str, dict]:
        return counted_tables(counts)


class WriteManifestFn(beam.DoFn):
    """Assembles the manifest from the job's side inputs, moves the shards into place, writes the JSON.

    `counts` is `CountManifestTablesFn`'s output.

    Shards come from `staging_dir`; if the accounting fails they stay there and the
    job fails naming it.
    """

    def __init__(self, output_dir: str, staging_dir: str, options: dict):
        self._output_dir = output_dir
        self._staging_dir = staging_dir
        self._options = options

    def process(self, _, multipliers, counts, shards, rejected_files) -> Iterator[dict]:
        del rejected_files  # a side input only so that the manifest is written after them
        try:
            manifest = build_manifest(
                options=self._options, multipliers=multipliers, inputs_listed=counts["inputs"].get("listed", 0),
                patients=counts["patients"], originals=counts["originals"],
                source_originals=counts["source_originals"], examples=counts["examples"],
                rejected=counts["rejected"], shards=list(shards), notes=counts["notes"])
        except RuntimeError as error:
            raise RuntimeError(f"{error}; the shards stay unpublished in {self._staging_dir}") from None
        storage.move_files(self._staging_dir, self._output_dir, [shard["file"] for shard in manifest["shards"]])
        for warning in manifest["warnings"]:
            logging.warning("DATASET WARNING: %s", warning)
        storage.write_bytes(FileSystems.join(self._output_dir, contract.MANIFEST_FILE),
                            json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
        yield manifest


def read_manifest(output_dir: str) -> dict:
    with FileSystems.open(FileSystems.join(output_dir, contract.MANIFEST_FILE)) as handle:
        return json.loads(handle.read().decode("utf-8"))


def format_source_table(by_source: dict[str, dict[str, int]]) -> list[str]:
    """Originals per source × class (all splits), one line per source."""
    width = max([len("source"), *map(len, by_source)]) + 2
    header = f"{'source':<{width}}" + "".join(f"{name:>{len(name) + 2}}" for name in contract.CLASS_NAMES)
    lines = [header, "-" * len(header)]
    for source, classes in by_source.items():
        lines.append(f"{source:<{width}}" + "".join(f"{classes[name]:>{len(name) + 2}}"
                                                     for name in contract.CLASS_NAMES))
    return lines


def format_summary(manifest: dict) -> str:
    """The printed summary: warnings first, then the split × class and source × class tables, rejections."""
    lines = [f"WARNING: {warning}" for warning in manifest["warnings"]]
    width = max(len(name) for name in contract.CLASS_NAMES) + 2
    header = f"{'split':<7}{'class':<{width}}{'patients':>10}{'originals':>11}{'examples':>10}"
    lines.extend([header, "-" * len(header)])
    for split in contract.SPLITS:
        for name in contract.CLASS_NAMES:
            lines.append(f"{split:<7}{name:<{width}}{manifest['patients'][split][name]:>10}"
                         f"{manifest['originals'][split][name]:>11}{manifest['examples'][split][name]:>10}")
    lines.append("originals per source (all splits):")
    lines.extend(format_source_table(manifest["originals_by_source"]))
    inputs = manifest["inputs"]
    lines.append(f"inputs listed {inputs['listed']}: used {inputs['used']}, rejected {inputs['rejected']}")
    lines.extend(f"  rejected {key}: {count}" for key, count in manifest["rejected"].items())
    lines.extend(f"  noted {key}: {count}" for key, count in manifest["notes"].items())
    lines.append(f"multipliers: {manifest['augmentation_multipliers']}")
    lines.append(f"shards: {len(manifest['shards'])}")
    return "\n".join(lines)
