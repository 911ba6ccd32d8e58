"""Elements that flow between the preprocess job's stages."""

import dataclasses
import typing

from cxr_core.demographics import UNKNOWN
from cxr_core.rejection import listing_location


@dataclasses.dataclass(frozen=True)
class SourceImage:
    """One labelled image as a source lists it, before its file is read.

    `image_key` names the image within its source (a path relative to the source's
    root, so ids survive moving the data from disk to a bucket). `patient_id` is the
    raw id from the source and `image_uri` may contain it: all three are only ever
    hashed, never written or logged. `listing` and `line` say which row of which
    label file listed the image (for RSNA, the patient's first row); rejections and
    errors name the image by them. `sex` and `age_band` are coarse categories
    (`demographics`), never the listed values.
    """

    source: str
    image_uri: str
    image_key: str
    patient_id: str
    label: str
    view: str = ""
    listing: str = ""
    line: int = 0
    sex: str = UNKNOWN
    age_band: str = UNKNOWN

    @property
    def location(self) -> str:
        return listing_location(self.listing, self.line)


class ImageSummary(typing.NamedTuple):
    """What duplicate detection and the manifest need of one decoded, accepted image: no pixels, no bytes.

    The job's decode step emits one next to the image's encoded examples, so that only
    these small records are grouped, counted and re-read. `content_hash` (SHA-256 of the
    file's bytes) and `patient_match_key` (a keyed hash of the raw patient id that, unlike
    `patient_key`, ignores the source) only serve to find and compare listings of the
    same image; neither is written to a record.
    """

    image_id: str
    source: str
    listing: str
    line: int
    label: str
    split: str
    patient_key: str
    patient_match_key: str
    content_hash: str
    notes: tuple[str, ...] = ()

    @property
    def row(self) -> tuple[str, str, int]:
        """The listing row the image came from; its examples carry it as their `origin`."""
        return (self.source, self.listing, self.line)


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
