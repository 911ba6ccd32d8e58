"""Shared test set-up: Beam pipelines run on the local pure-Python runner."""

import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from beam_pipelines.options import LOCAL_RUNNER


@pytest.fixture
def beam_pipeline() -> TestPipeline:
    """A TestPipeline on the FnApiRunner (DirectRunner would try to download Prism)."""
    return TestPipeline(runner=LOCAL_RUNNER)
