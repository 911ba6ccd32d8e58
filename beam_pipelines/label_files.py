"""Label files (CSV) read strictly, each row with the line it starts on.

A file that is not UTF-8 (a BOM is fine), whose quoting swallows the lines after an
unclosed quote, or that lacks a required column raises `LabelFileError` naming the
file and line, so the job can refuse it before it starts. A row that merely has the
wrong number of fields is kept: the readers reject it on its own, with its line.
"""

import codecs
import csv
import dataclasses
import io
import posixpath
import re

from apache_beam.io.filesystems import FileSystems

# Every character str.splitlines() breaks a line at.
_LINE_BOUNDARY = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class LabelFileError(ValueError):
    """A label file that cannot be read row by row; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class LabelRow:
    """One record of a label file: the physical line it starts on, and its stripped fields."""

    line: int
    values: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LabelFile:
    header: tuple[str, ...]
    rows: tuple[LabelRow, ...]

    def column_index(self, case_sensitive: bool = True) -> dict[str, int]:
        """Column name (lower-cased unless `case_sensitive`) → field position."""
        return {(name if case_sensitive else name.lower()): index for index, name in enumerate(self.header)}

    def field_count_problem(self, row: LabelRow) -> str | None:
        """Why `row` cannot be read by column (more or fewer fields than the header), or None."""
        if len(row.values) == len(self.header):
            return None
        return f"the row has {len(row.values)} fields where the header has {len(self.header)}"


def _decode_utf8(path: str, data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise LabelFileError(f"{path} is UTF-16 text; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise LabelFileError(f"{path} is not valid UTF-8: byte 0x{data[error.start]:02x} on line {line}; "
                             "save it as UTF-8") from None


def _swallows_lines(values: list[str], width: int) -> bool:
    """True when a field spans lines and one of them reads as a whole row: an unclosed quote.

    A quoted field may legitimately hold line breaks (free-text notes), but not a
    line with as many fields as the header.
    """
    if not _LINE_BOUNDARY.search("".join(values)):
        return False  # the common row, checked once rather than field by field
    for value in values:
        lines = value.splitlines()
        if any(len(next(csv.reader([line]), [])) >= width for line in lines[1:]):
            return True
    return False


def parse_label_text(path: str, text: str, required: tuple[str, ...] = (),
                     case_sensitive: bool = True) -> LabelFile:
    """Header and rows of CSV text, each row with its line; `path` only names the file in errors.

    Raises:
      LabelFileError: a required column is missing, or quoting swallows lines.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise LabelFileError(f"{path} is empty")
        header = tuple(name.strip() for name in header)
        present = set(header) if case_sensitive else {name.lower() for name in header}
        missing = [name for name in required if name not in present]
        if missing:
            raise LabelFileError(f"{path} lacks columns {missing}")
        rows, line = [], reader.line_num
        for values in reader:
            start, line = line + 1, reader.line_num
            if not "".join(values).strip():
                continue  # a blank line or a row of empty fields lists nothing
            if _swallows_lines(values, len(header)):
                raise LabelFileError(
                    f"{path}: a quote opened in the row starting on line {start} is not closed before line "
                    f"{line}, so it swallows the rows in between; fix the quoting")
            rows.append(LabelRow(start, tuple(value.strip() for value in values)))
    except csv.Error as error:
        raise LabelFileError(f"{path} line {reader.line_num}: {error}") from None
    return LabelFile(header, tuple(rows))


def read_label_file(path: str, required: tuple[str, ...] = (), case_sensitive: bool = True) -> LabelFile:
    """A label file on any Beam filesystem, strictly UTF-8; see `parse_label_text`."""
    with FileSystems.open(path) as raw:
        data = raw.read()
    return parse_label_text(path, _decode_utf8(path, data), required, case_sensitive)


def read_csv_rows(path: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows (as dicts) of a CSV on any Beam filesystem."""
    table = read_label_file(path)
    return list(table.header), [dict(zip(table.header, row.values)) for row in table.rows]


def resolve_listed_uri(uri: str, csv_path: str) -> str:
    """A uri from a CSV column; relative ones resolve next to the CSV."""
    if "://" in uri or posixpath.isabs(uri):
        return uri
    return FileSystems.join(posixpath.dirname(csv_path), uri)
