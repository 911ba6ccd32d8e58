"""Readers for the four input layouts: RSNA, covid-chestxray-dataset, a CSV, an image folder.

Each source is a composite transform that turns a directory or CSV (local or
`gs://`, through Beam's FileSystems) into `SourceImage` elements on its main
output and `Rejection`s for label rows that cannot be used on the `rejected` tag.
Label files and folder listings are small (tens of thousands of rows), so each is
parsed by one DoFn; the expensive work, reading and decoding the images, fans out
after a Reshuffle.

A plain function per layout (`list_rsna`, `list_covid`, `list_csv`,
`list_image_folder`) reads its label file (`label_files`) or folder and judges every
row on its own (`selection`); the DoFns only turn its `ListedRow`s into outputs.
Label files that cannot be read row by row, and CSV source names that break the
rules, are reported before the job starts by `source_problems`, naming the file and
line. Rejections name rows by file and line (a folder's files by their place in its
sorted listing) and images by their keyed hash, never by path or patient id.
"""

import collections
import dataclasses
import posixpath
import re
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipelines import splitting
from beam_pipelines.label_files import LabelFile, LabelFileError, LabelRow, read_label_file, resolve_listed_uri
from beam_pipelines.records import SourceImage
from beam_pipelines.rejections import REJECTED, reject
from cxr_core import demographics, pseudonyms
from cxr_core.rejection import Rejection
from cxr_core.selection import (
    Verdict,
    covid_verdict,
    csv_verdict,
    image_folder_verdict,
    is_missing_patient_id,
    missing_patient_id,
    normalize_view,
    rsna_verdict,
)

RSNA = "rsna"
COVID = "covid"
CSV = "csv"

RSNA_LABELS_FILE = "stage_2_train_labels.csv"
RSNA_CLASS_INFO_FILE = "stage_2_detailed_class_info.csv"
RSNA_IMAGES_DIR = "stage_2_train_images"
RSNA_REQUIRED_COLUMNS = ("patientId", "Target")
RSNA_CLASS_INFO_REQUIRED_COLUMNS = ("patientId", "class")

COVID_METADATA_FILE = "metadata.csv"
COVID_DEFAULT_FOLDER = "images"
COVID_REQUIRED_COLUMNS = ("patientid", "finding", "view", "filename")

CSV_REQUIRED_COLUMNS = ("image_uri", "label", "patient_id")
# How rejections name the --csv file: its own name is the user's choice and may identify someone.
CSV_LISTING = "--csv"
# A CSV row's collection or site, used as its source in place of `csv`.
CSV_SOURCE_COLUMN = "source"

# How rejections name the --image_folder (its files are numbered in the sorted listing of their paths).
IMAGE_FOLDER_LISTING = "--image_folder"
IMAGE_FOLDER_DEFAULT_SOURCE = "image-folder"

# Source names go into image ids, pseudonyms and the split hash, and name the rows of per-source tables.
SOURCE_NAME = re.compile(r"[a-z0-9-]{1,32}")
SOURCE_NAME_RULE = "lowercase letters, digits and dashes, at most 32 characters"


@dataclasses.dataclass(frozen=True)
class ListedRow:
    """What one label-file row lists: an image with its class (`verdict` accepted), or why not.

    `image_key` is empty when the row names no image; its rejection then has no image id.
    `source` is empty unless the row names its own (a CSV's `source` column).
    """

    listing: str
    line: int
    verdict: Verdict
    image_key: str = ""
    image_uri: str = ""
    patient_id: str = ""
    view: str = ""
    source: str = ""
    sex: str = demographics.UNKNOWN
    age_band: str = demographics.UNKNOWN


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """An `--image_folder`: one sub-folder of images per class.

    `classes` maps normalised folder names to classes (`selection.parse_folder_classes`);
    `patient_id_regex` has one group that finds the patient in a file name, or is empty
    when every image is its own patient.
    """

    path: str
    source: str
    classes: dict[str, str]
    patient_id_regex: str = ""


def _join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def _field_count_rejection(listing: str, row: LabelRow, table: LabelFile) -> ListedRow | None:
    if problem := table.field_count_problem(row):
        return ListedRow(listing, row.line, Verdict.reject("label", "wrong_field_count", problem))
    return None


