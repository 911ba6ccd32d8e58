"""Patient-level split from the keyed hash of `cxr_core.pseudonyms`, and the patient key itself.

HMAC-SHA256 of (source, patient id) under the patient key gives the hex `patient/id`
written to records and a uniform number in [0, 1) that picks the split. A patient
therefore never appears in two splits, and keeps its split when the dataset grows
or is reprocessed, as long as the key and the fractions stay the same.

There is no default key: anyone who knows the key can recompute `patient/id` from raw
patient ids, so each deployment brings its own (`--patient_key` or, better,
`--patient_key_file`, whose key is read where it is used and so never enters the job
graph or a template parameter).
"""

import dataclasses

from apache_beam.io.filesystems import FileSystems

from cxr_core import contract
from cxr_core.pseudonyms import MIN_KEY_CHARACTERS

HASH_FRACTION_BYTES = 8


@dataclasses.dataclass(frozen=True)
class PatientKey:
    """The secret of the keyed hash: given inline, or as the path of a file (local or gs://) holding it."""

    value: str = ""
    path: str = ""

    def load(self) -> str:
        """The key; a key file is read now, surrounding whitespace (the final newline) stripped."""
        if not self.path:
            return self.value
        with FileSystems.open(self.path) as handle:
            return handle.read().decode("utf-8").strip()


def patient_key_problem(key: PatientKey) -> str | None:
    """Why `key` cannot be used (naming the flags), or None; checked before the job starts."""
    if key.value and key.path:
        return "give either --patient_key or --patient_key_file, not both"
    if not key.value and not key.path:
        return ("no patient key: pass --patient_key SECRET or --patient_key_file FILE (local or gs://). "
                "There is no default key: anyone who knows it can recompute patient/id from raw patient ids. "
                "Make one with: python -c 'import secrets; print(secrets.token_hex(32))'")
    try:
        secret = key.load()
    except Exception as error:  # a missing file, no access, not UTF-8: say which, not the traceback
        return f"--patient_key_file {key.path} cannot be read ({type(error).__name__})"
    if len(secret) < MIN_KEY_CHARACTERS:
        flag = "--patient_key_file" if key.path else "--patient_key"
        return (f"{flag}: the patient key has {len(secret)} characters; use at least {MIN_KEY_CHARACTERS} "
                "random ones, e.g. python -c 'import secrets; print(secrets.token_hex(32))'")
    return None


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


def assign_split(patient_hash: str, fractions: dict[str, float]) -> str:
    """The split whose cumulative fraction interval holds the hash's position in [0, 1)."""
    position = int(patient_hash[:HASH_FRACTION_BYTES * 2], 16) / float(1 << (HASH_FRACTION_BYTES * 8))
    cumulative = 0.0
    for split in contract.SPLITS:
        cumulative += fractions[split]
        if position < cumulative:
            return split
    return next(split for split in reversed(contract.SPLITS) if fractions[split] > 0)
