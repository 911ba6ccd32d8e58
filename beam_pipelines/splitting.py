"""Patient-level split and pseudonymous ids, both from one keyed hash.

HMAC-SHA256 of (source, patient id) under `--patient_key` gives the hex `patient/id`
written to records and a uniform number in [0, 1) that picks the split. A patient
therefore never appears in two splits, and keeps its split when the dataset grows
or is reprocessed, as long as the key and the fractions stay the same.
"""

import hashlib
import hmac

from beam_pipelines import contract

HASH_FRACTION_BYTES = 8


def parse_split(text: str) -> dict[str, float]:
    """`"0.8,0.1,0.1"` → {"train": 0.8, "val": 0.1, "test": 0.1}, validated."""
    try:
        fractions = [float(part) for part in text.split(",")]
    except ValueError as error:
        raise ValueError(f"--split must be three numbers like 0.8,0.1,0.1, got {text!r}") from error
    if len(fractions) != len(contract.SPLITS) or any(f < 0 for f in fractions):
        raise ValueError(f"--split must be three non-negative fractions (train,val,test), got {text!r}")
    if abs(sum(fractions) - 1.0) > 1e-6 or fractions[0] == 0:
        raise ValueError(f"--split fractions must sum to 1 with a non-empty train split, got {text!r}")
    return dict(zip(contract.SPLITS, fractions))


def keyed_hash(key: str, *parts: str) -> str:
    """Hex HMAC-SHA256 of the parts; the key makes ids unlinkable without it."""
    message = "\x1f".join(parts).encode("utf-8")
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def pseudonymous_patient_id(key: str, source: str, patient_id: str) -> str:
    return keyed_hash(key, "patient", source, patient_id)


def pseudonymous_image_id(key: str, source: str, image_uri_in_source: str) -> str:
    """Stable id of one source image; augmented copies share it."""
    return f"{source}-{keyed_hash(key, 'image', source, image_uri_in_source)[:24]}"


def assign_split(patient_hash: str, fractions: dict[str, float]) -> str:
    """The split whose cumulative fraction interval holds the hash's position in [0, 1)."""
    position = int(patient_hash[:HASH_FRACTION_BYTES * 2], 16) / float(1 << (HASH_FRACTION_BYTES * 8))
    cumulative = 0.0
    for split in contract.SPLITS:
        cumulative += fractions[split]
        if position < cumulative:
            return split
    return next(split for split in reversed(contract.SPLITS) if fractions[split] > 0)
