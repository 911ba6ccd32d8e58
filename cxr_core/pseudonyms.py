"""Pseudonyms: keyed hashes that name patients, images and studies without identifying them.

HMAC-SHA256 under the deployment's patient key: the same raw id always gives the same
pseudonym, and without the key a pseudonym cannot be linked back to the id. The data
plane names patients and images this way in records, the DICOM node names studies this
way in its audit log.
"""

import hashlib
import hmac

MIN_KEY_CHARACTERS = 16
KEY_FINGERPRINT_CHARACTERS = 16


def keyed_hash(key: str, *parts: str) -> str:
    """Hex HMAC-SHA256 of the parts; the key makes ids unlinkable without it."""
    message = "\x1f".join(parts).encode("utf-8")
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def pseudonymous_patient_id(key: str, source: str, patient_id: str) -> str:
    return keyed_hash(key, "patient", source, patient_id)


def patient_match_key(key: str, patient_id: str) -> str:
    """Keyed hash of a raw patient id alone, to compare listings of one image across sources."""
    return keyed_hash(key, "patient-any-source", patient_id)


def pseudonymous_image_id(key: str, source: str, image_uri_in_source: str) -> str:
    """Stable id of one source image; augmented copies share it."""
    return f"{source}-{keyed_hash(key, 'image', source, image_uri_in_source)[:24]}"


def key_fingerprint(secret: str) -> str:
    """A short keyed hash of a constant: shows whether two runs used the same key, not the key."""
    return keyed_hash(secret, "fingerprint")[:KEY_FINGERPRINT_CHARACTERS]
