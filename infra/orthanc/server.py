"""Starts Orthanc (Debian `orthanc` + `orthanc-dicomweb`) as a child process on 127.0.0.1, and stops it.

    python -m infra.orthanc.server [--storage_dir DIR] [--stable_age 1]

Every run generates its own configuration: free HTTP and DICOM ports on 127.0.0.1, storage
in a temporary (or given) folder, `StableAge` of a second or two so that a study's
`StableStudy` change comes fast, the DICOMweb plugin at `/dicom-web/`, no authentication,
no remote access. Orthanc's own test suite starts it the same way. The command prints
one JSON line (`http_url`, `dicomweb_url`, `dicom_aet`, `dicom_port`, `explorer_url`)
once Orthanc answers, then runs until SIGTERM or Ctrl-C, so a program that may not
import this package (the benchmarks) can start one.

Orthanc is never started as a system service here. When it is not installed,
`OrthancMissing` says how to install it: `bash infra/orthanc/install.sh`.
"""

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import requests

HOST = "127.0.0.1"
ORTHANC_BINARY = "Orthanc"
DICOM_AET = "ORTHANC"
# Where the Debian package orthanc-dicomweb installs its plugin (a versioned file and a link to it).
DICOMWEB_PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                         "/usr/lib/orthanc/libOrthancDicomWeb.so*")
INSTALL_HINT = "install it with `bash infra/orthanc/install.sh` (as root; it prints the commands otherwise)"
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0


class OrthancMissing(RuntimeError):
    """Orthanc or its DICOMweb plugin is not installed; the message says how to install them."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def orthanc_binary() -> str:
    path = shutil.which(ORTHANC_BINARY) or next(
        (candidate for candidate in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.access(candidate, os.X_OK)), "")
    if not path:
        raise OrthancMissing(f"Orthanc is not installed: {INSTALL_HINT}")
    return path


def dicomweb_plugin() -> str:
    for pattern in DICOMWEB_PLUGIN_GLOBS:
        if matches := sorted(glob.glob(pattern)):
            return matches[0]
    raise OrthancMissing(f"Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb) is not installed: "
                         f"{INSTALL_HINT}")


def configuration(storage_dir: str, http_port: int, dicom_port: int, stable_age: int) -> dict:
    """An Orthanc configuration for one local run."""
    return {
        "Name": "cxr-local-pacs",
        "StorageDirectory": storage_dir,
        "IndexDirectory": storage_dir,
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": DICOM_AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StableAge": stable_age,
        "Plugins": [dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomAlwaysAllowStore": True,
        "DicomCheckModalityHost": False,
        "DicomModalities": {},
        "SaveJobs": False,
        "StorageCompression": False,
    }


class OrthancServer:
    """One Orthanc child process with its configuration, ports and storage."""

    def __init__(self, work_dir: str, stable_age: int = 1):
        self.work_dir = work_dir
        self.stable_age = stable_age
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.log_path = os.path.join(work_dir, "orthanc.log")
        self._process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    @property
    def dicom_peer(self) -> str:
        """The `AET@HOST:PORT` the node's --destination takes."""
        return f"{DICOM_AET}@{HOST}:{self.dicom_port}"

    def start(self) -> None:
        """Starts Orthanc and waits until its REST API answers."""
        binary = orthanc_binary()
        storage = os.path.join(self.work_dir, "storage")
        os.makedirs(storage, exist_ok=True)
        config_path = os.path.join(self.work_dir, "orthanc.json")
        with open(config_path, "w", encoding="utf-8") as handle:
            json.dump(configuration(storage, self.http_port, self.dicom_port, self.stable_age), handle, indent=1)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen([binary, config_path], stdout=log, stderr=subprocess.STDOUT,
                                             cwd=self.work_dir)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with status {self._process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.http_url}/system", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {START_TIMEOUT_SECONDS:g} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def log_tail(self, lines: int = 20) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])

    # The REST calls the tests, the benchmark and the demo make. -----------------------------------

    def get(self, path: str, **params):
        response = requests.get(f"{self.http_url}{path}", params=params, timeout=30)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("Content-Type", "") else response.content

    def upload(self, dicom: bytes) -> dict:
        """Stores one DICOM file; Orthanc's answer (ID, ParentStudy, ...)."""
        response = requests.post(f"{self.http_url}/instances", data=dicom, timeout=30)
        response.raise_for_status()
        return response.json()

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        """Lets Orthanc send to a DICOM peer (Orthanc's `DicomModalities`, set at run time)."""
        response = requests.put(f"{self.http_url}/modalities/{name}", timeout=30,
                                json={"AET": ae_title, "Host": host, "Port": port})
        response.raise_for_status()

    def send_to_modality(self, name: str, resources: list[str]) -> None:
        """C-STOREs Orthanc resources (study, series or instance ids) to a configured modality, synchronously."""
        response = requests.post(f"{self.http_url}/modalities/{name}/store", timeout=120,
                                 json={"Resources": resources, "Synchronous": True})
        response.raise_for_status()


@contextlib.contextmanager
def running(work_dir: str | None = None, stable_age: int = 1) -> Iterator[OrthancServer]:
    """An Orthanc server for the `with` block, in `work_dir` or a temporary folder removed afterwards."""
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="orthanc-"))
        server = OrthancServer(work_dir, stable_age)
        server.start()
        stack.callback(server.stop)
        yield server


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.orthanc.server", description=__doc__.split("\n")[0])
    parser.add_argument("--storage_dir", help="Keep Orthanc's configuration, storage and log here (default: a "
                                              "temporary folder removed at exit).")
    parser.add_argument("--stable_age", type=int, default=1, help="Seconds without a new instance before a study "
                                                                  "is StableStudy.")
    args = parser.parse_args()
    stop = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.append(True))
    try:
        with running(args.storage_dir, args.stable_age) as server:
            print(json.dumps({"http_url": server.http_url, "dicomweb_url": server.dicomweb_url,
                              "dicom_aet": DICOM_AET, "dicom_port": server.dicom_port,
                              "explorer_url": f"{server.http_url}/app/explorer.html"}), flush=True)
            while not stop:
                time.sleep(0.2)
    except OrthancMissing as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
