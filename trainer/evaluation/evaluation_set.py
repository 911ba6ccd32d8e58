"""The images an evaluation scores, with everything the report breaks its figures down by.

An `EvaluationSet` holds the uint8 pixels of a set's original images (as the model sees
them before `serving.features.model_input`) with their classes, sources, pseudonymous
patients and subgroup attributes (view, sex, age band). The pixels are kept because the
audit's Grad-CAM, the failure gallery and the pixel baseline all need them; at 128² a
test split of 3,000 images is 50 MB.

Two ways in:
- `read_records`: the preprocess job's TFRecords (only originals, `image/augmentation == 0`).
  Records written before `patient/sex` and `patient/age_band` existed read as `unknown`.
- `read_csv`: raw images listed in a CSV with the preprocess job's `--csv` columns
  (`image_uri,label,patient_id[,view,source,sex,age]`, uris relative to the CSV), read and
  decoded by `cxr_core.imaging.preprocess_image` exactly as serving decodes a study. The
  job's selection rules decide which rows are used (`cxr_core.selection`: class names,
  patient ids, frontal views, a DICOM header's modality and view); the rest are counted
  by kind, like the job's rejections. A patient is its `patient_id` within its `source`
  (the pair the job's keyed hash takes); the raw ids stay in memory and are never written.
"""

import collections
import csv
import dataclasses
import io
import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from cxr_core import contract, demographics, imaging, selection
from serving import features

BATCH_SIZE = 256
UNKNOWN = demographics.UNKNOWN
CSV_REQUIRED_COLUMNS = ("image_uri", "label", "patient_id")
CSV_SOURCE = "csv"  # The source of a CSV row without a `source` column, as the preprocess job names it.
# Record keys read besides the image, and what an older record without them reads as.
METADATA_DEFAULTS = {contract.SOURCE: None, contract.PATIENT_ID: None, contract.VIEW: "",
                     contract.PATIENT_SEX: UNKNOWN, contract.PATIENT_AGE_BAND: UNKNOWN}


@dataclasses.dataclass(frozen=True)
class EvaluationSet:
    """One set's original images [N, H, W] uint8 and, per image, class id, source, patient and attributes."""

    name: str
    pixels: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    patients: np.ndarray
    # "view", "sex", "age band" (`trainer.evaluation.subgroups.ATTRIBUTES`) → [N] values.
    attributes: dict[str, np.ndarray]
    provenance: str

    def __len__(self) -> int:
        return len(self.labels)


def read_records(name: str, shards: list[str], image_size: int, provenance: str) -> EvaluationSet:
    """The originals of `shards` in file order."""
    columns = collections.defaultdict(list)
    for batch in _original_batches(shards, image_size):
        for key, values in batch.items():
            columns[key].append(values)
    joined = {key: np.concatenate(values) for key, values in columns.items()}
    if not joined:
        raise ValueError(f"{name}: no original (image/augmentation == 0) record in {len(shards)} shard(s)")
    return EvaluationSet(
        name=name, pixels=joined["pixels"], labels=joined[contract.LABEL], sources=joined[contract.SOURCE],
        patients=joined[contract.PATIENT_ID],
        attributes={"view": joined[contract.VIEW], "sex": joined[contract.PATIENT_SEX],
                    "age band": joined[contract.PATIENT_AGE_BAND]},
        provenance=provenance)


