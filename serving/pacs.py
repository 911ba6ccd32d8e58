"""The node's clients of a PACS: C-STORE and STOW-RS destinations, and Orthanc's REST API.

A destination is named by one flag value: `AET@HOST:PORT` sends by DICOM C-STORE
(pynetdicom), an `http://` or `https://` URL of a DICOMweb service (Orthanc's is
`http://HOST:8042/dicom-web`) sends by STOW-RS (dicomweb-client). Either raises
`DeliveryError` when an object was not stored; `serving.delivery` retries and keeps what
could not be sent.

`OrthancClient` reads what the node needs from an Orthanc server: its change log (to
follow `StableStudy` events), a study's series and instances, and instance files.
"""

import dataclasses
import logging
import re

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

PEER_PATTERN = re.compile(r"^(?P<ae_title>[^@\\]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")
SUCCESS_STATUSES = frozenset({0x0000, 0xB000, 0xB007, 0xB006})  # Success and the storage warnings.
NETWORK_TIMEOUT_SECONDS = 30.0
CHANGES_PAGE = 100
STABLE_STUDY = "StableStudy"

# dicomweb-client logs every request with its study UID at INFO.
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)


class DeliveryError(Exception):
    """An object was not stored at the destination; the message says what the destination answered."""


class OrthancError(Exception):
    """Orthanc's REST API did not answer as expected."""


@dataclasses.dataclass(frozen=True)
class DicomPeer:
    """A DICOM application entity: its AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_peer(text: str) -> DicomPeer:
    """`AET@HOST:PORT` → DicomPeer; raises ValueError naming the expected form."""
    match = PEER_PATTERN.match(text.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"expected AET@HOST:PORT (an AE title of at most 16 characters), got {text!r}")
    return DicomPeer(match["ae_title"].strip(), match["host"], int(match["port"]))


class CStoreDestination:
    """Sends datasets to a DICOM peer by C-STORE, all on one association."""

    def __init__(self, peer: DicomPeer, calling_ae_title: str, timeout: float = NETWORK_TIMEOUT_SECONDS):
        self.peer = peer
        self._calling_ae_title = calling_ae_title
        self._timeout = timeout

    def __str__(self) -> str:
        return f"C-STORE to {self.peer}"

    def send(self, datasets: list[pydicom.Dataset]) -> None:
        """Stores every dataset, or raises DeliveryError at the first one not stored."""
        ae = AE(ae_title=self._calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self._timeout
        for sop_class in sorted({str(dataset.SOPClassUID) for dataset in datasets}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        association = ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.ae_title)
        if not association.is_established:
            raise DeliveryError(f"{self.peer} refused or did not answer the association")
        try:
            for dataset in datasets:
                status = association.send_c_store(dataset)
                code = status.get("Status") if status else None
                if code not in SUCCESS_STATUSES:
                    answer = "no answer" if code is None else f"status 0x{code:04X}"
                    raise DeliveryError(f"{self.peer} did not store a {dataset.SOPClassUID.name} object ({answer})")
        finally:
            if association.is_established:
                association.release()


class StowDestination:
    """Sends datasets to a DICOMweb service by STOW-RS, in one request."""

    def __init__(self, url: str, timeout: float = NETWORK_TIMEOUT_SECONDS):
        self.url = url.rstrip("/")
        self._client = DICOMwebClient(url=self.url, timeout=timeout)
        self._client.set_http_retry_params(retry=False)  # serving.delivery retries, with its own backoff.

    def __str__(self) -> str:
        return f"STOW-RS to {self.url}"

    def send(self, datasets: list[pydicom.Dataset]) -> None:
        """Stores every dataset, or raises DeliveryError."""
        try:
            response = self._client.store_instances(datasets)
        except requests.RequestException as error:
            raise DeliveryError(f"{self.url} did not store the objects ({type(error).__name__}: "
                                f"{_http_status(error)})") from error
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            raise DeliveryError(f"{self.url} refused {len(failed)} of {len(datasets)} objects")


def _http_status(error: requests.RequestException) -> str:
    response = getattr(error, "response", None)
    return f"HTTP {response.status_code}" if response is not None else "no response"


def destination_for(text: str, calling_ae_title: str) -> CStoreDestination | StowDestination:
    """The destination a `--destination` value names; raises ValueError naming both forms."""
    if text.startswith(("http://", "https://")):
        return StowDestination(text)
    try:
        return CStoreDestination(parse_peer(text), calling_ae_title)
    except ValueError as error:
        raise ValueError(f"--destination must be AET@HOST:PORT (C-STORE) or the http(s):// URL of a DICOMweb "
                         f"service (STOW-RS): {error}") from None


@dataclasses.dataclass(frozen=True)
class OrthancSeries:
    """What Orthanc's index says of one series, without reading its files."""

    orthanc_id: str
    modality: str
    manufacturer: str
    instance_ids: tuple[str, ...]


class OrthancClient:
    """The few calls of Orthanc's REST API the node uses."""

    def __init__(self, url: str, timeout: float = NETWORK_TIMEOUT_SECONDS):
        self.url = url.rstrip("/")
        self._timeout = timeout
        self._session = requests.Session()

    def _get(self, path: str, **params) -> requests.Response:
        try:
            response = self._session.get(f"{self.url}{path}", params=params, timeout=self._timeout, stream=True)
            response.raise_for_status()
        except requests.RequestException as error:
            # Not the path: it holds Orthanc's ids, hashes of the study's UIDs.
            raise OrthancError(f"Orthanc at {self.url} did not answer a request ({type(error).__name__}, "
                               f"{_http_status(error)})") from error
        return response

    def last_change(self) -> int:
        """The sequence number of the newest change."""
        return int(self._get("/changes", last="").json()["Last"])

    def stable_studies(self, since: int) -> tuple[list[str], int, bool]:
        """Orthanc ids of the studies that became stable after change `since`, the last change read, and
        whether that was the newest."""
        page = self._get("/changes", since=since, limit=CHANGES_PAGE).json()
        studies = [change["ID"] for change in page["Changes"] if change["ChangeType"] == STABLE_STUDY]
        return studies, int(page["Last"]), bool(page["Done"])

    def study_uid(self, study_id: str) -> str:
        return str(self._get(f"/studies/{study_id}").json()["MainDicomTags"]["StudyInstanceUID"])

    def series_of_study(self, study_id: str) -> list[OrthancSeries]:
        """Every series of a study, with its modality and manufacturer from Orthanc's index."""
        series = []
        for item in self._get(f"/studies/{study_id}/series").json():
            tags = item.get("MainDicomTags", {})
            series.append(OrthancSeries(item["ID"], tags.get("Modality", ""), tags.get("Manufacturer", ""),
                                        tuple(item.get("Instances", ()))))
        return series

    def instance_size(self, instance_id: str) -> int:
        return int(self._get(f"/instances/{instance_id}").json()["FileSize"])

    def instance_file(self, instance_id: str) -> bytes:
        return self._get(f"/instances/{instance_id}/file").content
