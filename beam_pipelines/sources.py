"""Readers for the three input layouts, as they are published.

Each source is a composite transform that turns a directory or CSV (local or
`gs://`, through Beam's FileSystems) into `SourceImage` elements on its main
output and `Rejection`s for label rows that cannot be used on the `rejected` tag.
Label files are small (tens of thousands of rows), so each is parsed by one DoFn;
the expensive work, reading and decoding the images, fans out after a Reshuffle.

Label files are read strictly. A file that is not UTF-8 (a BOM is fine), or whose
quoting swallows the lines after an unclosed quote, or that lacks a required column,
is reported before the job starts by `source_problems`, naming the file and line.
Every row is then judged on its own: a row with the wrong number of fields, an
unknown label, no image or no patient id is rejected with its file and line, and
the job carries on. Rejections name rows by file and line and images by their keyed
hash, never by path or patient id.
"""

import codecs
import collections
import csv
import dataclasses
import functools
import io
import posixpath
import re
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipelines import splitting
from beam_pipelines.records import SourceImage
from cxr_core.rejection import Rejection

REJECTED = "rejected"

RSNA = "rsna"
COVID = "covid"
CSV = "csv"

RSNA_LABELS_FILE = "stage_2_train_labels.csv"
RSNA_CLASS_INFO_FILE = "stage_2_detailed_class_info.csv"
RSNA_IMAGES_DIR = "stage_2_train_images"
RSNA_NORMAL = "Normal"
RSNA_NOT_NORMAL = "No Lung Opacity / Not Normal"
RSNA_OPACITY = "Lung Opacity"  # Target=1; the label file decides pneumonia, this class agrees with it
NOT_NORMAL_POLICIES = ("exclude", "pneumonia")

# Every character str.splitlines() breaks a line at.
_LINE_BOUNDARY = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")

COVID_METADATA_FILE = "metadata.csv"
COVID_DEFAULT_FOLDER = "images"
COVID_XRAY_MODALITY = "x-ray"
COVID_UNLABELLED_FINDINGS = frozenset({"", "todo", "unknown"})
# Findings that are not an infection: neither "pneumonia" in this project's sense nor normal.
NON_INFECTIVE_FINDING = re.compile(r"\b(ards|lipoid)\b", re.IGNORECASE)
INFECTIVE_FINDING = re.compile(
    r"pneumonia|bacterial|viral|fungal|sars|mers|influenza|h1n1|varicella|herpes|"
    r"streptococcus|staphylococcus|klebsiella|e\.?\s?coli|legionella|chlamydophila|"
    r"mycoplasma|pneumocystis|aspergillosis|nocardia|tuberculosis|candida|histoplasmosis",
    re.IGNORECASE)

# Views kept unless --allowed_views says otherwise: the frontal ones. Laterals (L, LL, RL,
# LATERAL), CT planes and anything else are rejected, from the listing or the DICOM header.
DEFAULT_ALLOWED_VIEWS = "PA,AP,AP SUPINE,AP SEMI ERECT,AP ERECT"
RADIOGRAPH_MODALITIES = ("CR", "DX")

RSNA_REQUIRED_COLUMNS = ("patientId", "Target")
RSNA_CLASS_INFO_REQUIRED_COLUMNS = ("patientId", "class")
COVID_REQUIRED_COLUMNS = ("patientid", "finding", "view", "filename")
CSV_REQUIRED_COLUMNS = ("image_uri", "label", "patient_id")
# How rejections name the --csv file: its own name is the user's choice and may identify someone.
CSV_LISTING = "--csv"
CLASS_ALIASES = {"normal": "normal", "pneumonia": "pneumonia", "covid19": "covid19",
                 "covid-19": "covid19", "covid": "covid19"}
MISSING_PATIENT_IDS = frozenset({"", "nan", "null", "none", "na", "n/a"})


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


def _join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def resolve_listed_uri(uri: str, csv_path: str) -> str:
    """A uri from a CSV column; relative ones resolve next to the CSV."""
    if "://" in uri or posixpath.isabs(uri):
        return uri
    return _join(posixpath.dirname(csv_path), uri)


def is_missing_patient_id(patient_id: str) -> bool:
    """Empty ids and spreadsheet placeholders would merge unrelated patients into one."""
    return patient_id.strip().lower() in MISSING_PATIENT_IDS


def normalize_view(view: str) -> str:
    """`ap  supine` → `AP SUPINE`."""
    return " ".join(view.upper().split())


def parse_allowed_views(text: str) -> frozenset[str]:
    """`--allowed_views` (comma-separated) → normalised view names."""
    views = frozenset(normalize_view(view) for view in text.split(",") if view.strip())
    if not views:
        raise ValueError(f"--allowed_views must name at least one view, e.g. {DEFAULT_ALLOWED_VIEWS}")
    return views