def _rsna_row_rejection(listing: str, row: LabelRow, table: LabelFile, columns: dict[str, int]) -> ListedRow | None:
    """The rejection of a row of either RSNA file without all its fields or a usable patientId."""
    if rejection := _field_count_rejection(listing, row, table):
        return rejection
    if is_missing_patient_id(row.values[columns["patientId"]]):
        return ListedRow(listing, row.line, missing_patient_id("patientId"))
    return None


def _rsna_detailed_classes(class_info: LabelFile, detailed: dict[str, set[str]]) -> Iterator[ListedRow]:
    """Fills patient id → detailed classes; yields the rejections of malformed rows."""
    columns = class_info.column_index()
    for row in class_info.rows:
        if rejection := _rsna_row_rejection(RSNA_CLASS_INFO_FILE, row, class_info, columns):
            yield rejection
            continue
        detailed[row.values[columns["patientId"]]].add(row.values[columns["class"]])


def list_rsna(rsna_dir: str, not_normal_policy: str) -> Iterator[ListedRow]:
    """RSNA labels → one row per patient, however many box rows it has, listed at its first row."""
    labels = read_label_file(_join(rsna_dir, RSNA_LABELS_FILE), RSNA_REQUIRED_COLUMNS)
    class_info_path = _join(rsna_dir, RSNA_CLASS_INFO_FILE)
    detailed = None
    if FileSystems.exists(class_info_path):
        detailed = collections.defaultdict(set)
        yield from _rsna_detailed_classes(read_label_file(class_info_path, RSNA_CLASS_INFO_REQUIRED_COLUMNS),
                                          detailed)
    columns = labels.column_index()
    patients = {}  # patient id → (first line, Target values), in file order
    for row in labels.rows:
        if rejection := _rsna_row_rejection(RSNA_LABELS_FILE, row, labels, columns):
            yield rejection
            continue
        patient_id = row.values[columns["patientId"]]
        patients.setdefault(patient_id, (row.line, set()))[1].add(row.values[columns["Target"]])
    for patient_id, (line, targets) in patients.items():
        image_key = posixpath.join(RSNA_IMAGES_DIR, f"{patient_id}.dcm")
        classes = None if detailed is None else detailed.get(patient_id, set())
        yield ListedRow(RSNA_LABELS_FILE, line, rsna_verdict(targets, classes, not_normal_policy, RSNA_CLASS_INFO_FILE),
                        image_key=image_key, image_uri=_join(rsna_dir, image_key), patient_id=patient_id)


def _covid_field(row: LabelRow, columns: dict[str, int], name: str) -> str:
    """A metadata value by lower-case column name; columns of the other header generation read as empty."""
    return row.values[columns[name]] if name in columns else ""


def list_covid(covid_dir: str, allowed_views: frozenset[str]) -> Iterator[ListedRow]:
    """covid-chestxray-dataset `metadata.csv` (2020 or later header) → one row per image file."""
    table = read_label_file(_join(covid_dir, COVID_METADATA_FILE), COVID_REQUIRED_COLUMNS, case_sensitive=False)
    columns = table.column_index(case_sensitive=False)
    for row in table.rows:
        if rejection := _field_count_rejection(COVID_METADATA_FILE, row, table):
            yield rejection
            continue
        values = {name: _covid_field(row, columns, name)
                  for name in ("patientid", "view", "modality", "finding", "folder", "filename", "sex", "age")}
        if not values["filename"]:
            yield ListedRow(COVID_METADATA_FILE, row.line,
                            Verdict.reject("label", "missing_image", "the row names no image file"))
            continue
        image_key = posixpath.join(values["folder"] or COVID_DEFAULT_FOLDER, values["filename"])
        verdict = covid_verdict(values["patientid"], values["view"], values["modality"], values["finding"],
                                allowed_views)
        yield ListedRow(COVID_METADATA_FILE, row.line, verdict, image_key=image_key,
                        image_uri=_join(covid_dir, image_key), patient_id=values["patientid"],
                        view=normalize_view(values["view"]), sex=demographics.sex_category(values["sex"]),
                        age_band=demographics.age_band(values["age"]))


