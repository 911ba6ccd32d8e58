"""A patient's sex and age as coarse categories, the only form in which they reach a record.

Sex is M, F, other or unknown; age is a 10-year band ("0-9" … "80-89", "90+") or
unknown. A value that does not parse as one of them (a date, an id, free text) becomes
unknown rather than being copied, so nothing that identifies a patient is written.
"""

import re

UNKNOWN = "unknown"
SEXES = ("M", "F", "other")
# Ages at or above the last band's start share it: counts of the very old are small enough to identify.
OLDEST_BAND_START = 90
AGE_BANDS = (*(f"{start}-{start + 9}" for start in range(0, OLDEST_BAND_START, 10)), f"{OLDEST_BAND_START}+")
OLDEST_AGE = 130  # anything above is a typing error, not an age

_SEX_SPELLINGS = {"m": "M", "male": "M", "f": "F", "female": "F", "o": "other", "other": "other", "x": "other"}
# DICOM PatientAge (AS): three digits and a unit, days, weeks, months or years.
_DICOM_AGE = re.compile(r"(\d{3})([DWMY])")
_DAYS_PER_UNIT = {"D": 1, "W": 7, "M": 365.25 / 12, "Y": 365.25}
_YEARS = re.compile(r"\d{1,3}(\.\d+)?")


def sex_category(text: str) -> str:
    """`M`, `F`, `other` or `unknown` from a listed sex (M/male, F/female, O/other/X; any case)."""
    return _SEX_SPELLINGS.get(text.strip().lower(), UNKNOWN)


def _age_in_years(text: str) -> float | None:
    if match := _DICOM_AGE.fullmatch(text):
        return int(match.group(1)) * _DAYS_PER_UNIT[match.group(2)] / 365.25
    if _YEARS.fullmatch(text):
        return float(text)
    return None


def age_band(text: str) -> str:
    """The 10-year band of a listed age: years (`47`, `47.5`), a DICOM age (`047Y`, `018M`) or a band itself."""
    text = text.strip().upper()
    if text in AGE_BANDS:
        return text
    years = _age_in_years(text)
    if years is None or years > OLDEST_AGE:
        return UNKNOWN
    if years >= OLDEST_BAND_START:
        return AGE_BANDS[-1]
    return AGE_BANDS[int(years) // 10]