def view_problem(view: str, allowed_views: frozenset[str], origin: str, required: bool = False) -> str | None:
    """Why an image with this view is not used (`origin` says where the view came from), or None.

    An unknown (empty) view passes unless `required`: a CSV or DICOM header that says
    nothing is the user's call, a view it does state is checked.
    """
    view = normalize_view(view)
    if view in allowed_views or (not view and not required):
        return None
    shown = repr(view) if view else "no view"
    return f"{origin} {shown} is not an allowed view ({', '.join(sorted(allowed_views))}; see --allowed_views)"


def dicom_modality_problem(modality: str) -> str | None:
    """Why a DICOM header's modality is not a chest radiograph, or None (unknown passes)."""
    modality = modality.strip().upper()
    if not modality or modality in RADIOGRAPH_MODALITIES:
        return None
    return f"DICOM modality {modality!r} is not a radiograph ({' or '.join(RADIOGRAPH_MODALITIES)})"


def header_problem(view: str, modality: str, allowed_views: frozenset[str]) -> tuple[str, str] | None:
    """(kind, reason) when a decoded file's own header says it is not a frontal radiograph."""
    if problem := dicom_modality_problem(modality):
        return ("not_xray", problem)
    if problem := view_problem(view, allowed_views, "DICOM ViewPosition"):
        return ("view_not_allowed", problem)
    return None


class _LabelParserFn(beam.DoFn):
    """Shared by the three parsers: the patient key, counters and the two outputs."""

    def __init__(self, source: str, patient_key: splitting.PatientKey):
        self._source = source
        self._patient_key = patient_key
        self._key = ""
        self._images = beam.metrics.Metrics.counter("sources", f"{source}_images")
        self._rejected = beam.metrics.Metrics.counter("sources", f"{source}_rejected")

    def setup(self):
        self._key = self._patient_key.load()

    def _image(self, **fields) -> SourceImage:
        self._images.inc()
        return SourceImage(source=self._source, **fields)

    def _reject(self, listing: str, line: int, stage: str, kind: str, reason: str,
                image_key: str = "") -> beam.pvalue.TaggedOutput:
        self._rejected.inc()
        beam.metrics.Metrics.counter(stage, kind).inc()
        image_id = splitting.pseudonymous_image_id(self._key, self._source, image_key) if image_key else ""
        return beam.pvalue.TaggedOutput(REJECTED, Rejection(
            source=self._source, stage=stage, kind=kind, reason=reason, image_id=image_id, listing=listing,
            line=line))

    def _wrong_field_count(self, listing: str, row: LabelRow, table: LabelFile) -> beam.pvalue.TaggedOutput | None:
        if len(row.values) == len(table.header):
            return None
        return self._reject(listing, row.line, "label", "wrong_field_count",
                            f"the row has {len(row.values)} fields where the header has {len(table.header)}")