def list_csv(csv_path: str, allowed_views: frozenset[str]) -> Iterator[ListedRow]:
    """A user's CSV (`image_uri,label,patient_id[,view,source,sex,age]`); relative uris resolve next to it."""
    table = read_label_file(csv_path, CSV_REQUIRED_COLUMNS)
    columns = table.column_index()
    for row in table.rows:
        if rejection := _field_count_rejection(CSV_LISTING, row, table):
            yield rejection
            continue
        image_key, label_text, patient_id = (row.values[columns[name]] for name in CSV_REQUIRED_COLUMNS)
        optional = {name: row.values[columns[name]] if name in columns else ""
                    for name in ("view", CSV_SOURCE_COLUMN, "sex", "age")}
        view = normalize_view(optional["view"])
        yield ListedRow(CSV_LISTING, row.line, csv_verdict(image_key, label_text, patient_id, view, allowed_views),
                        image_key=image_key, image_uri=resolve_listed_uri(image_key, csv_path),
                        patient_id=patient_id, view=view, source=optional[CSV_SOURCE_COLUMN],
                        sex=demographics.sex_category(optional["sex"]),
                        age_band=demographics.age_band(optional["age"]))


def _glob_escape(path: str) -> str:
    """`path` with Beam's glob characters matched literally (FileSystems has no quoting)."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def image_folder_files(folder: str) -> list[str]:
    """`CLASS_FOLDER/FILE` of every file directly in a sub-folder of `folder`, sorted: the folder's listing."""
    [matched] = FileSystems.match([FileSystems.join(_glob_escape(folder), "*", "*")])
    return sorted("/".join(metadata.path.rsplit("/", 2)[-2:]) for metadata in matched.metadata_list)


def patient_id_regex_problem(regex: str) -> str | None:
    """Why `--patient_id_regex` cannot find a patient in a file name, or None."""
    try:
        groups = re.compile(regex).groups
    except re.error as error:
        return f"--patient_id_regex is not a regular expression ({error})"
    if groups != 1:
        return f"--patient_id_regex must have exactly one group, the patient id (e.g. person(\\d+)_), not {groups}"
    return None


def list_image_folder(folder: str, folder_classes: dict[str, str], patient_id_regex: str = "") -> Iterator[ListedRow]:
    """An image folder → one row per file, numbered from 1 in its sorted listing; the sub-folder is the class.

    The patient is what `patient_id_regex`'s group finds in the file name or, without
    one, the image itself.
    """
    pattern = re.compile(patient_id_regex) if patient_id_regex else None
    for line, image_key in enumerate(image_folder_files(folder), start=1):
        class_folder, file_name = image_key.split("/")
        if pattern is None:
            patient_id = image_key
        else:
            match = pattern.search(file_name)
            patient_id = (match.group(1) or "") if match else ""
        yield ListedRow(IMAGE_FOLDER_LISTING, line, image_folder_verdict(class_folder, folder_classes, patient_id),
                        image_key=image_key, image_uri=_join(folder, image_key), patient_id=patient_id)


class _ListSourceFn(beam.DoFn):
    """A source's location → its `SourceImage`s, and its rejections on the REJECTED output."""

    def __init__(self, source: str, patient_key: splitting.PatientKey):
        self._source = source
        self._patient_key = patient_key
        self._key = ""
        self._images = beam.metrics.Metrics.counter("sources", f"{source}_images")
        self._rejected = beam.metrics.Metrics.counter("sources", f"{source}_rejected")

    def setup(self):
        self._key = self._patient_key.load()

    def list_rows(self, location: str) -> Iterator[ListedRow]:
        raise NotImplementedError

    def process(self, location: str) -> Iterator:
        for row in self.list_rows(location):
            source = row.source or self._source
            if row.verdict.accepted:
                self._images.inc()
                yield SourceImage(source=source, image_uri=row.image_uri, image_key=row.image_key,
                                  patient_id=row.patient_id, label=row.verdict.label, view=row.view,
                                  listing=row.listing, line=row.line, sex=row.sex, age_band=row.age_band)
                continue
            image_id = pseudonyms.pseudonymous_image_id(self._key, source, row.image_key) if row.image_key else ""
            yield reject(Rejection(source=source, stage=row.verdict.stage, kind=row.verdict.kind,
                                   reason=row.verdict.reason, image_id=image_id, listing=row.listing, line=row.line),
                         self._rejected)


class ParseRsnaLabelsFn(_ListSourceFn):
    """RSNA folder → one `SourceImage` per patient (`list_rsna`)."""

    def __init__(self, not_normal_policy: str, patient_key: splitting.PatientKey):
        super().__init__(RSNA, patient_key)
        self._not_normal_policy = not_normal_policy

    def list_rows(self, location: str) -> Iterator[ListedRow]:
        return list_rsna(location, self._not_normal_policy)


