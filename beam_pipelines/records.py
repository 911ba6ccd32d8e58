"""Elements that flow between the preprocess job's stages."""

import dataclasses
import json
import typing

import numpy as np


def listing_location(listing: str, line: int) -> str:
    """Where a row is, e.g. `line 12 of metadata.csv`: names an input without identifying anyone."""
    return f"line {line} of {listing}"


@dataclasses.dataclass(frozen=True)
class SourceImage:
    """One labelled image as a source lists it, before its file is read.

    `image_key` names the image within its source (a path relative to the source's
    root, so ids survive moving the data from disk to a bucket). `patient_id` is the
    raw id from the source and `image_uri` may contain it: all three are only ever
    hashed, never written or logged. `listing` and `line` say which row of which
    label file listed the image (for RSNA, the patient's first row); rejections and
    errors name the image by them.
    """

    source: str
    image_uri: str
    image_key: str
    patient_id: str
    label: str
    view: str = ""
    listing: str = ""
    line: int = 0

    @property
    def location(self) -> str:
        return listing_location(self.listing, self.line)


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """A decoded, resized image with its split decided and its ids pseudonymised.

    `content_hash` (SHA-256 of the file's bytes) and `patient_match_key` (a keyed hash
    of the raw patient id that, unlike `patient_key`, ignores the source) only serve to
    find and compare listings of the same image; neither is written to a record.
    """

    image_id: str
    patient_key: str
    split: str
    label: str
    source: str
    view: str
    pixels: np.ndarray
    content_hash: str = ""
    patient_match_key: str = ""
    listing: str = ""
    line: int = 0
    notes: tuple[str, ...] = ()

    @property
    def location(self) -> str:
        return listing_location(self.listing, self.line)


@dataclasses.dataclass(frozen=True)
class Rejection:
    """An input that did not become a record, and why.

    `stage` is where it left the pipeline (`label`, `select`, `read`, `decode`,
    `dedupe`); `kind` is a stable code counted in the manifest; `reason` is the
    detail, which never repeats a path or a patient id. Policy exclusions (`select`)
    are listed too, so that inputs = used + rejected.

    The preprocess job names the input by `listing` and `line` (the label-file row)
    and `image_id` (the image's keyed hash, as in the records). Batch prediction,
    whose output is keyed by the operator's own file uris, sets `uri` instead.
    """

    source: str
    stage: str
    kind: str
    reason: str
    image_id: str = ""
    listing: str = ""
    line: int = 0
    uri: str = ""

    def to_json(self) -> str:
        """One JSON line; optional fields left empty are left out."""
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                  if getattr(self, field.name) or field.name in ("source", "stage", "kind", "reason")}
        return json.dumps(fields, sort_keys=True)

    @property
    def counter_key(self) -> str:
        return f"{self.stage}/{self.kind}"


class Listing(typing.NamedTuple):
    """What duplicate detection compares of one listing of an image; sorts by where it is listed.

    Defined here, not in the job's module, so that workers can unpickle it by name when
    the job runs as `python -m beam_pipelines.preprocess` (its module is then `__main__`).
    """

    source: str
    listing: str
    line: int
    label: str
    patient_match_key: str

    @property
    def row(self) -> tuple[str, str, int]:
        return (self.source, self.listing, self.line)
