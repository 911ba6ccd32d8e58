"""A Cloud Storage emulator on 127.0.0.1, for the tests and `make cloud-demo`; nothing leaves the machine.

    python -m infra.gcs_emulator --walkthrough docs/cloud.md     # what `make cloud-demo` runs
    python -m infra.gcs_emulator -- bash                         # a shell with a bucket $BUCKET to try things

gcp-storage-emulator serves the Cloud Storage JSON API from a thread of this process, in
memory, on a free port of 127.0.0.1. Commands started with `environment()` reach it:

* STORAGE_EMULATOR_HOST sends google-cloud-storage, and so Beam's gs:// filesystem, there.
* GOOGLE_APPLICATION_CREDENTIALS names an authorized_user file holding a dummy token that
  never expires. Beam asks google.auth.default() for credentials and, finding none, retries
  for about 30 s in every process before going anonymous; this file answers at once, its
  token is never refreshed, and the emulator ignores it. NO_GCE_CHECK stops google-auth
  from probing the metadata server.
* Requests that would still go to Google fail at once: HTTPS_PROXY and HTTP_PROXY point at a
  closed port of 127.0.0.1, with NO_PROXY exempting the emulator. TensorFlow's own gs://
  client is one of them, its endpoints being compiled in (www.googleapis.com and
  storage.googleapis.com in tsl's gcs_file_system.cc); GOOGLE_AUTH_TOKEN_FOR_TESTING and
  GCS_RETRY_CONFIG_MAX_RETRIES=0 make it fail without looking for credentials or retrying.

`--walkthrough` runs the first ```sh block after the `<!-- cloud-demo -->` marker of a
Markdown file with bash, each of its comment lines printed as a step header, with
BUCKET, RUN and WORK set, then stops the emulator.
"""

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence

from gcp_storage_emulator.server import create_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

HOST = "127.0.0.1"
DEFAULT_BUCKET = "cxr-local"
DEFAULT_RUN = "local-001"
WALKTHROUGH_MARKER = "<!-- cloud-demo -->"
DUMMY_PROJECT = "local-emulator-project"
_CREDENTIALS = {"type": "authorized_user", "client_id": "emulator", "client_secret": "emulator",
                "refresh_token": "emulator", "token": "emulator", "expiry": "2999-01-01T00:00:00Z"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class GcsEmulator:
    """The emulator, its buckets, and the environment that points clients at it."""

    def __init__(self, port: int, config_dir: str):
        self.url = f"http://{HOST}:{port}"
        self._server = create_server(HOST, port, in_memory=True)
        self._credentials_file = os.path.join(config_dir, "emulator-credentials.json")
        with open(self._credentials_file, "w") as output:
            json.dump(_CREDENTIALS, output)
        # Port 9 (discard) of the loopback: nothing listens, so a stray request fails at once.
        self._blackhole = f"http://{HOST}:9"

    def environment(self) -> dict[str, str]:
        """Variables for every process that should use the emulator instead of Google Cloud."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "GOOGLE_APPLICATION_CREDENTIALS": self._credentials_file,
            "GOOGLE_CLOUD_PROJECT": DUMMY_PROJECT,
            "NO_GCE_CHECK": "true",
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "GCS_RETRY_CONFIG_MAX_RETRIES": "0",
            **{name: self._blackhole for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")},
            **{name: f"{HOST},localhost" for name in ("NO_PROXY", "no_proxy")},
        }

    def client(self) -> storage.Client:
        """A google-cloud-storage client of the emulator, whatever this process's environment."""
        return storage.Client(project=DUMMY_PROJECT, credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.url})

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(name)

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()


@contextlib.contextmanager
def running(buckets: Sequence[str] = ()) -> Iterator[GcsEmulator]:
    """Starts the emulator with `buckets` created, and stops it however the block ends."""
    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)  # one INFO line per request otherwise
    with tempfile.TemporaryDirectory(prefix="gcs-emulator-") as config_dir:
        emulator = GcsEmulator(free_port(), config_dir)
        emulator.start()
        try:
            for bucket in buckets:
                emulator.create_bucket(bucket)
            yield emulator
        finally:
            emulator.stop()


def walkthrough_script(markdown_path: str) -> str:
    """The first ```sh block after WALKTHROUGH_MARKER in `markdown_path`."""
    with open(markdown_path, encoding="utf-8") as handle:
        text = handle.read()
    _, found, after = text.partition(WALKTHROUGH_MARKER)
    block = re.search(r"^```sh\n(.*?)^```", after, re.MULTILINE | re.DOTALL) if found else None
    if not block:
        raise ValueError(f"{markdown_path} has no ```sh block after {WALKTHROUGH_MARKER}")
    return block.group(1)


def announced(script: str) -> str:
    """The script with each whole-line comment turned into a printed step header ($VARIABLES expanded)."""
    return re.sub(r"^# (.*)$", lambda comment: 'echo "==> ' + re.sub(r'(["\\`])', r"\\\1", comment.group(1)) + '"',
                  script, flags=re.MULTILINE)


def run_command(command: Sequence[str], environment: dict[str, str], timeout: float | None = None) -> int:
    """Runs `command` in its own process group with `environment` added; kills the group if interrupted."""
    # The Python running this comes first on PATH, so the commands' `python` is the project's.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    process = subprocess.Popen(list(command), env={**os.environ, **environment, "PATH": path},
                               start_new_session=True)
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.gcs_emulator", description=__doc__.split("\n")[0])
    parser.add_argument("--bucket", default=DEFAULT_BUCKET, help="Bucket created in the emulator, as $BUCKET.")
    parser.add_argument("--run", default=DEFAULT_RUN, help="$RUN of the walkthrough.")
    parser.add_argument("--work_dir", help="$WORK: local scratch folder (default: a new temporary one, removed).")
    parser.add_argument("--walkthrough", help="Markdown file whose cloud-demo block to run.")
    parser.add_argument("command", nargs="*", help="Command to run instead (after --).")
    args = parser.parse_args(argv)
    if bool(args.walkthrough) == bool(args.command):
        parser.error("give either --walkthrough FILE or a command after --")
    command = ["bash", "-euo", "pipefail", "-c", announced(walkthrough_script(args.walkthrough))] \
        if args.walkthrough else args.command
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="cxr-local-")
    try:
        with running([args.bucket]) as emulator:
            print(f"==> Cloud Storage emulator at {emulator.url}, bucket gs://{args.bucket}, local files in {work_dir}",
                  flush=True)
            return run_command(command, {**emulator.environment(), "BUCKET": args.bucket, "RUN": args.run,
                                         "WORK": work_dir})
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
