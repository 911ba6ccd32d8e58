"""Elements that flow between the preprocess job's stages."""

import dataclasses
import json

import numpy as np


@dataclasses.dataclass(frozen=True)
class SourceImage:
    """One labelled image as a source lists it, before its file is read.

    `image_key` names the image within its source (a path relative to the source's
    root, so ids survive moving the data from disk to a bucket). `patient_id` is the
    raw id from the source: both are only ever hashed, never written.
    """

    source: str
    image_uri: str
    image_key: str
    patient_id: str
    label: str
    view: str = ""


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """A decoded, resized image with its split decided and its ids pseudonymised."""

    image_id: str
    patient_key: str
    split: str
    label: str
    source: str
    view: str
    pixels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Rejection:
    """An input that did not become a record, and why.

    `stage` is where it left the pipeline (`label`, `select`, `read`, `decode`,
    `encode`); `kind` is a stable code counted in the manifest; `reason` is the detail.
    Policy exclusions (`select`) are listed too, so that inputs = used + rejected.
    """

    uri: str
    source: str
    stage: str
    kind: str
    reason: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @property
    def counter_key(self) -> str:
        return f"{self.stage}/{self.kind}"
