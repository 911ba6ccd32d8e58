"""The dead-letter output of every Beam job: one way to count and emit a rejected input.

The `Rejection` record itself lives in `cxr_core.rejection`, below Beam; this module
adds what a DoFn does with one.
"""

from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics.metricbase import Counter

from beam_pipelines import storage
from cxr_core.rejection import Rejection

# The tag of the rejected output of every DoFn and composite that rejects.
REJECTED = "rejected"
# The one file the preprocess job writes its rejected records to (`WriteRejectedFn`).
REJECTED_FILE = "rejected-00000-of-00001.jsonl"


def reject(rejection: Rejection, total: Counter | None = None) -> beam.pvalue.TaggedOutput:
    """`rejection` for the REJECTED output, counted as the Beam counter `stage/kind` and in `total`.

    `total` is the DoFn's own count of what it rejected, if it keeps one.
    """
    if total is not None:
        total.inc()
    beam.metrics.Metrics.counter(rejection.stage, rejection.kind).inc()
    return beam.pvalue.TaggedOutput(REJECTED, rejection)


class WriteRejectedFn(beam.DoFn):
    """Writes all rejected records, given as one list of JSON lines, to `path` in sorted order; yields its name.

    One file written by one DoFn (temporary name, then rename) rather than Beam's
    WriteToText, whose initialisation, grouping and finalisation are five stages of their
    own on the local runner; sorted, so that a rerun writes the same bytes.
    """

    def __init__(self, path: str):
        self._path = path
        self._written = beam.metrics.Metrics.counter("write", "rejected_records_written")

    def process(self, lines: list[str]) -> Iterator[str]:
        with storage.atomic_output(self._path) as local_path, open(local_path, "wb") as handle:
            for line in sorted(lines):
                handle.write(line.encode("utf-8") + b"\n")
        self._written.inc(len(lines))
        yield self._path
