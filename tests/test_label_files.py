"""Label files parsed strictly: encoding, quoting, columns, and the line each row starts on."""

import codecs

import pytest

from beam_pipelines import label_files
from beam_pipelines.label_files import LabelFileError, LabelRow

HEADER = "image_uri,label,patient_id\n"


def parse(text: str, required: tuple[str, ...] = (), case_sensitive: bool = True) -> label_files.LabelFile:
    return label_files.parse_label_text("own.csv", text, required, case_sensitive)


def test_rows_keep_the_line_they_start_on_and_blank_rows_list_nothing():
    table = parse(HEADER + "a.png, normal ,1\n\n,,\n\"b.png\",pneumonia,2\n")
    assert table.header == ("image_uri", "label", "patient_id")
    assert table.rows == (LabelRow(2, ("a.png", "normal", "1")), LabelRow(5, ("b.png", "pneumonia", "2")))


def test_a_missing_required_column_is_named_and_names_match_as_asked():
    with pytest.raises(LabelFileError, match=r"own.csv lacks columns \['patient_id'\]"):
        parse("image_uri,label\na.png,normal\n", required=("image_uri", "label", "patient_id"))
    with pytest.raises(LabelFileError, match=r"lacks columns \['patientid'\]"):
        parse("PatientID,finding\n1,COVID-19\n", required=("patientid",))
    table = parse("PatientID,finding\n1,COVID-19\n", required=("patientid",), case_sensitive=False)
    assert table.column_index(case_sensitive=False) == {"patientid": 0, "finding": 1}


def test_an_empty_file_is_named():
    with pytest.raises(LabelFileError, match="own.csv is empty"):
        parse("")


def test_a_row_with_the_wrong_number_of_fields_is_kept_and_its_problem_stated():
    table = parse(HEADER + "a.png,normal\nb.png,normal,2\n")
    short, whole = table.rows
    assert table.field_count_problem(short) == "the row has 2 fields where the header has 3"
    assert table.field_count_problem(whole) is None


def test_a_non_utf8_byte_is_named_with_its_line(tmp_path):
    path = tmp_path / "own.csv"
    path.write_bytes(HEADER.encode() + b"a.png,normal,1\nb.png,normal,Jos\xe9\n")
    with pytest.raises(LabelFileError) as raised:
        label_files.read_label_file(str(path))
    assert str(raised.value) == f"{path} is not valid UTF-8: byte 0xe9 on line 3; save it as UTF-8"


def test_a_utf8_bom_is_fine(tmp_path):
    path = tmp_path / "own.csv"
    path.write_bytes(codecs.BOM_UTF8 + (HEADER + "a.png,normal,1\n").encode())
    assert label_files.read_label_file(str(path)).header == ("image_uri", "label", "patient_id")


def test_a_utf16_file_is_refused(tmp_path):
    path = tmp_path / "own.csv"
    path.write_bytes(codecs.BOM_UTF16_BE + (HEADER + "a.png,normal,1\n").encode("utf-16-be"))
    with pytest.raises(LabelFileError, match="is UTF-16 text; save it as UTF-8"):
        label_files.read_label_file(str(path))


def test_an_unclosed_quote_is_refused_but_a_line_break_in_a_quoted_field_is_kept():
    with pytest.raises(LabelFileError, match="row starting on line 3 is not closed before line 5"):
        parse(HEADER + 'a.png,normal,1\nb.png,"normal,2\nc.png,normal,3\nd.png,normal,4\n')
    table = parse("image_uri,label,patient_id,notes\n"
                  'a.png,normal,1,"cough\nday 3: worse"\nb.png,normal,2,\n')
    assert [row.line for row in table.rows] == [2, 4]


def test_csv_rows_read_as_dicts(tmp_path):
    path = tmp_path / "inputs.csv"
    path.write_text("image_uri,note\nx.png,first\n,no uri\n")
    assert label_files.read_csv_rows(str(path)) == (
        ["image_uri", "note"], [{"image_uri": "x.png", "note": "first"}, {"image_uri": "", "note": "no uri"}])


@pytest.mark.parametrize("uri, expected", [
    ("img/a.dcm", "/data/labels/img/a.dcm"), ("/abs/b.png", "/abs/b.png"), ("gs://bucket/c.png", "gs://bucket/c.png"),
])
def test_relative_uris_resolve_next_to_the_csv(uri, expected):
    assert label_files.resolve_listed_uri(uri, "/data/labels/mine.csv") == expected


def test_the_fast_line_break_check_knows_every_break_that_splitlines_knows():
    breaks = {char for char in map(chr, range(0x110000)) if len(f"a{char}b".splitlines()) > 1}
    assert breaks == {char for char in map(chr, range(0x110000)) if label_files._LINE_BOUNDARY.search(char)}
