"""The preprocess job's manifest: what went in, what came out, and with what.

It is written last, once every shard and the rejected records exist, and atomically
(temporary name, then rename), so its presence means the output directory is complete.
Shards are written to a staging folder and moved into the output directory only once
the job's accounting holds (every listed input used or rejected, every encoded example
in a shard), so a job that fails leaves no shard where a trainer would read it.
"""

import datetime
import importlib.metadata
import json
import logging
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipelines import storage
from cxr_core import contract

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


def coverage_warnings(patients: dict[str, dict[str, int]]) -> list[str]:
    """A class with no patient in val or test cannot be evaluated: say so loudly."""
    return [f"class {name!r} has no patient in the {split} split; its metrics there are undefined"
            for split in ("val", "test") for name in contract.CLASS_NAMES if patients[split][name] == 0]


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
                   patients: dict, originals: dict, examples: dict, rejected: dict[str, int],
                   shards: list[dict], notes: dict[str, int]) -> dict:
    """The manifest; `notes` counts used images by what was tolerated in them (e.g. an invalid VOI window).

    Raises:
      RuntimeError: the counts do not add up (`accounting_errors`).
    """
    patient_table = split_class_table(patients)
    originals_table = split_class_table(originals)
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
        "examples": examples_table,
        "rejected": dict(sorted(rejected.items())),
        "notes": dict(sorted(notes.items())),
        "shards": sorted(shards, key=lambda shard: shard["file"]),
        "packages": package_versions(),
        "warnings": coverage_warnings(patient_table),
    }


class WriteManifestFn(beam.DoFn):
    """Assembles the manifest from the job's side inputs, moves the shards into place, writes the JSON.

    Shards come from `staging_dir`; if the accounting fails they stay there and the
    job fails naming it.
    """

    def __init__(self, output_dir: str, staging_dir: str, options: dict):
        self._output_dir = output_dir
        self._staging_dir = staging_dir
        self._options = options

    def process(self, _, multipliers, inputs_listed, patients, originals, examples, rejected,
                shards, rejected_files, notes) -> Iterator[dict]:
        del rejected_files  # a side input only so that the manifest is written after them
        try:
            manifest = build_manifest(
                options=self._options, multipliers=multipliers, inputs_listed=inputs_listed,
                patients=dict(patients), originals=dict(originals), examples=dict(examples),
                rejected=dict(rejected), shards=list(shards), notes=dict(notes))
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


def format_summary(manifest: dict) -> str:
    """Patients / originals / examples per split × class, then rejections and warnings."""
    width = max(len(name) for name in contract.CLASS_NAMES) + 2
    header = f"{'split':<7}{'class':<{width}}{'patients':>10}{'originals':>11}{'examples':>10}"
    lines = [header, "-" * len(header)]
    for split in contract.SPLITS:
        for name in contract.CLASS_NAMES:
            lines.append(f"{split:<7}{name:<{width}}{manifest['patients'][split][name]:>10}"
                         f"{manifest['originals'][split][name]:>11}{manifest['examples'][split][name]:>10}")
    inputs = manifest["inputs"]
    lines.append(f"inputs listed {inputs['listed']}: used {inputs['used']}, rejected {inputs['rejected']}")
    lines.extend(f"  rejected {key}: {count}" for key, count in manifest["rejected"].items())
    lines.extend(f"  noted {key}: {count}" for key, count in manifest["notes"].items())
    lines.append(f"multipliers: {manifest['augmentation_multipliers']}")
    lines.append(f"shards: {len(manifest['shards'])}")
    lines.extend(f"WARNING: {warning}" for warning in manifest["warnings"])
    return "\n".join(lines)