class ParseRsnaLabelsFn(_LabelParserFn):
    """RSNA labels → one `SourceImage` per patient, however many box rows it has."""

    def __init__(self, not_normal_policy: str, patient_key: splitting.PatientKey):
        super().__init__(RSNA, patient_key)
        self._not_normal_policy = not_normal_policy

    def process(self, rsna_dir: str) -> Iterator:
        labels = read_label_file(_join(rsna_dir, RSNA_LABELS_FILE), RSNA_REQUIRED_COLUMNS)
        class_info_path = _join(rsna_dir, RSNA_CLASS_INFO_FILE)
        detailed = None
        if FileSystems.exists(class_info_path):
            detailed = collections.defaultdict(set)
            yield from self._read_class_info(read_label_file(class_info_path, RSNA_CLASS_INFO_REQUIRED_COLUMNS),
                                             detailed)
        columns = labels.column_index()
        patients = {}  # patient id → (first line, Target values), in file order
        for row in labels.rows:
            if rejection := self._rsna_row_rejection(RSNA_LABELS_FILE, row, labels, columns):
                yield rejection
                continue
            patient_id = row.values[columns["patientId"]]
            patients.setdefault(patient_id, (row.line, set()))[1].add(row.values[columns["Target"]])
        for patient_id, (line, targets) in patients.items():
            image_key = posixpath.join(RSNA_IMAGES_DIR, f"{patient_id}.dcm")
            classes = None if detailed is None else detailed.get(patient_id, set())
            outcome = self._classify(targets, classes)
            if isinstance(outcome, tuple):
                yield self._reject(RSNA_LABELS_FILE, line, *outcome, image_key=image_key)
            else:
                yield self._image(image_uri=_join(rsna_dir, image_key), image_key=image_key,
                                  patient_id=patient_id, label=outcome, listing=RSNA_LABELS_FILE, line=line)

    def _read_class_info(self, class_info: LabelFile, detailed: dict[str, set[str]]) -> Iterator:
        """Fills patient id → detailed classes; malformed rows are rejected with their line."""
        columns = class_info.column_index()
        for row in class_info.rows:
            if rejection := self._rsna_row_rejection(RSNA_CLASS_INFO_FILE, row, class_info, columns):
                yield rejection
                continue
            detailed[row.values[columns["patientId"]]].add(row.values[columns["class"]])

    def _rsna_row_rejection(self, listing: str, row: LabelRow, table: LabelFile,
                            columns: dict[str, int]) -> beam.pvalue.TaggedOutput | None:
        """The rejection of a row of either RSNA file without all its fields or a usable patientId."""
        if rejection := self._wrong_field_count(listing, row, table):
            return rejection
        if is_missing_patient_id(row.values[columns["patientId"]]):
            return self._reject(listing, row.line, "label", "missing_patient_id",
                                "patientId is empty or a placeholder (nan, null, none)")
        return None

    def _classify(self, targets: set[str], detailed_classes: set[str] | None) -> str | tuple[str, str, str]:
        """The class name, or (stage, kind, reason) for a patient that is not used.

        `detailed_classes` is None without a class-info file, else the patient's classes in it.
        """
        if len(targets) != 1 or not targets <= {"0", "1"}:
            return ("label", "invalid_target", f"Target values {sorted(targets)} are not a single 0 or 1")
        if targets == {"1"}:
            return "pneumonia"
        if detailed_classes is None:
            return "normal"
        if not detailed_classes:
            return ("label", "missing_detailed_class",
                    f"Target=0 but the patient is not in {RSNA_CLASS_INFO_FILE}, so normal and not normal "
                    "cannot be told apart")
        if len(detailed_classes) > 1:
            return ("label", "inconsistent_class", f"detailed classes {sorted(detailed_classes)} disagree")
        [detailed_class] = detailed_classes
        if detailed_class == RSNA_NORMAL:
            return "normal"
        if detailed_class == RSNA_NOT_NORMAL:
            if self._not_normal_policy == "pneumonia":
                return "pneumonia"
            return ("select", "excluded_not_normal",
                    "'No Lung Opacity / Not Normal' is excluded (--rsna_not_normal=pneumonia includes it)")
        return ("label", "inconsistent_class", f"Target=0 but detailed class is {detailed_class!r}")


def covid_finding_class(finding: str) -> str | tuple[str, str]:
    """covid-chestxray-dataset `finding` → class name, or (kind, reason) when unusable."""
    normalized = finding.strip()
    if "covid-19" in normalized.lower():
        return "covid19"
    if normalized.lower() == "no finding":
        return "normal"
    if normalized.lower() in COVID_UNLABELLED_FINDINGS:
        return ("unlabelled_finding", f"finding {finding!r} is not a diagnosis")
    if NON_INFECTIVE_FINDING.search(normalized):
        return ("non_infective_finding", f"finding {finding!r} is not an infection")
    if INFECTIVE_FINDING.search(normalized):
        return "pneumonia"
    return ("unknown_finding", f"finding {finding!r} is not a known class")


def _covid_field(row: LabelRow, columns: dict[str, int], name: str) -> str:
    """A metadata value by lower-case column name; columns of the other header generation read as empty."""
    return row.values[columns[name]] if name in columns else ""


class ParseCovidMetadataFn(_LabelParserFn):
    """covid-chestxray-dataset `metadata.csv` (2020 or later header) → X-rays in an allowed view."""

    def __init__(self, patient_key: splitting.PatientKey, allowed_views: frozenset[str]):
        super().__init__(COVID, patient_key)
        self._allowed_views = allowed_views

    def process(self, covid_dir: str) -> Iterator:
        table = read_label_file(_join(covid_dir, COVID_METADATA_FILE), COVID_REQUIRED_COLUMNS, case_sensitive=False)
        columns = table.column_index(case_sensitive=False)
        for row in table.rows:
            if rejection := self._wrong_field_count(COVID_METADATA_FILE, row, table):
                yield rejection
                continue
            field = functools.partial(_covid_field, row, columns)
            if not field("filename"):
                yield self._reject(COVID_METADATA_FILE, row.line, "label", "missing_image",
                                   "the row names no image file")
                continue
            image_key = posixpath.join(field("folder") or COVID_DEFAULT_FOLDER, field("filename"))
            outcome = self._classify(field("patientid"), field("view"), field("modality"), field("finding"))
            if isinstance(outcome, tuple):
                yield self._reject(COVID_METADATA_FILE, row.line, *outcome, image_key=image_key)
                continue
            yield self._image(image_uri=_join(covid_dir, image_key), image_key=image_key,
                              patient_id=field("patientid"), label=outcome, view=normalize_view(field("view")),
                              listing=COVID_METADATA_FILE, line=row.line)

    def _classify(self, patient_id: str, view: str, modality: str, finding: str) -> str | tuple[str, str, str]:
        if is_missing_patient_id(patient_id):
            return ("label", "missing_patient_id", "patientid is empty or a placeholder (nan, null, none)")
        if modality and modality.strip().lower() != COVID_XRAY_MODALITY:
            return ("select", "not_xray", f"modality {modality!r} is not X-ray")
        if problem := view_problem(view, self._allowed_views, "listed view", required=True):
            return ("select", "view_not_allowed", problem)
        outcome = covid_finding_class(finding)
        if isinstance(outcome, tuple):
            stage = "select" if outcome[0] == "unlabelled_finding" else "label"
            return (stage, *outcome)
        return outcome


