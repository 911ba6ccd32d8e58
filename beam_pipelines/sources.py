"""Readers for the three input layouts, as they are published.

Each source is a composite transform that turns a directory or CSV (local or
`gs://`, through Beam's FileSystems) into `SourceImage` elements on its main
output and `Rejection`s for label rows that cannot be used on the `rejected` tag.
Label files are small (tens of thousands of rows), so each is parsed by one DoFn;
the expensive work, reading and decoding the images, fans out after a Reshuffle.
"""

import collections
import csv
import functools
import io
import posixpath
import re
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipelines.records import Rejection, SourceImage

REJECTED = "rejected"

RSNA = "rsna"
COVID = "covid"
CSV = "csv"

RSNA_LABELS_FILE = "stage_2_train_labels.csv"
RSNA_CLASS_INFO_FILE = "stage_2_detailed_class_info.csv"
RSNA_IMAGES_DIR = "stage_2_train_images"
RSNA_NORMAL = "Normal"
RSNA_NOT_NORMAL = "No Lung Opacity / Not Normal"
RSNA_OPACITY = "Lung Opacity"
NOT_NORMAL_POLICIES = ("exclude", "pneumonia")

COVID_METADATA_FILE = "metadata.csv"
COVID_DEFAULT_FOLDER = "images"
FRONTAL_VIEWS = frozenset({"PA", "AP", "AP SUPINE", "AP SEMI ERECT", "AP ERECT"})
COVID_UNLABELLED_FINDINGS = frozenset({"", "todo", "unknown"})
# Findings that are not an infection: neither "pneumonia" in this project's sense nor normal.
NON_INFECTIVE_FINDING = re.compile(r"\b(ards|lipoid)\b", re.IGNORECASE)
INFECTIVE_FINDING = re.compile(
    r"pneumonia|bacterial|viral|fungal|sars|mers|influenza|h1n1|varicella|herpes|"
    r"streptococcus|staphylococcus|klebsiella|e\.?\s?coli|legionella|chlamydophila|"
    r"mycoplasma|pneumocystis|aspergillosis|nocardia|tuberculosis|candida|histoplasmosis",
    re.IGNORECASE)

RSNA_REQUIRED_COLUMNS = ("patientId", "Target")
COVID_REQUIRED_COLUMNS = ("patientid", "finding", "view", "filename")
CSV_REQUIRED_COLUMNS = ("image_uri", "label", "patient_id")
CLASS_ALIASES = {"normal": "normal", "pneumonia": "pneumonia", "covid19": "covid19",
                 "covid-19": "covid19", "covid": "covid19"}


