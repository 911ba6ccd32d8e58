"""Sends a study's results with retries and exponential backoff; what cannot be sent waits in a dead-letter folder.

Nothing is dropped: after the last attempt (or when the node is stopping, so that SIGTERM
is not held up by a backoff) the objects are written, as DICOM files, to
`DEAD_LETTER/<name>/` with `delivery.json` saying where they were going and why they did
not arrive. The operator resends them with `cxr-node --resend_dead_letters` (see
`resend_dead_letters`), which removes a folder only once all its objects are stored.
"""

import dataclasses
import json
import os
import shutil
import threading
import time
from typing import Protocol

import pydicom

from serving.pacs import DeliveryError

DELIVERY_FILE = "delivery.json"
INCOMPLETE_PREFIX = ".incomplete-"


class Destination(Protocol):
    def send(self, datasets: list[pydicom.Dataset]) -> None: ...


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """`attempts` in all, waiting `first_delay` seconds after the first failure, doubling up to `max_delay`."""

    attempts: int = 5
    first_delay: float = 2.0
    max_delay: float = 60.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failure."""
        return min(self.max_delay, self.first_delay * 2 ** (failures - 1))


@dataclasses.dataclass(frozen=True)
class DeliveryOutcome:
    """Whether the objects were stored, after how many attempts, and where they wait otherwise."""

    delivered: bool
    attempts: int
    error: str = ""
    dead_letter: str = ""  # The folder's name under the dead-letter directory.
    stored_at: float = 0.0  # time.monotonic() when the destination acknowledged the last object.


def deliver(destination: Destination, datasets: list[pydicom.Dataset], policy: RetryPolicy, dead_letter_dir: str,
            name: str, stopping: threading.Event) -> DeliveryOutcome:
    """Sends `datasets`, retrying on DeliveryError; dead-letters them under `name` when every attempt failed."""
    error = ""
    for attempt in range(1, policy.attempts + 1):
        try:
            destination.send(datasets)
            return DeliveryOutcome(delivered=True, attempts=attempt, stored_at=time.monotonic())
        except DeliveryError as failure:
            error = str(failure)
        if attempt == policy.attempts or stopping.wait(policy.delay(attempt)):
            break
    write_dead_letter(dead_letter_dir, name, datasets, {"destination": str(destination), "attempts": attempt,
                                                        "error": error})
    return DeliveryOutcome(delivered=False, attempts=attempt, error=error, dead_letter=name)


def write_dead_letter(dead_letter_dir: str, name: str, datasets: list[pydicom.Dataset], delivery: dict) -> str:
    """Writes the datasets and `delivery` into `dead_letter_dir/name/`, complete or not at all."""
    incomplete = os.path.join(dead_letter_dir, INCOMPLETE_PREFIX + name)
    shutil.rmtree(incomplete, ignore_errors=True)
    os.makedirs(incomplete)
    for number, dataset in enumerate(datasets):
        dataset.save_as(os.path.join(incomplete, f"{number:03d}.dcm"), enforce_file_format=True)
    with open(os.path.join(incomplete, DELIVERY_FILE), "w", encoding="utf-8") as handle:
        json.dump(delivery, handle, indent=1, sort_keys=True)
    folder = os.path.join(dead_letter_dir, name)
    os.rename(incomplete, folder)
    return folder


def dead_letters(dead_letter_dir: str) -> list[str]:
    """Folders waiting to be resent, oldest name first."""
    if not os.path.isdir(dead_letter_dir):
        return []
    return sorted(entry for entry in os.listdir(dead_letter_dir)
                  if not entry.startswith(INCOMPLETE_PREFIX) and os.path.isdir(os.path.join(dead_letter_dir, entry)))


def resend_dead_letters(destination: Destination, dead_letter_dir: str) -> tuple[list[str], dict[str, str]]:
    """Sends every dead-letter folder once; removes those stored. Returns (sent names, {name: error})."""
    sent, failed = [], {}
    for name in dead_letters(dead_letter_dir):
        folder = os.path.join(dead_letter_dir, name)
        files = sorted(entry for entry in os.listdir(folder) if entry.endswith(".dcm"))
        try:
            destination.send([pydicom.dcmread(os.path.join(folder, entry)) for entry in files])
        except DeliveryError as error:
            failed[name] = str(error)
            continue
        shutil.rmtree(folder)
        sent.append(name)
    return sent, failed
