"""Reads one listed image from any Beam filesystem and preprocesses it, or says why not.

The preprocess job and batch prediction both call these functions, so an input is
rejected for the same reasons, with the same codes, in training data and at serving.

Only a file that does not exist is a rejection at the read stage. Any other I/O error
(a storage hiccup, a permission problem, a directory listed as an image) is raised as
`InputReadError`, so the runner retries the bundle and, if the error persists, the job
fails naming the input: a transient error must not turn a good image into a permanent
rejection. The error names the input as the caller describes it, and never repeats the
underlying exception's message, which carries the path.
"""

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from cxr_core import imaging
from cxr_core.rejection import UnusableInput


class InputReadError(IOError):
    """An I/O error other than not-found, raised so that the runner retries the bundle."""


def _describe(error: Exception) -> str:
    """The error's type and, for OS errors, its errno text; never its message (it holds the path)."""
    if isinstance(error, OSError) and error.errno is not None:
        return f"{type(error).__name__} (errno {error.errno}: {error.strerror})"
    return type(error).__name__


def read_file(uri: str, max_bytes: int, name: str | None = None) -> bytes:
    """The file's bytes, refusing more than `max_bytes` without reading them all.

    Raises:
      UnusableInput: the file does not exist, or it is larger than `max_bytes`.
      InputReadError: any other failure; `name` (default: the uri) says which input.
    """
    try:
        with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            data = handle.read(max_bytes + 1)
    except Exception as error:  # FileSystems raises OSError, BeamIOError or a GCS error
        try:
            exists = FileSystems.exists(uri)
        except Exception as lookup_error:
            raise InputReadError(f"{_describe(lookup_error)} looking up {name or uri}") from None
        if not exists:
            raise UnusableInput("read", "missing_file", "the listed image does not exist") from None
        raise InputReadError(f"{_describe(error)} reading {name or uri}") from None
    if len(data) > max_bytes:
        raise UnusableInput("read", "image_too_large",
                            f"the file is larger than {max_bytes / 1e6:.0f} MB, the most the pixel limit "
                            "allows (--max_megapixels)")
    return data


def read_and_preprocess(uri: str, image_size: int, max_pixels: int = imaging.DEFAULT_MAX_PIXELS,
                        name: str | None = None) -> imaging.DecodedImage:
    """Reads `uri` (see `read_file`) and preprocesses its bytes (see `imaging.preprocess_bytes`)."""
    data = read_file(uri, imaging.max_file_bytes(max_pixels), name)
    return imaging.preprocess_bytes(data, image_size, uri, max_pixels)