def read_csv_rows(path: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header (with surrounding spaces stripped) and rows of a CSV on any Beam filesystem."""
    with FileSystems.open(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.reader(text)
        header = [name.strip() for name in next(reader, [])]
        rows = [dict(zip(header, (value.strip() for value in row))) for row in reader if any(row)]
    return header, rows


def _join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def resolve_listed_uri(uri: str, csv_path: str) -> str:
    """A uri from a CSV column; relative ones resolve next to the CSV."""
    if "://" in uri or posixpath.isabs(uri):
        return uri
    return _join(posixpath.dirname(csv_path), uri)


class ParseRsnaLabelsFn(beam.DoFn):
    """RSNA labels → one `SourceImage` per patient, however many box rows it has."""

    def __init__(self, not_normal_policy: str):
        self._not_normal_policy = not_normal_policy
        self._patients = beam.metrics.Metrics.counter("sources", "rsna_patients")
        self._rejected = beam.metrics.Metrics.counter("sources", "rsna_rejected")

    def process(self, rsna_dir: str) -> Iterator:
        _, label_rows = read_csv_rows(_join(rsna_dir, RSNA_LABELS_FILE))
        class_info_path = _join(rsna_dir, RSNA_CLASS_INFO_FILE)
        detailed = {}
        if FileSystems.exists(class_info_path):
            detailed = {row["patientId"]: row["class"] for row in read_csv_rows(class_info_path)[1]}
        targets = collections.defaultdict(set)
        for row in label_rows:
            targets[row["patientId"]].add(row["Target"])
        for patient_id in sorted(targets):
            image_key = posixpath.join(RSNA_IMAGES_DIR, f"{patient_id}.dcm")
            uri = _join(rsna_dir, image_key)
            outcome = self._classify(targets[patient_id], detailed.get(patient_id))
            if isinstance(outcome, tuple):
                self._rejected.inc()
                stage, kind, reason = outcome
                yield beam.pvalue.TaggedOutput(REJECTED, Rejection(uri, RSNA, stage, kind, reason))
            else:
                self._patients.inc()
                yield SourceImage(source=RSNA, image_uri=uri, image_key=image_key, patient_id=patient_id,
                                  label=outcome)

    def _classify(self, targets: set[str], detailed_class: str | None) -> str | tuple[str, str, str]:
        """The class name, or (stage, kind, reason) for a patient that is not used."""
        if len(targets) != 1 or not targets <= {"0", "1"}:
            return ("label", "invalid_target", f"Target values {sorted(targets)} are not a single 0 or 1")
        if targets == {"1"}:
            return "pneumonia"
        if detailed_class is None or detailed_class == RSNA_NORMAL:
            return "normal"
        if detailed_class == RSNA_NOT_NORMAL:
            if self._not_normal_policy == "pneumonia":
                return "pneumonia"
            return ("select", "excluded_not_normal",
                    "'No Lung Opacity / Not Normal' is excluded (--rsna_not_normal=pneumonia includes it)")
        return ("label", "inconsistent_class",
                f"Target=0 but detailed class is {detailed_class!r}")


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


def _covid_field(row: dict[str, str], columns: dict[str, str], name: str) -> str:
    """A metadata value by lower-case column name; absent columns read as empty."""
    return row.get(columns.get(name, ""), "") or ""


class ParseCovidMetadataFn(beam.DoFn):
    """covid-chestxray-dataset `metadata.csv` (2020 or later header) → frontal X-rays."""

    def __init__(self):
        self._images = beam.metrics.Metrics.counter("sources", "covid_images")
        self._rejected = beam.metrics.Metrics.counter("sources", "covid_rejected")

    def process(self, covid_dir: str) -> Iterator:
        header, rows = read_csv_rows(_join(covid_dir, COVID_METADATA_FILE))
        columns = {name.lower(): name for name in header}
        missing = set(COVID_REQUIRED_COLUMNS) - columns.keys()
        if missing:
            raise ValueError(f"{covid_dir}/{COVID_METADATA_FILE} lacks columns {sorted(missing)}")
        for row in rows:
            field = functools.partial(_covid_field, row, columns)
            image_key = posixpath.join(field("folder") or COVID_DEFAULT_FOLDER, field("filename"))
            uri = _join(covid_dir, image_key)
            outcome = self._classify(field("view"), field("modality"), field("finding"))
            if isinstance(outcome, tuple):
                self._rejected.inc()
                stage, kind, reason = outcome
                yield beam.pvalue.TaggedOutput(REJECTED, Rejection(uri, COVID, stage, kind, reason))
                continue
            self._images.inc()
            yield SourceImage(source=COVID, image_uri=uri, image_key=image_key, patient_id=field("patientid"),
                              label=outcome, view=field("view").upper())

    @staticmethod
    def _classify(view: str, modality: str, finding: str) -> str | tuple[str, str, str]:
        if modality and modality.strip().lower() != "x-ray":
            return ("select", "not_xray", f"modality {modality!r} is not X-ray")
        if view.strip().upper() not in FRONTAL_VIEWS:
            return ("select", "not_frontal", f"view {view!r} is not a frontal X-ray view")
        outcome = covid_finding_class(finding)
        if isinstance(outcome, tuple):
            stage = "select" if outcome[0] == "unlabelled_finding" else "label"
            return (stage, *outcome)
        return outcome


class ParseLabelCsvFn(beam.DoFn):
    """A user's CSV (`image_uri,label,patient_id[,view]`); relative uris resolve next to it."""

    def __init__(self):
        self._images = beam.metrics.Metrics.counter("sources", "csv_images")
        self._rejected = beam.metrics.Metrics.counter("sources", "csv_rejected")

    def process(self, csv_path: str) -> Iterator:
        header, rows = read_csv_rows(csv_path)
        missing = set(CSV_REQUIRED_COLUMNS) - set(header)
        if missing:
            raise ValueError(f"{csv_path} lacks columns {sorted(missing)}")
        for row in rows:
            image_key = row["image_uri"]
            uri = resolve_listed_uri(image_key, csv_path)
            label = CLASS_ALIASES.get(row["label"].lower())
            if label is None or not row["patient_id"]:
                self._rejected.inc()
                kind, reason = (("unknown_label", f"label {row['label']!r} is not one of normal, "
                                 "pneumonia, covid19") if label is None
                                else ("missing_patient_id", "patient_id is empty"))
                yield beam.pvalue.TaggedOutput(REJECTED, Rejection(uri, CSV, "label", kind, reason))
                continue
            self._images.inc()
            yield SourceImage(source=CSV, image_uri=uri, image_key=image_key, patient_id=row["patient_id"],
                              label=label, view=row.get("view", "").upper())


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


def _header_problem(path: str, required: tuple[str, ...], case_sensitive: bool = True) -> str | None:
    if not FileSystems.exists(path):
        return f"{path} does not exist"
    with FileSystems.open(path) as raw:
        first_line = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="").readline()
    header = {name.strip() if case_sensitive else name.strip().lower()
              for name in next(csv.reader([first_line]), [])}
    missing = [name for name in required if name not in header]
    return f"{path} lacks columns {missing}" if missing else None


def source_problems(rsna_dir: str | None, covid_dir: str | None, csv_path: str | None) -> list[str]:
    """What is wrong with the given sources' label files, checked before the job starts."""
    checks = []
    if rsna_dir:
        checks.append((_join(rsna_dir, RSNA_LABELS_FILE), RSNA_REQUIRED_COLUMNS, True))
    if covid_dir:
        checks.append((_join(covid_dir, COVID_METADATA_FILE), COVID_REQUIRED_COLUMNS, False))
    if csv_path:
        checks.append((csv_path, CSV_REQUIRED_COLUMNS, True))
    problems = (_header_problem(path, required, case_sensitive) for path, required, case_sensitive in checks)
    return [problem for problem in problems if problem]
