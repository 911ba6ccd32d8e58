"""Files on local disk or gs://, read and written the same way by every component.

Everything goes through Beam's FileSystems, whose gs:// client (google-cloud-storage)
honours STORAGE_EMULATOR_HOST, so the same calls run against Google Cloud Storage and
against a local emulator. TensorFlow's own gs:// client cannot be pointed anywhere but
Google (its endpoints are compiled in), so what TensorFlow must read or write is moved
between gs:// and local disk here: `local_view` copies a folder down, `copy_tree`
copies one up, `atomic_output` gives a writer a local file and publishes it when done.

A file appears under its final name only once it is complete: it is written beside it as
`.tmp-<uuid>-<name>` and renamed, so a reader, or a job deciding what is left to do,
never sees half a file. A crash can leave `.tmp-*` files behind, never a partial final
one; `TEMPORARY_PATTERN` finds them for clean-up.

    python -m beam_pipelines.storage copy SOURCE_DIR DESTINATION_DIR   # local <-> gs://, either way
    python -m beam_pipelines.storage ls gs://bucket/prefix
    python -m beam_pipelines.storage cat gs://bucket/prefix/file.csv
"""

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

TEMPORARY_PREFIX = ".tmp-"
TEMPORARY_PATTERN = TEMPORARY_PREFIX + "*"
_COPY_BUFFER_BYTES = 8 * 1024 * 1024


def is_remote(path: str) -> bool:
    """True for a URL such as gs://bucket/key, False for a local path."""
    return FileSystems.get_scheme(path) not in (None, "file")


def temporary_path(final_path: str) -> str:
    """A unique name beside `final_path` under which its content is written before the rename."""
    directory, name = FileSystems.split(final_path)
    return FileSystems.join(directory, f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}-{name}")


@contextlib.contextmanager
def atomic_output(final_path: str) -> Iterator[str]:
    """Yields a local path to write; it becomes `final_path` only if the block finishes.

    Locally the file is written beside its final name and renamed; for gs:// it is written
    to a local scratch file, uploaded under a temporary name and renamed on the bucket.
    """
    if not is_remote(final_path):
        os.makedirs(os.path.dirname(os.path.abspath(final_path)), exist_ok=True)
        temporary = temporary_path(final_path)
        try:
            yield temporary
            os.replace(temporary, final_path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        return
    with tempfile.TemporaryDirectory(prefix="cxr-upload-") as scratch:
        local_file = os.path.join(scratch, FileSystems.split(final_path)[1])
        yield local_file
        _upload_and_rename(local_file, final_path)


def _upload_and_rename(local_file: str, final_path: str) -> None:
    temporary = temporary_path(final_path)
    try:
        with open(local_file, "rb") as source, FileSystems.create(
                temporary, compression_type=CompressionTypes.UNCOMPRESSED) as destination:
            shutil.copyfileobj(source, destination, _COPY_BUFFER_BYTES)
        FileSystems.rename([temporary], [final_path])
    finally:
        if FileSystems.exists(temporary):
            FileSystems.delete([temporary])


def write_bytes(path: str, data: bytes) -> None:
    """Writes a whole small file (a manifest, a report) atomically."""
    with atomic_output(path) as local_file, open(local_file, "wb") as output:
        output.write(data)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def list_files(directory: str) -> list[str]:
    """Paths relative to `directory` of every file below it, sorted; [] if there is none."""
    root = directory.rstrip("/")
    if not is_remote(root):
        return sorted(os.path.relpath(os.path.join(folder, name), root)
                      for folder, _, names in os.walk(root) for name in names)
    matched = FileSystems.match([FileSystems.join(root, "**")])[0].metadata_list
    # A key ending in "/" is a folder placeholder some tools create, not a file.
    return sorted(metadata.path[len(root) + 1:] for metadata in matched if not metadata.path.endswith("/"))


def move_files(source_dir: str, destination_dir: str, names: Sequence[str]) -> None:
    """Moves the named files from `source_dir` into `destination_dir` (renames on one filesystem).

    A file already at its destination and gone from the source was moved by an earlier
    attempt, so a retried step moves only what is left. `source_dir` is removed once empty.

    Raises:
      FileNotFoundError: a named file is in neither folder.
    """
    staged = set(list_files(source_dir))
    pending = [name for name in names if name in staged]
    absent = [name for name in names if name not in staged
              and not FileSystems.exists(FileSystems.join(destination_dir.rstrip("/"), name))]
    if absent:
        raise FileNotFoundError(f"{len(absent)} file(s) to move are in neither {source_dir} nor {destination_dir}, "
                                f"e.g. {absent[0]}")
    if pending:
        if not is_remote(destination_dir):
            os.makedirs(destination_dir, exist_ok=True)
        FileSystems.rename([FileSystems.join(source_dir.rstrip("/"), name) for name in pending],
                           [FileSystems.join(destination_dir.rstrip("/"), name) for name in pending])
    if not is_remote(source_dir) and os.path.isdir(source_dir) and not os.listdir(source_dir):
        os.rmdir(source_dir)


def copy_file(source: str, destination: str) -> None:
    """Copies one file between any two filesystems; the destination appears complete or not at all."""
    with atomic_output(destination) as local_file, open(local_file, "wb") as output, FileSystems.open(
            source, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        shutil.copyfileobj(handle, output, _COPY_BUFFER_BYTES)


def copy_tree(source: str, destination: str) -> list[str]:
    """Copies every file below `source` to the same relative path below `destination`.

    Returns the relative paths copied. Raises FileNotFoundError when `source` holds no file,
    so that a mistyped path is not mistaken for an empty result.
    """
    relative_paths = list_files(source)
    if not relative_paths:
        raise FileNotFoundError(f"no file below {source}")
    for relative_path in relative_paths:
        copy_file(FileSystems.join(source.rstrip("/"), relative_path),
                  FileSystems.join(destination.rstrip("/"), relative_path))
    return relative_paths


def local_view(path: str, cache_dir: str | None = None) -> str:
    """A local folder with the content of `path`, for readers that cannot read gs:// themselves.

    A local `path` is returned as it is; a gs:// one is copied below `cache_dir` (a new
    temporary folder when not given) and that copy is returned.
    """
    if not is_remote(path):
        return path
    local_dir = cache_dir or tempfile.mkdtemp(prefix="cxr-view-")
    copy_tree(path, local_dir)
    return local_dir


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beam_pipelines.storage", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    copy = commands.add_parser("copy", help="Copy every file below SOURCE to DESTINATION (local or gs://).")
    copy.add_argument("source")
    copy.add_argument("destination")
    commands.add_parser("ls", help="List every file below a folder or prefix.").add_argument("directory")
    commands.add_parser("cat", help="Print a file.").add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "copy":
        copied = copy_tree(args.source, args.destination)
        print(f"copied {len(copied)} files from {args.source} to {args.destination}")
    elif args.command == "ls":
        print("\n".join(FileSystems.join(args.directory.rstrip("/"), name) for name in list_files(args.directory)))
    else:
        sys.stdout.buffer.write(read_bytes(args.path))


if __name__ == "__main__":
    main()
