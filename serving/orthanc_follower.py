"""Follows an Orthanc server's change log and fetches each study that became stable.

Orthanc marks a study `StableStudy` in its change log (`GET /changes`) once no instance
of it has arrived for its `StableAge` seconds: the same quiet-time rule as the node's
C-STORE inbox, applied by the PACS. Every such study is recorded as a marker file under
`STATE/orthanc/pending/` before the cursor (`STATE/orthanc/cursor`) moves past its
change, and the marker is removed only when the study has been answered, so a stopped
node resumes where it left off and loses no study.

Fetching reads Orthanc's index first: a series whose Modality is not a radiograph is
rejected as a whole without downloading it (a CT study is hundreds of files), with the
data plane's reason; the node's own report series are downloaded (they say which images
were already answered), its heat-map series are skipped; files over the size limit are
refused before download.
"""

import os
import shutil

from cxr_core import imaging, selection
from serving import dicom_results, pacs, study_analysis
from serving.study_analysis import InstanceRejection
from serving.study_inbox import StudyBatch, digest_name, new_batch_folder

CURSOR_FILE = "cursor"
PENDING_DIR = "pending"
START_NOW = "now"
START_BEGINNING = "beginning"
VIA = "orthanc"
HANDED_OUT_BECAUSE = "stable"


class OrthancFollower:
    """The change-log cursor and the pending studies of one Orthanc server, kept in `state_dir`."""

    def __init__(self, client: pacs.OrthancClient, state_dir: str, start: str = START_NOW):
        self.client = client
        self._cursor_path = os.path.join(state_dir, CURSOR_FILE)
        self._pending_dir = os.path.join(state_dir, PENDING_DIR)
        os.makedirs(self._pending_dir, exist_ok=True)
        self._start = start

    def _cursor(self) -> int:
        if os.path.exists(self._cursor_path):
            with open(self._cursor_path, encoding="utf-8") as handle:
                return int(handle.read().strip())
        return self.client.last_change() if self._start == START_NOW else 0

    def _save_cursor(self, cursor: int) -> None:
        partial = self._cursor_path + ".partial"
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(str(cursor))
        os.replace(partial, self._cursor_path)

    def poll(self) -> list[str]:
        """Orthanc ids of the studies that became stable since the last poll, each recorded as pending.

        Raises:
          pacs.OrthancError: Orthanc did not answer; nothing moved.
        """
        cursor = self._cursor()
        found = []
        while True:
            studies, cursor, done = self.client.stable_studies(cursor)
            for study_id in studies:
                open(os.path.join(self._pending_dir, study_id), "w", encoding="utf-8").close()
                found.append(study_id)
            self._save_cursor(cursor)
            if done:
                return found

    def pending(self) -> list[str]:
        """Studies recorded but not answered (by an earlier run, or still in progress)."""
        return sorted(os.listdir(self._pending_dir))

    def done(self, study_id: str) -> None:
        """The study is answered (or dead-lettered, or kept for the operator): forget it."""
        path = os.path.join(self._pending_dir, study_id)
        if os.path.exists(path):
            os.remove(path)

    def fetch(self, study_id: str, work_dir: str, max_pixels: int, received_at: float) -> StudyBatch:
        """Downloads what the node needs of one study into a fresh folder under `work_dir`.

        Raises:
          pacs.OrthancError, OSError: Orthanc did not answer, or the disk refused; nothing is kept.
        """
        study_uid = self.client.study_uid(study_id)
        folder = new_batch_folder(work_dir, study_uid)
        os.makedirs(folder)
        try:
            rejected = self._download(study_id, folder, max_pixels)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return StudyBatch(study_uid, folder, VIA, HANDED_OUT_BECAUSE, received_at, received_at, received_at,
                          tuple(rejected))

    def _download(self, study_id: str, folder: str, max_pixels: int) -> list[InstanceRejection]:
        """Writes the study's radiographs and the node's reports into `folder`; the instances refused unread."""
        max_bytes = imaging.max_file_bytes(max_pixels)
        rejected = []
        for series in self.client.series_of_study(study_id):
            own = series.manufacturer.strip() == dicom_results.MANUFACTURER
            if own and series.modality != "SR":
                continue  # The node's heat maps: nothing to analyse, nothing to reject.
            if not own and (problem := selection.dicom_modality_problem(series.modality)):
                rejected += [InstanceRejection("", "select", "not_xray", problem)] * len(series.instance_ids)
                continue
            for instance_id in series.instance_ids:
                if not own and self.client.instance_size(instance_id) > max_bytes:
                    rejected.append(study_analysis.file_too_large(max_pixels))
                    continue
                with open(os.path.join(folder, digest_name(instance_id) + ".dcm"), "wb") as handle:
                    handle.write(self.client.instance_file(instance_id))
        return rejected
