"""The DICOM node's audit log: one JSON object per line, with no patient identifier in it.

A study appears under its pseudonym, the HMAC-SHA256 of its StudyInstanceUID under the
patient key, and an instance under the HMAC of its SOPInstanceUID: an operator who holds
the key can find the study again (`pseudonym`), anyone else cannot. Lines hold what the
node decided (counts, classes, probabilities, rejection codes and reasons, destinations,
timings) and the node's own clock; never a name, a patient id, an accession number, a
date from a header, or a UID.
"""

import datetime
import json
import os
import threading
from typing import Any

from cxr_core import pseudonyms
from cxr_core.pseudonyms import MIN_KEY_CHARACTERS

PSEUDONYM_CHARACTERS = 24  # 96 bits: no collision among a hospital's studies, short enough to read.


class AuditKeyError(ValueError):
    """The patient key file is missing, unreadable or too short; says which."""


def load_key(path: str) -> str:
    """The patient key held in `path`, surrounding whitespace (the final newline) stripped."""
    try:
        with open(path, encoding="utf-8") as handle:
            key = handle.read().strip()
    except OSError as error:
        raise AuditKeyError(f"cannot read the patient key file {path}: {error.strerror or error}") from error
    if len(key) < MIN_KEY_CHARACTERS:
        raise AuditKeyError(f"the patient key in {path} has {len(key)} characters; it needs at least "
                            f"{MIN_KEY_CHARACTERS}, e.g. python -c 'import secrets; print(secrets.token_hex(32))'")
    return key


def pseudonym(key: str, uid: str) -> str:
    """The audit log's name for a study or an instance UID."""
    return pseudonyms.keyed_hash(key, "dicom-uid", uid)[:PSEUDONYM_CHARACTERS]


class AuditLog:
    """Appends JSON lines to a file, one `write` at a time from any thread, flushed at once."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._handle = open(path, "a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> None:
        """One line: the event, the node's UTC time, then `fields` (JSON-serialisable)."""
        record = {"event": event, "logged_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="milliseconds"), **fields}
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock:
            self._handle.write(line)
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            self._handle.close()


def read(path: str) -> list[dict[str, Any]]:
    """Every record of an audit log, in order."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
