"""Studies arriving one instance at a time: spooled to disk, handed out once complete.

A C-STORE SCP never learns that a study is complete; like dicom-ai-router, the node takes
a study as complete when no instance of it has arrived for `quiet_seconds`. A study
that keeps growing is handed out anyway once `max_wait_seconds` have passed since its
first instance, or once it holds `max_instances` instances; what arrives later starts a
new batch of the same study.

Everything lives on disk, so a stopped or crashed node loses nothing:
`SPOOL/incoming/<study>/` gathers a study's instances (one file per SOPInstanceUID, so a
resent instance replaces itself), and handing a study out renames that folder to
`SPOOL/work/<study>-<batch>/`, where it stays until the node has answered it. At start,
`recover` hands out the work folders of the previous run again and resumes waiting on
its incoming folders. Folder and file names are digests, never UIDs.
"""

import dataclasses
import hashlib
import os
import shutil
import threading
import time
import uuid

import pydicom

from serving.study_analysis import InstanceRejection

INCOMING = "incoming"
WORK = "work"
PARTIAL = "partial"
NAME_CHARACTERS = 20
QUIET = "quiet"
MAX_WAIT = "max_wait"
MAX_INSTANCES = "max_instances"
RECOVERED = "recovered"


@dataclasses.dataclass(frozen=True)
class StudyBatch:
    """One study's instances, handed out together to be analysed and answered."""

    study_uid: str
    folder: str  # Holds the instance files; removed once the batch is answered.
    via: str  # How the instances came: "c-store from <AE title>", "orthanc".
    handed_out_because: str  # QUIET, MAX_WAIT, MAX_INSTANCES, RECOVERED, or "stable" (Orthanc).
    first_received: float  # time.monotonic()
    last_received: float
    handed_out: float
    pre_rejected: tuple[InstanceRejection, ...] = ()  # Instances refused before they reached the folder.

    @property
    def batch_id(self) -> str:
        """Random, unique to this batch of the study."""
        return os.path.basename(self.folder).rsplit("-", 1)[-1]

    def files(self) -> list[str]:
        return sorted(os.path.join(self.folder, entry) for entry in os.listdir(self.folder) if entry.endswith(".dcm"))


@dataclasses.dataclass
class _Arrivals:
    study_uid: str
    first: float
    last: float
    count: int
    callers: set[str]


def digest_name(uid: str) -> str:
    """A file-system-safe name for a UID that does not reveal it."""
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()[:NAME_CHARACTERS]


def new_batch_folder(work_dir: str, study_uid: str) -> str:
    """A fresh, unique folder name for a batch of `study_uid` under `work_dir` (not created)."""
    return os.path.join(work_dir, f"{digest_name(study_uid)}-{uuid.uuid4().hex[:8]}")


class StudyInbox:
    """Spools received instances by study and hands out the studies that are complete."""

    def __init__(self, spool_dir: str, quiet_seconds: float, max_wait_seconds: float, max_instances: int):
        self.incoming_dir = os.path.join(spool_dir, INCOMING)
        self.work_dir = os.path.join(spool_dir, WORK)
        self._partial_dir = os.path.join(spool_dir, PARTIAL)
        for folder in (self.incoming_dir, self.work_dir, self._partial_dir):
            os.makedirs(folder, exist_ok=True)
        self._quiet = quiet_seconds
        self._max_wait = max_wait_seconds
        self._max_instances = max_instances
        self._lock = threading.Lock()
        self._studies: dict[str, _Arrivals] = {}

    def add(self, study_uid: str, instance_uid: str, data: bytes, caller: str) -> None:
        """Stores one instance (the bytes of a DICOM file) in its study's incoming folder."""
        partial = os.path.join(self._partial_dir, uuid.uuid4().hex)
        with open(partial, "wb") as handle:
            handle.write(data)
        key = digest_name(study_uid)
        now = time.monotonic()
        with self._lock:
            folder = os.path.join(self.incoming_dir, key)
            os.makedirs(folder, exist_ok=True)
            os.replace(partial, os.path.join(folder, digest_name(instance_uid) + ".dcm"))
            arrivals = self._studies.setdefault(key, _Arrivals(study_uid, now, now, 0, set()))
            arrivals.last = now
            arrivals.count += 1
            arrivals.callers.add(caller)

    def due(self) -> list[StudyBatch]:
        """Hands out (moves to the work folder) every study that is complete or has waited long enough."""
        now = time.monotonic()
        batches = []
        with self._lock:
            for key, arrivals in list(self._studies.items()):
                if arrivals.count >= self._max_instances:
                    reason = MAX_INSTANCES
                elif now - arrivals.last >= self._quiet:
                    reason = QUIET
                elif now - arrivals.first >= self._max_wait:
                    reason = MAX_WAIT
                else:
                    continue
                folder = new_batch_folder(self.work_dir, arrivals.study_uid)
                os.rename(os.path.join(self.incoming_dir, key), folder)
                del self._studies[key]
                batches.append(StudyBatch(arrivals.study_uid, folder, "c-store from " + ", ".join(
                    sorted(arrivals.callers)), reason, arrivals.first, arrivals.last, now))
        return batches

    def recover(self) -> list[StudyBatch]:
        """After a restart: the previous run's unanswered batches, and its incoming studies waiting again."""
        now = time.monotonic()
        shutil.rmtree(self._partial_dir, ignore_errors=True)
        os.makedirs(self._partial_dir)
        batches = []
        for entry in sorted(os.listdir(self.work_dir)):
            folder = os.path.join(self.work_dir, entry)
            if study_uid := _study_uid_of(folder):
                batches.append(StudyBatch(study_uid, folder, "spool of an earlier run", RECOVERED, now, now, now))
        with self._lock:
            for key in sorted(os.listdir(self.incoming_dir)):
                folder = os.path.join(self.incoming_dir, key)
                count = len(os.listdir(folder))
                if key not in self._studies and (study_uid := _study_uid_of(folder)):
                    self._studies[key] = _Arrivals(study_uid, now, now, count, {"spool of an earlier run"})
        return batches

    def waiting(self) -> int:
        """Studies still being received."""
        with self._lock:
            return len(self._studies)


def _study_uid_of(folder: str) -> str:
    """The StudyInstanceUID of the first readable instance in `folder`, or "" (a folder of unreadable files
    stays where it is for the operator)."""
    for entry in sorted(os.listdir(folder)):
        try:
            header = pydicom.dcmread(os.path.join(folder, entry), stop_before_pixels=True,
                                     specific_tags=["StudyInstanceUID"])
            return str(header.StudyInstanceUID)
        except Exception:  # pydicom raises many types on corrupt files; try the next one.
            continue
    return ""
