"""Why an input did not become a record: the one rejection record every job writes.

A rejection names the input by the label-file row that listed it, or by the operator's
own uri in batch prediction, and never repeats a path or a patient id in its reason.
"""

import dataclasses
import json


def listing_location(listing: str, line: int) -> str:
    """Where a row is, e.g. `line 12 of metadata.csv`: names an input without identifying anyone."""
    return f"line {line} of {listing}"


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


class UnusableInput(Exception):
    """An input that cannot become an image: where it failed, a stable code, and the detail."""

    def __init__(self, stage: str, kind: str, reason: str):
        super().__init__(f"{stage}/{kind}: {reason}")
        self.stage = stage
        self.kind = kind
        self.reason = reason
