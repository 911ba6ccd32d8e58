"""Pipeline options shared by every job: the runner choice and Dataflow packaging."""

import logging
import os

from apache_beam.options.pipeline_options import (
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

# Beam's DirectRunner now tries to download the Prism runner binary first; the pure-Python
# portable runner needs no network and still honours --direct_num_workers and
# --direct_running_mode=multi_processing.
LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
PROJECT_SETUP_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


def build_pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """PipelineOptions from the arguments our own parser did not consume.

    With no runner (or DirectRunner) the job runs on the local FnApiRunner; on Dataflow,
    workers install this project from `setup.py` unless a custom container is given.
    """
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner"):
        standard.runner = LOCAL_RUNNER
    setup = options.view_as(SetupOptions)
    uses_container = options.view_as(WorkerOptions).sdk_container_image
    if (standard.runner == "DataflowRunner" and not setup.setup_file and not uses_container
            and os.path.exists(PROJECT_SETUP_FILE)):
        setup.setup_file = PROJECT_SETUP_FILE
    return options


def configure_logging() -> None:
    """INFO for the job's own messages; Beam's runner internals only from WARNING up."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
