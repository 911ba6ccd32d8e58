"""The dead-letter output of every Beam job: one way to count and emit a rejected input.

The `Rejection` record itself lives in `cxr_core.rejection`, below Beam; this module
adds what a DoFn does with one.
"""

import apache_beam as beam
from apache_beam.metrics.metricbase import Counter

from cxr_core.rejection import Rejection

# The tag of the rejected output of every DoFn and composite that rejects.
REJECTED = "rejected"


def reject(rejection: Rejection, total: Counter | None = None) -> beam.pvalue.TaggedOutput:
    """`rejection` for the REJECTED output, counted as the Beam counter `stage/kind` and in `total`.

    `total` is the DoFn's own count of what it rejected, if it keeps one.
    """
    if total is not None:
        total.inc()
    beam.metrics.Metrics.counter(rejection.stage, rejection.kind).inc()
    return beam.pvalue.TaggedOutput(REJECTED, rejection)
