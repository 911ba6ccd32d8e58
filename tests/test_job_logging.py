"""What a person reads: the Beam jobs' log filter and the demo's TensorFlow start-up filter."""

import logging
import os
import re
import subprocess
import sys

import pytest
from apache_beam.portability.api import beam_fn_api_pb2

from beam_pipelines import options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def job_logging(caplog):
    """configure_logging() as a job calls it, undone afterwards."""
    root = logging.getLogger()
    handlers, levels = list(root.handlers), {name: logging.getLogger(name).level
                                              for name in ("apache_beam", "absl", "tensorflow")}
    caplog.set_level(logging.INFO)
    options.configure_logging()
    yield caplog
    for handler in list(root.handlers):
        handler.removeFilter(options._readable)
        if handler not in handlers:
            root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def relay(severity: int, message: str) -> None:
    """Logs a worker's record the way Beam's local runner relays it to the launching process."""
    entry = beam_fn_api_pb2.LogEntry(severity=severity, message=message, instruction_id="bundle_7")
    logging.getLogger(options.WORKER_RELAY_LOGGER).warning("Worker: %s", str(entry).replace("\n", " "))


def test_a_relayed_worker_record_shows_only_its_message(job_logging):
    message = "DATASET WARNING: class 'covid19' has no patient in the test split — \"quoted\""
    relay(beam_fn_api_pb2.LogEntry.Severity.WARN, message)
    assert [record.getMessage() for record in job_logging.records] == [f"worker: {message}"]


def test_harmless_runner_warnings_are_dropped_and_others_kept(job_logging):
    relay(beam_fn_api_pb2.LogEntry.Severity.WARN, "No semi_persistent_directory found: registries may not work")
    logging.getLogger().warning("Resource module is not available for current platform")
    logging.getLogger("beam_pipelines").warning("3 inputs rejected")
    assert [record.getMessage() for record in job_logging.records] == ["3 inputs rejected"]


def test_the_demo_drops_tensorflow_start_up_lines_that_no_setting_silences():
    with open(os.path.join(ROOT, "Makefile")) as makefile:
        pattern = re.search(r"^TF_STARTUP_LINES := (.*)$", makefile.read(), re.MULTILINE).group(1)
    started = subprocess.run([sys.executable, "-c", "import tensorflow as tf; tf.constant(1) + 1"],
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True,
                             timeout=120)
    assert started.returncode == 0, started.stderr
    assert "oneDNN custom operations are on" in started.stderr, "TensorFlow no longer prints it: drop the filter"
    filtered = subprocess.run(["sed", "-E", f"/{pattern}/d"], input=started.stderr, capture_output=True, text=True)
    assert filtered.stdout == "", f"start-up lines the demo still shows:\n{filtered.stdout}"
