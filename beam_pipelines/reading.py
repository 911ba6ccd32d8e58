"""Reads one listed image from any Beam filesystem and preprocesses it, or says why not.

The preprocess job and batch prediction both call `read_and_preprocess`, so an input
is rejected for the same reasons, with the same codes, in training data and at serving.
"""

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipelines import imaging


class UnusableInput(Exception):
    """An input that cannot become an image: where it failed, a stable code, and the detail."""

    def __init__(self, stage: str, kind: str, reason: str):
        super().__init__(f"{stage}/{kind}: {reason}")
        self.stage = stage
        self.kind = kind
        self.reason = reason


def read_file(uri: str) -> bytes:
    try:
        with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return handle.read()
    except Exception as error:  # FileSystems raises IOError, BeamIOError or a GCS error
        if not FileSystems.exists(uri):
            raise UnusableInput("read", "missing_file", "the listed image does not exist") from error
        raise UnusableInput("read", "read_failed", f"{type(error).__name__}: {error}") from error


def read_and_preprocess(uri: str, image_size: int) -> imaging.DecodedImage:
    """`imaging.preprocess_image` of the file's bytes; every failure is an `UnusableInput`."""
    data = read_file(uri)
    try:
        return imaging.preprocess_image(data, image_size, uri)
    except imaging.ImageDecodeError as error:
        raise UnusableInput("decode", error.kind, error.reason) from error
    except Exception as error:  # a decoder bug must not fail the job: record it instead
        raise UnusableInput("decode", "unexpected_error", f"{type(error).__name__}: {error}") from error