def record_pixel_batches(shards: list[str], image_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(pixels [B, H, W] uint8, class ids [B]) of the originals of `shards`, batch by batch."""
    for batch in _original_batches(shards, image_size):
        yield batch["pixels"], batch[contract.LABEL]


def read_csv(name: str, csv_path: str, image_size: int,
             allowed_views: frozenset[str] = selection.parse_allowed_views(selection.DEFAULT_ALLOWED_VIEWS)
             ) -> tuple[EvaluationSet, dict[str, int]]:
    """The images a CSV lists, preprocessed as serving does; and the rows left out, counted by kind.

    Raises:
      ValueError: the CSV lacks a required column or lists no usable image.
    """
    with tf.io.gfile.GFile(csv_path) as handle:
        rows = list(csv.DictReader(io.StringIO(handle.read())))
    header = set(rows[0]) if rows else set()
    if missing := [column for column in CSV_REQUIRED_COLUMNS if column not in header]:
        raise ValueError(f"{csv_path} lacks columns {missing}; it needs {', '.join(CSV_REQUIRED_COLUMNS)}")
    kept = collections.defaultdict(list)
    left_out: collections.Counter = collections.Counter()
    for row in rows:
        values = {column: (value or "").strip() for column, value in row.items() if column}
        verdict = selection.csv_verdict(values["image_uri"], values["label"], values["patient_id"],
                                        values.get("view", ""), allowed_views)
        if not verdict.accepted:
            left_out[verdict.kind] += 1
            continue
        uri = values["image_uri"]
        if "://" not in uri and not os.path.isabs(uri):
            uri = os.path.join(os.path.dirname(csv_path), uri)
        try:
            with tf.io.gfile.GFile(uri, "rb") as image_file:
                decoded = imaging.preprocess_image(image_file.read(), image_size, uri)
        except tf.errors.NotFoundError:
            left_out["not_found"] += 1
            continue
        except imaging.ImageDecodeError as error:
            left_out[error.kind] += 1
            continue
        verdict = selection.header_verdict(verdict.label, decoded.view, decoded.modality, allowed_views)
        if not verdict.accepted:
            left_out[verdict.kind] += 1
            continue
        source = values.get("source") or CSV_SOURCE
        kept["pixels"].append(decoded.pixels)
        kept["labels"].append(contract.CLASS_IDS[verdict.label])
        kept["sources"].append(source)
        kept["patients"].append(f"{source}\x1f{values['patient_id']}")
        kept["view"].append(selection.normalize_view(values.get("view") or decoded.view))
        kept["sex"].append(demographics.sex_category(values.get("sex", "")))
        kept["age band"].append(demographics.age_band(values.get("age", "")))
    if not kept:
        raise ValueError(f"{csv_path} lists no usable image (left out: {dict(left_out) or 'no rows'})")
    return EvaluationSet(
        name=name, pixels=np.stack(kept["pixels"]), labels=np.array(kept["labels"]), sources=np.array(kept["sources"]),
        patients=np.array(kept["patients"]),
        attributes={attribute: np.array(kept[attribute]) for attribute in ("view", "sex", "age band")},
        provenance=f"{len(kept['labels'])} images listed in {csv_path}, preprocessed as serving does"), dict(left_out)


def _original_batches(shards: list[str], image_size: int) -> Iterator[dict[str, np.ndarray]]:
    spec = {contract.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
            contract.LABEL: tf.io.FixedLenFeature([], tf.int64),
            contract.AUGMENTATION: tf.io.FixedLenFeature([], tf.int64),
            **{key: tf.io.FixedLenFeature([], tf.string, default_value=default)
               for key, default in METADATA_DEFAULTS.items()}}

    def decode(record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {contract.LABEL: record[contract.LABEL], **{key: record[key] for key in METADATA_DEFAULTS},
                "pixels": features.decode_pixels(record[contract.IMAGE_ENCODED], image_size)[..., 0]}

    records = tf.data.TFRecordDataset(shards, compression_type=contract.TFRECORD_COMPRESSION)
    originals = records.map(lambda serialized: tf.io.parse_single_example(serialized, spec)).filter(
        lambda record: tf.equal(record[contract.AUGMENTATION], 0))
    for batch in originals.map(decode).batch(BATCH_SIZE).prefetch(1):
        yield {"pixels": batch["pixels"].numpy(), contract.LABEL: batch[contract.LABEL].numpy(),
               **{key: np.char.decode(batch[key].numpy().astype(bytes), "utf-8") for key in METADATA_DEFAULTS}}