class ParseCovidMetadataFn(_ListSourceFn):
    """covid-chestxray-dataset folder → X-rays in an allowed view (`list_covid`)."""

    def __init__(self, patient_key: splitting.PatientKey, allowed_views: frozenset[str]):
        super().__init__(COVID, patient_key)
        self._allowed_views = allowed_views

    def list_rows(self, location: str) -> Iterator[ListedRow]:
        return list_covid(location, self._allowed_views)


class ParseLabelCsvFn(_ListSourceFn):
    """A user's CSV → its labelled images (`list_csv`)."""

    def __init__(self, patient_key: splitting.PatientKey, allowed_views: frozenset[str]):
        super().__init__(CSV, patient_key)
        self._allowed_views = allowed_views

    def list_rows(self, location: str) -> Iterator[ListedRow]:
        return list_csv(location, self._allowed_views)


class ParseImageFolderFn(_ListSourceFn):
    """An image folder → its files in class sub-folders (`list_image_folder`)."""

    def __init__(self, folder: ImageFolder, patient_key: splitting.PatientKey):
        super().__init__(folder.source, patient_key)
        self._folder = folder

    def list_rows(self, location: str) -> Iterator[ListedRow]:
        return list_image_folder(location, self._folder.classes, self._folder.patient_id_regex)


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


def source_name_problem(name: str) -> str | None:
    """Why `name` cannot name a source, or None."""
    return None if SOURCE_NAME.fullmatch(name) else f"a source name must be {SOURCE_NAME_RULE}"


def sanitized_source_name(text: str) -> str:
    """A source name made of `text` (an image folder's name): `X-Ray Image DataSet` → `x-ray-image-dataset`."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:32].strip("-") or IMAGE_FOLDER_DEFAULT_SOURCE


def _csv_source_problem(path: str, table: LabelFile) -> str | None:
    """The first row (and how many) whose `source` cannot name a source; an empty one means `csv`."""
    columns = table.column_index()
    if CSV_SOURCE_COLUMN not in columns:
        return None
    bad_lines = [row.line for row in table.rows if table.field_count_problem(row) is None
                 and row.values[columns[CSV_SOURCE_COLUMN]]
                 and source_name_problem(row.values[columns[CSV_SOURCE_COLUMN]])]
    if not bad_lines:
        return None
    others = f" (and {len(bad_lines) - 1} more rows)" if len(bad_lines) > 1 else ""
    return f"{path} line {bad_lines[0]}: the source column must hold {SOURCE_NAME_RULE}{others}"


def _label_file_problem(path: str, required: tuple[str, ...], case_sensitive: bool, optional: bool,
                        table_problem=None) -> str | None:
    try:
        if not FileSystems.exists(path):
            return None if optional else f"{path} does not exist"
        table = read_label_file(path, required, case_sensitive)
    except LabelFileError as error:
        return str(error)
    except Exception as error:  # no access, a storage error: name the file, not a traceback
        return f"{path} cannot be read ({type(error).__name__})"
    return table_problem(path, table) if table_problem else None


def _image_folder_problem(folder: str) -> str | None:
    try:
        [matched] = FileSystems.match([FileSystems.join(_glob_escape(folder), "*", "*")], limits=[1])
    except Exception as error:  # no access, a storage error: name the folder, not a traceback
        return f"{folder} cannot be listed ({type(error).__name__})"
    if matched.metadata_list:
        return None
    return f"{folder} does not exist or holds no file in a sub-folder; give one sub-folder of images per class"


def source_problems(rsna_dir: str | None, covid_dir: str | None, csv_path: str | None,
                    image_folder: str | None = None) -> list[str]:
    """What is wrong with the given sources, checked before the job starts.

    Every label file is read whole: its encoding, its quoting, its required columns
    and, in a CSV, the source names; an image folder must hold files in sub-folders.
    """
    checks = []
    if rsna_dir:
        checks.append((_join(rsna_dir, RSNA_LABELS_FILE), RSNA_REQUIRED_COLUMNS, True, False))
        checks.append((_join(rsna_dir, RSNA_CLASS_INFO_FILE), RSNA_CLASS_INFO_REQUIRED_COLUMNS, True, True))
    if covid_dir:
        checks.append((_join(covid_dir, COVID_METADATA_FILE), COVID_REQUIRED_COLUMNS, False, False))
    if csv_path:
        checks.append((csv_path, CSV_REQUIRED_COLUMNS, True, False, _csv_source_problem))
    problems = [_label_file_problem(*check) for check in checks]
    if image_folder:
        problems.append(_image_folder_problem(image_folder))
    return [problem for problem in problems if problem]
