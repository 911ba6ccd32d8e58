"""Patient-level split: stable, proportional, and keyed."""

import collections

import pytest

from beam_pipelines import splitting
from cxr_core import pseudonyms

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def split_of(patient_id, key="k", source="rsna"):
    return splitting.assign_split(pseudonyms.pseudonymous_patient_id(key, source, patient_id), FRACTIONS)


def test_split_proportions_follow_the_fractions():
    counts = collections.Counter(split_of(f"patient-{index}") for index in range(20000))
    assert counts["train"] / 20000 == pytest.approx(0.8, abs=0.01)
    assert counts["val"] / 20000 == pytest.approx(0.1, abs=0.01)
    assert counts["test"] / 20000 == pytest.approx(0.1, abs=0.01)


def test_a_patient_keeps_its_split_whatever_else_is_in_the_dataset():
    before = {f"p{index}": split_of(f"p{index}") for index in range(1000)}
    after = {f"p{index}": split_of(f"p{index}") for index in range(5000)}
    assert all(after[patient] == split for patient, split in before.items())


def test_pseudonyms_depend_on_key_and_source_and_hide_the_raw_id():
    pseudonym = pseudonyms.pseudonymous_patient_id("key-a", "rsna", "12345")
    assert pseudonym != pseudonyms.pseudonymous_patient_id("key-b", "rsna", "12345")
    assert pseudonym != pseudonyms.pseudonymous_patient_id("key-a", "covid", "12345")
    assert "12345" not in pseudonym and len(pseudonym) == 64
    assert pseudonyms.pseudonymous_image_id("k", "covid", "images/a.png").startswith("covid-")


def test_zero_fraction_splits_get_nobody():
    fractions = {"train": 0.9, "val": 0.0, "test": 0.1}
    splits = {splitting.assign_split(pseudonyms.keyed_hash("k", str(i)), fractions) for i in range(2000)}
    assert splits == {"train", "test"}


@pytest.mark.parametrize("text", ["0.8,0.2", "0.5,0.5,0.5", "a,b,c", "0,0.5,0.5", "-0.1,0.6,0.5"])
def test_bad_split_flags_are_refused(text):
    with pytest.raises(ValueError, match="--split"):
        splitting.parse_split(text)


# The patient key: no default, inline or from a file --------------------------------------------

SECRET = "a-test-key-with-enough-characters"


def test_a_key_file_is_read_and_stripped(tmp_path):
    path = tmp_path / "patient_key"
    path.write_text(SECRET + "\n")
    key = splitting.PatientKey(path=str(path))
    assert splitting.patient_key_problem(key) is None
    assert key.load() == SECRET
    assert splitting.PatientKey(value=SECRET).load() == SECRET


@pytest.mark.parametrize("value, file_text, message", [
    ("", None, "no patient key: pass --patient_key SECRET or --patient_key_file FILE"),
    (SECRET, SECRET, "give either --patient_key or --patient_key_file, not both"),
    ("short", None, "--patient_key: the patient key has 5 characters; use at least 16"),
    ("", "short\n", "--patient_key_file: the patient key has 5 characters"),
])
def test_unusable_keys_are_refused_naming_the_flags(tmp_path, value, file_text, message):
    path = ""
    if file_text is not None:
        path = str(tmp_path / "patient_key")
        (tmp_path / "patient_key").write_text(file_text)
    problem = splitting.patient_key_problem(splitting.PatientKey(value=value, path=path))
    assert problem and problem.startswith(message)


def test_a_missing_key_file_is_named(tmp_path):
    problem = splitting.patient_key_problem(splitting.PatientKey(path=str(tmp_path / "nowhere")))
    assert problem.startswith(f"--patient_key_file {tmp_path}/nowhere cannot be read")


def test_the_fingerprint_tells_keys_apart_without_revealing_them():
    fingerprint = pseudonyms.key_fingerprint(SECRET)
    assert fingerprint == pseudonyms.key_fingerprint(SECRET) != pseudonyms.key_fingerprint(SECRET + "x")
    assert SECRET not in fingerprint and len(fingerprint) == pseudonyms.KEY_FINGERPRINT_CHARACTERS


def test_the_match_key_ignores_the_source_but_not_the_id():
    assert pseudonyms.patient_match_key("k", "p1") == pseudonyms.patient_match_key("k", "p1")
    assert pseudonyms.patient_match_key("k", "p1") != pseudonyms.patient_match_key("k", "p2")
    assert pseudonyms.patient_match_key("k", "p1") != pseudonyms.pseudonymous_patient_id("k", "rsna", "p1")
