"""Sex and age reach a record as coarse categories only; anything else becomes unknown."""

import pytest

from cxr_core import demographics


@pytest.mark.parametrize("text, expected", [
    ("M", "M"), (" male ", "M"), ("f", "F"), ("Female", "F"), ("O", "other"), ("other", "other"), ("X", "other"),
    ("", "unknown"), ("U", "unknown"), ("1961-04-02", "unknown"), ("Jane Doe", "unknown"),
])
def test_sex_categories(text, expected):
    assert demographics.sex_category(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("0", "0-9"), ("9", "0-9"), ("10", "10-19"), ("47", "40-49"), ("47.9", "40-49"), ("89", "80-89"),
    ("90", "90+"), ("104", "90+"),  # the very old share one band
    ("047Y", "40-49"), ("018M", "0-9"), ("130W", "0-9"), ("400D", "0-9"), ("085y", "80-89"),  # DICOM ages
    ("40-49", "40-49"), ("90+", "90+"),  # already banded
    ("", "unknown"), ("-3", "unknown"), ("131", "unknown"), ("1961-04-02", "unknown"), ("19610402", "unknown"),
    ("P-000123", "unknown"), ("about 50", "unknown"), ("nan", "unknown"),
])
def test_age_bands(text, expected):
    assert demographics.age_band(text) == expected


def test_every_value_written_is_a_category():
    assert demographics.AGE_BANDS == ("0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80-89",
                                      "90+")
    assert {demographics.sex_category(text) for text in ("m", "f", "o", "?")} == {*demographics.SEXES, "unknown"}