class ParseLabelCsvFn(_LabelParserFn):
    """A user's CSV (`image_uri,label,patient_id[,view]`); relative uris resolve next to it."""

    def __init__(self, patient_key: splitting.PatientKey, allowed_views: frozenset[str]):
        super().__init__(CSV, patient_key)
        self._allowed_views = allowed_views

    def process(self, csv_path: str) -> Iterator:
        table = read_label_file(csv_path, CSV_REQUIRED_COLUMNS)
        columns = table.column_index()
        for row in table.rows:
            if rejection := self._wrong_field_count(CSV_LISTING, row, table):
                yield rejection
                continue
            image_key, label_text, patient_id = (row.values[columns[name]] for name in CSV_REQUIRED_COLUMNS)
            view = normalize_view(row.values[columns["view"]]) if "view" in columns else ""
            outcome = self._classify(image_key, label_text, patient_id, view)
            if isinstance(outcome, tuple):
                yield self._reject(CSV_LISTING, row.line, *outcome, image_key=image_key)
                continue
            yield self._image(image_uri=resolve_listed_uri(image_key, csv_path), image_key=image_key,
                              patient_id=patient_id, label=outcome, view=view, listing=CSV_LISTING, line=row.line)

    def _classify(self, image_key: str, label_text: str, patient_id: str, view: str) -> str | tuple[str, str, str]:
        if not image_key:
            return ("label", "missing_image", "image_uri is empty")
        label = CLASS_ALIASES.get(label_text.lower())
        if label is None:
            return ("label", "unknown_label", f"label {label_text!r} is not one of normal, pneumonia, covid19")
        if is_missing_patient_id(patient_id):
            return ("label", "missing_patient_id", "patient_id is empty or a placeholder (nan, null, none)")
        if problem := view_problem(view, self._allowed_views, "listed view"):
            return ("select", "view_not_allowed", problem)
        return label


class ReadSource(beam.PTransform):
    """Lists one source's labelled images; outputs `images` and `rejected`."""

    def __init__(self, location: str, parse_fn: beam.DoFn):
        super().__init__()
        self._location = location
        self._parse_fn = parse_fn

    def expand(self, pipeline):
        return (pipeline
                | "Location" >> beam.Create([self._location])
                | "ParseLabels" >> beam.ParDo(self._parse_fn).with_outputs(REJECTED, main="images"))


def _label_file_problem(path: str, required: tuple[str, ...], case_sensitive: bool, optional: bool) -> str | None:
    try:
        if not FileSystems.exists(path):
            return None if optional else f"{path} does not exist"
        read_label_file(path, required, case_sensitive)
    except LabelFileError as error:
        return str(error)
    except Exception as error:  # no access, a storage error: name the file, not a traceback
        return f"{path} cannot be read ({type(error).__name__})"
    return None


def source_problems(rsna_dir: str | None, covid_dir: str | None, csv_path: str | None) -> list[str]:
    """What is wrong with the given sources' label files, checked before the job starts.

    Every label file is read whole: its encoding, its quoting and its required columns.
    """
    checks = []
    if rsna_dir:
        checks.append((_join(rsna_dir, RSNA_LABELS_FILE), RSNA_REQUIRED_COLUMNS, True, False))
        checks.append((_join(rsna_dir, RSNA_CLASS_INFO_FILE), RSNA_CLASS_INFO_REQUIRED_COLUMNS, True, True))
    if covid_dir:
        checks.append((_join(covid_dir, COVID_METADATA_FILE), COVID_REQUIRED_COLUMNS, False, False))
    if csv_path:
        checks.append((csv_path, CSV_REQUIRED_COLUMNS, True, False))
    problems = (_label_file_problem(*check) for check in checks)
    return [problem for problem in problems if problem]
