"""What every Beam job shares: the runner choice, Dataflow packaging, and a log a person can read."""

import logging
import os

from apache_beam.options.pipeline_options import (
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from google.protobuf import text_format

# Beam's DirectRunner tries to download the Prism runner binary first; the pure-Python
# portable runner needs no network and still honours --direct_num_workers and
# --direct_running_mode=multi_processing.
LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
PROJECT_SETUP_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


def flush_local_data_streams_by_size_only() -> None:
    """Turns off the local runner's timed flush of its data streams, which drops records.

    apache-beam 2.77's FnApiRunner flushes every data stream it writes to a worker (and, with
    `multi_threading`, every stream its workers write back) from a timer thread once a second
    (`worker_handlers.DATA_BUFFER_TIME_LIMIT_MS`). That flush
    (`data_plane.TimeBasedBufferingClosableOutputStream`) sends the buffer, then clears it,
    without holding off the thread that writes to it, so whatever is written in between is lost.
    Measured with the preprocess job (its accounting check names the loss): 3,000 images in
    `multi_threading` lost 1 to 3 records in every one of 6 runs; 14,863 images in
    `multi_processing` lost 8 in one run of 13 (with the flush every 5 ms instead, to make the
    race frequent, both `multi_processing` runs of 3,000 tried lost records, 528 in one). At 0
    the streams flush by size only, from the writing thread, as the SDK harness does on
    Dataflow; a timed flush only lowers latency in streaming jobs. tests/test_local_runner.py
    shows the upstream race, so the day a Beam release fixes it, that test fails and this can
    go.
    """
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0


def build_pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """PipelineOptions from the arguments our own parser did not consume.

    With no runner (or DirectRunner) the job runs on the local FnApiRunner, its data streams
    flushed by size only (`flush_local_data_streams_by_size_only`); on Dataflow, workers
    install this project from `setup.py` unless a custom container is given.
    """
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner"):
        standard.runner = LOCAL_RUNNER
    if standard.runner == LOCAL_RUNNER:
        flush_local_data_streams_by_size_only()
    setup = options.view_as(SetupOptions)
    uses_container = options.view_as(WorkerOptions).sdk_container_image
    if (standard.runner == "DataflowRunner" and not setup.setup_file and not uses_container
            and os.path.exists(PROJECT_SETUP_FILE)):
        setup.setup_file = PROJECT_SETUP_FILE
    return options


# Warnings Beam logs on every local run that ask nothing of the user: its local workers have no
# semi-persistent directory, and RunInference cannot read its own memory use here.
HARMLESS_WARNINGS = ("No semi_persistent_directory found", "Resource module is not available")
# The local runner relays a worker process's log record as "Worker: <the LogEntry proto as text>".
WORKER_RELAY_LOGGER = "apache_beam.runners.portability.local_job_service"


def _readable(record: logging.LogRecord) -> bool:
    """Drops the harmless warnings; reduces a relayed worker record to "worker: <its message>"."""
    if any(warning in record.getMessage() for warning in HARMLESS_WARNINGS):
        return False
    if record.name == WORKER_RELAY_LOGGER and len(record.args or ()) == 1:
        try:
            entry = text_format.Parse(str(record.args[0]), beam_fn_api_pb2.LogEntry())
        except text_format.ParseError:
            return True
        record.msg, record.args = "worker: %s", (entry.message,)
    return True


def configure_logging() -> None:
    """INFO for the job's own messages; runner internals and library notices only from WARNING up.

    absl and TensorFlow notices (optional modules missing, deprecations inside tfx-bsl) say
    nothing about the job either.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_readable)
