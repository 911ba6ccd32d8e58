"""Writes synthetic RSNA and covid-chestxray-dataset sources in their published layouts.

There is no real X-ray data where this project is built and tested, so the demo, the
benchmark and the tests read sources written by this job, through the same readers as
the real data. It is a Beam pipeline, so 30,000 1024² DICOMs are rendered in parallel:

    python -m synthetic --output_dir /tmp/cxr --num_rsna 200 --num_covid 100

writes, under `--output_dir`:

* `rsna/stage_2_train_labels.csv`, `rsna/stage_2_detailed_class_info.csv` and
  `rsna/stage_2_train_images/<patientId>.dcm`, as in the RSNA Pneumonia Detection
  Challenge (stage 2): one label row per box, so pneumonia patients have 1 to 4 rows;
  mostly 8-bit JPEG Baseline DICOMs, about 10% 12/16-bit or MONOCHROME1 ones;
* `covid/metadata.csv` and `covid/images/<filename>`, as in ieee8023's
  covid-chestxray-dataset (`--covid_header 2020` writes its early-2020 header): several
  PNG/JPEG images of varied sizes and modes per patient, with lateral views, CT rows and
  `todo` findings that a reader must drop.

Pixels come from `phantom`; every file, UID and CSV row derives from `--seed`, so the
same flags give byte-identical output whatever the runner or number of workers (with
the same numpy and Pillow builds: their float kernels may differ between CPUs).
"""

import argparse
import csv
import dataclasses
import io
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult
from PIL import Image

from beam_pipelines import sources
from beam_pipelines.options import build_pipeline_options
from synthetic import dicom_writer, phantom

METRICS_NAMESPACE: Final = "synthesize"
MIN_IMAGE_SIZE: Final = 32
MAX_IMAGE_SIZE: Final = 4096
_PROGRESS_EVERY: Final = 200

RSNA_DIR: Final = "rsna"
RSNA_LABELS_CSV: Final = sources.RSNA_LABELS_FILE
RSNA_CLASS_INFO_CSV: Final = sources.RSNA_CLASS_INFO_FILE
RSNA_IMAGES_DIR: Final = sources.RSNA_IMAGES_DIR
RSNA_LABELS_HEADER: Final = ("patientId", "x", "y", "width", "height", "Target")
RSNA_CLASS_INFO_HEADER: Final = ("patientId", "class")

COVID_DIR: Final = "covid"
COVID_METADATA_CSV: Final = sources.COVID_METADATA_FILE
COVID_IMAGES_DIR: Final = sources.COVID_DEFAULT_FOLDER
COVID_HEADERS: Final[dict[str, tuple[str, ...]]] = {
    "later": (
        "patientid", "offset", "sex", "age", "finding", "RT_PCR_positive", "survival", "intubated",
        "intubation_present", "went_icu", "in_icu", "needed_supplemental_O2", "extubated", "temperature",
        "pO2_saturation", "leukocyte_count", "neutrophil_count", "lymphocyte_count", "view", "modality",
        "date", "location", "folder", "filename", "doi", "url", "license", "clinical_notes", "other_notes",
        "Unnamed: 29"),
    "2020": (
        "Patientid", "offset", "sex", "age", "finding", "survival", "view", "date", "location", "filename",
        "doi", " url", "license", "notes"),
}
# Early-2020 columns that the later header renamed.
_COVID_2020_RENAMED: Final = {"Patientid": "patientid", " url": "url", "notes": "clinical_notes"}

# (value, class to render, weight) tables, roughly the published mixes.
_RSNA_CLASSES: Final = (
    ("Lung Opacity", "pneumonia", 0.3),
    ("Normal", "normal", 0.3),
    ("No Lung Opacity / Not Normal", "not_normal", 0.4),
)
_RSNA_BOX_COUNTS: Final = ((1, 0.45), (2, 0.5), (3, 0.04), (4, 0.01))
# DICOM encodings as (transfer syntax, bits stored, photometric, rescale, window, SOP
# class): RSNA's own, then the variants that every tenth patient gets in turn.
_RSNA_ENCODING: Final = ("jpeg_baseline", 8, "MONOCHROME2", None, False, "secondary_capture")
_RSNA_VARIANT_ENCODINGS: Final = (
    ("explicit_le", 12, "MONOCHROME2", (1.0, -1024.0), True, "cr"),
    ("explicit_le", 16, "MONOCHROME2", None, False, "cr"),
    ("explicit_le", 12, "MONOCHROME1", None, True, "cr"),
)
_RSNA_VARIANT_EVERY: Final = 10
_COVID_FINDINGS: Final = {
    "later": (
        ("Pneumonia/Viral/COVID-19", "covid19", 0.65),
        ("Pneumonia/Viral/SARS", "pneumonia", 0.05),
        ("Pneumonia/Bacterial/Streptococcus", "pneumonia", 0.06),
        ("Pneumonia/Fungal/Pneumocystis", "pneumonia", 0.05),
        ("Pneumonia/Bacterial/Klebsiella", "pneumonia", 0.04),
        ("No Finding", "normal", 0.11),
        ("todo", "normal", 0.04),
    ),
    "2020": (
        ("COVID-19", "covid19", 0.65),
        ("SARS", "pneumonia", 0.06),
        ("Streptococcus", "pneumonia", 0.07),
        ("Pneumocystis", "pneumonia", 0.05),
        ("ARDS", "pneumonia", 0.05),
        ("No Finding", "normal", 0.12),
    ),
}
_COVID_VIEWS: Final = {
    "later": (("PA", 0.45), ("AP", 0.17), ("AP Supine", 0.13), ("AP semi erect", 0.05), ("L", 0.15), ("Axial", 0.05)),
    "2020": (("PA", 0.5), ("AP", 0.2), ("AP Supine", 0.15), ("L", 0.15)),
}
# (Pillow format, Pillow mode, file extension, weight)
_COVID_IMAGE_FORMATS: Final = (
    ("PNG", "L", ".png", 0.3),
    ("PNG", "RGB", ".png", 0.15),
    ("PNG", "I;16", ".png", 0.1),
    ("JPEG", "L", ".jpg", 0.15),
    ("JPEG", "RGB", ".jpg", 0.2),
    ("JPEG", "RGB", ".jpeg", 0.1),
)
_COVID_LOCATIONS: Final = ("Wuhan, China", "Milan, Italy", "Madrid, Spain", "Seoul, South Korea",
                           "Toronto, Canada", "Sydney, Australia", "Tehran, Iran", "New York, USA", "")
_COVID_LICENSES: Final = ("CC BY-NC-SA 4.0", "CC BY 4.0", "CC BY-NC-ND 4.0", "Apache 2.0", "")
_MONTHS: Final = ("January", "February", "March", "April", "May", "June")

# Random streams: one per (source, patient), plus one that splits covid images into patients.
_RSNA_STREAM: Final = 0
_COVID_STREAM: Final = 1
_COVID_PATIENT_SIZES_STREAM: Final = 2


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
    """What every worker needs to render any patient."""

    output_dir: str
    image_size: int
    seed: int
    covid_header: str = "later"

    def __post_init__(self):
        if self.covid_header not in COVID_HEADERS:
            raise ValueError(f"unknown covid header {self.covid_header!r}; expected one of {sorted(COVID_HEADERS)}")
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {self.image_size}")


class PatientWork(NamedTuple):
    """One unit of work: all the files of one patient of one source."""

    source: str
    index: int
    num_images: int


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One image file, its path relative to the output dir, and the class drawn in it."""

    relative_path: str
    data: bytes
    label: str


@dataclasses.dataclass(frozen=True)
class PatientOutput:
    """A patient's files and CSV rows; each row is (csv path, (sort key, cells))."""

    files: list[SourceFile]
    csv_rows: list[tuple[str, tuple[Any, tuple[str, ...]]]]


def plan_patients(num_rsna: int, num_covid: int, seed: int) -> list[PatientWork]:
    """One work item per patient: RSNA has one image per patient; the covid images are
    split into patients of 1 to 4 images, `num_covid` images in all."""
    work = [PatientWork(RSNA_DIR, index, 1) for index in range(num_rsna)]
    rng = np.random.default_rng((seed, _COVID_PATIENT_SIZES_STREAM))
    remaining, index = num_covid, 0
    while remaining > 0:
        num_images = min(int(rng.integers(1, 5)), remaining)
        work.append(PatientWork(COVID_DIR, index, num_images))
        remaining -= num_images
        index += 1
    return work


def synthesize_patient(config: SynthesisConfig, work: PatientWork) -> PatientOutput:
    """Renders one patient's files and rows; a pure function of its arguments."""
    if work.source == RSNA_DIR:
        return _rsna_patient(config, work.index)
    if work.source == COVID_DIR:
        return _covid_patient(config, work.index, work.num_images)
    raise ValueError(f"unknown source {work.source!r}; expected {RSNA_DIR!r} or {COVID_DIR!r}")


def _choose(rng: np.random.Generator, table: Sequence[tuple]) -> tuple:
    """Picks a row of a table whose last column is a weight."""
    weights = np.array([row[-1] for row in table], dtype=np.float64)
    return table[rng.choice(len(table), p=weights / weights.sum())]


def _render_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**63 - 1))


def _rsna_encoding(index: int) -> tuple:
    """RSNA's JPEG Baseline for 9 patients in 10, a variant for the tenth."""
    if index % _RSNA_VARIANT_EVERY != _RSNA_VARIANT_EVERY - 1:
        return _RSNA_ENCODING
    return _RSNA_VARIANT_ENCODINGS[(index // _RSNA_VARIANT_EVERY) % len(_RSNA_VARIANT_ENCODINGS)]


def _rsna_patient(config: SynthesisConfig, index: int) -> PatientOutput:
    rng = np.random.default_rng((config.seed, _RSNA_STREAM, index))
    patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    class_name, label, _ = _choose(rng, _RSNA_CLASSES)
    num_boxes = _choose(rng, _RSNA_BOX_COUNTS)[0] if label == "pneumonia" else 1
    sex = "M" if rng.random() < 0.57 else "F"
    age = int(np.clip(rng.normal(47, 16), 1, 92))
    view = "PA" if rng.random() < 0.55 else "AP"
    syntax, bits_stored, photometric, rescale, window, sop_class = _rsna_encoding(index)
    radiograph = phantom.render_radiograph(_render_seed(rng), label, config.image_size, num_opacities=num_boxes)

    data = dicom_writer.dicom_bytes(
        radiograph.pixels, patient_id=patient_id, view=view, sex=sex, age=age, transfer_syntax=syntax,
        bits_stored=bits_stored, photometric=photometric, rescale=rescale, window=window, sop_class=sop_class,
        uid_seed=str(config.seed))
    if label == "pneumonia":
        if not radiograph.opacity_boxes:
            raise RuntimeError(f"pneumonia phantom for RSNA patient {index} has no opacity box")
        label_rows = [(patient_id, *(str(value) for value in box), "1") for box in radiograph.opacity_boxes]
    else:
        label_rows = [(patient_id, "", "", "", "", "0")]
    labels_csv = f"{RSNA_DIR}/{RSNA_LABELS_CSV}"
    class_csv = f"{RSNA_DIR}/{RSNA_CLASS_INFO_CSV}"
    rows = [(labels_csv, ((patient_id, n), row)) for n, row in enumerate(label_rows)]
    rows += [(class_csv, ((patient_id, n), (patient_id, class_name))) for n in range(len(label_rows))]
    image = SourceFile(f"{RSNA_DIR}/{RSNA_IMAGES_DIR}/{patient_id}.dcm", data, label)
    return PatientOutput(files=[image], csv_rows=rows)


def _covid_patient(config: SynthesisConfig, index: int, num_images: int) -> PatientOutput:
    rng = np.random.default_rng((config.seed, _COVID_STREAM, index))
    header = config.covid_header
    patient_id = str(index + 1)
    finding, label, _ = _choose(rng, _COVID_FINDINGS[header])
    patient = _covid_patient_columns(rng, patient_id, finding)
    files, rows = [], []
    offset = int(rng.integers(0, 8))
    for image_index in range(num_images):
        view = _choose(rng, _COVID_VIEWS[header])[0]
        image_format, mode, extension, _ = _choose(rng, _COVID_IMAGE_FORMATS)
        slug = finding.rsplit("/", 1)[-1].lower().replace(" ", "-")
        filename = f"{slug}-{patient_id}-{image_index + 1}-{view.replace(' ', '-')}{extension}"
        data = _covid_image(rng, label, config.image_size, image_format, mode)
        files.append(SourceFile(f"{COVID_DIR}/{COVID_IMAGES_DIR}/{filename}", data, label))

        columns = dict(patient, offset=str(offset) if rng.random() < 0.8 else "", view=view,
                       modality="CT" if view == "Axial" else "X-ray", filename=filename)
        cells = tuple(columns[_COVID_2020_RENAMED.get(name, name)] for name in COVID_HEADERS[header])
        rows.append((f"{COVID_DIR}/{COVID_METADATA_CSV}", ((index, image_index), cells)))
        offset += int(rng.integers(1, 6))
    return PatientOutput(files=files, csv_rows=rows)


def _covid_patient_columns(rng: np.random.Generator, patient_id: str, finding: str) -> dict[str, str]:
    """Per-patient metadata, with blanks where the dataset often has them."""

    def maybe(value: str, present: float = 0.7) -> str:
        return value if rng.random() < present else ""

    def yes_no() -> str:
        return maybe("Y" if rng.random() < 0.4 else "N", present=0.5)

    age = int(rng.integers(18, 90))
    sex = "M" if rng.random() < 0.6 else "F"
    temperature = f"{rng.uniform(36.5, 40.0):.1f}"
    day = f"{_MONTHS[rng.integers(0, len(_MONTHS))]} {rng.integers(1, 29)}, 2020"
    return {
        "patientid": patient_id,
        "sex": maybe(sex, 0.9),
        "age": maybe(str(age), 0.85),
        "finding": finding,
        "RT_PCR_positive": maybe("Y" if "COVID" in finding else "Unclear", 0.6),
        "survival": yes_no(),
        "intubated": yes_no(),
        "intubation_present": yes_no(),
        "went_icu": yes_no(),
        "in_icu": yes_no(),
        "needed_supplemental_O2": yes_no(),
        "extubated": yes_no(),
        "temperature": maybe(temperature, 0.3),
        "pO2_saturation": maybe(str(int(rng.integers(75, 100))), 0.3),
        "leukocyte_count": maybe(f"{rng.uniform(2.0, 15.0):.1f}", 0.2),
        "neutrophil_count": maybe(f"{rng.uniform(1.0, 12.0):.1f}", 0.2),
        "lymphocyte_count": maybe(f"{rng.uniform(0.2, 3.0):.1f}", 0.2),
        "date": day if rng.random() < 0.6 else maybe("2020", 0.5),
        "location": _COVID_LOCATIONS[rng.integers(0, len(_COVID_LOCATIONS))],
        "folder": COVID_IMAGES_DIR,
        "doi": maybe(f"10.{1000 + int(rng.integers(0, 9000))}/synthetic.{patient_id}"),
        "url": f"https://example.org/cases/{patient_id}",
        "license": _COVID_LICENSES[rng.integers(0, len(_COVID_LICENSES))],
        "clinical_notes": maybe(f'{sex}, {age} years old, admitted with "fever, cough", day {rng.integers(1, 10)}'),
        "other_notes": "",
        "Unnamed: 29": "",
    }


def _covid_image(rng: np.random.Generator, label: str, image_size: int, image_format: str, mode: str) -> bytes:
    """A PNG or JPEG of a non-square size between 0.6 and 1.6 times `image_size`.

    Like many figures taken from papers, the radiograph is letterboxed: a square chest
    on a black or white background filling the rest of the figure. Lateral views and
    CT rows get a frontal chest image too: readers drop them by their metadata, never
    by their pixels.
    """
    height = int(image_size * rng.uniform(0.6, 1.6))
    width = int(np.clip(height * rng.uniform(0.8, 1.25), 0.6 * image_size, 1.6 * image_size))
    side = min(height, width)
    chest = phantom.render_chest(_render_seed(rng), label, side)
    background = np.iinfo(chest.dtype).max if rng.random() < 0.5 else 0
    pixels = np.full((height, width), background, dtype=chest.dtype)
    top, left = (height - side) // 2, (width - side) // 2
    pixels[top:top + side, left:left + side] = chest
    if mode == "I;16":
        image = Image.fromarray(pixels)
    else:
        gray = (pixels >> 8).astype(np.uint8)
        if mode == "RGB":
            tint = rng.uniform(0.94, 1.0, size=3)
            gray = np.clip(gray[:, :, np.newaxis] * tint, 0, 255).astype(np.uint8)
        image = Image.fromarray(gray)
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.save(buffer, format="JPEG", quality=int(rng.integers(75, 96)))
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


class WriteSourceFilesFn(beam.DoFn):
    """Renders one patient, writes their image files, and emits their CSV rows."""

    def __init__(self, config: SynthesisConfig):
        self._config = config
        self._files_written = {
            RSNA_DIR: Metrics.counter(METRICS_NAMESPACE, "rsna_dicoms_written"),
            COVID_DIR: Metrics.counter(METRICS_NAMESPACE, "covid_images_written"),
        }
        self._bytes_written = Metrics.counter(METRICS_NAMESPACE, "bytes_written")
        self._patients = Metrics.counter(METRICS_NAMESPACE, "patients")
        self._patients_by_this_worker = 0

    def process(self, work: PatientWork) -> Iterator[tuple[str, tuple[Any, tuple[str, ...]]]]:
        output = synthesize_patient(self._config, work)
        for source_file in output.files:
            path = FileSystems.join(self._config.output_dir, source_file.relative_path)
            with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                handle.write(source_file.data)
            self._files_written[work.source].inc()
            self._bytes_written.inc(len(source_file.data))
            Metrics.counter(METRICS_NAMESPACE, f"{work.source}_{source_file.label}").inc()
        self._patients.inc()
        self._patients_by_this_worker += 1
        if self._patients_by_this_worker % _PROGRESS_EVERY == 0:
            logging.info("this worker has written the files of %d patients", self._patients_by_this_worker)
        yield from output.csv_rows


class WriteCsvFiles(beam.PTransform):
    """Writes each CSV from its (csv path, (sort key, cells)) rows: header, then rows in
    sort-key order, so the file does not depend on which worker finished first."""

    def __init__(self, output_dir: str, headers: dict[str, Sequence[str]]):
        super().__init__()
        self._output_dir = output_dir
        self._headers = headers

    def expand(self, keyed_rows: beam.PCollection) -> beam.PCollection:
        return (keyed_rows
                | "GroupByCsv" >> beam.GroupByKey()
                | "WriteCsv" >> beam.Map(_write_csv, self._output_dir, self._headers))


def _write_csv(grouped_rows: tuple[str, Iterable[tuple[Any, tuple[str, ...]]]], output_dir: str,
               headers: dict[str, Sequence[str]]) -> str:
    relative_path, rows = grouped_rows
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(headers[relative_path])
    writer.writerows(cells for _, cells in sorted(rows, key=lambda row: row[0]))
    path = FileSystems.join(output_dir, relative_path)
    with FileSystems.create(path, mime_type="text/csv", compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(text.getvalue().encode("utf-8"))
    logging.info("wrote %s", path)
    return path


class SynthesizeSources(beam.PTransform):
    """Renders and writes every patient's files in parallel, then the CSVs."""

    def __init__(self, config: SynthesisConfig, work: list[PatientWork]):
        super().__init__()
        self._config = config
        self._work = work

    def expand(self, pipeline: beam.pvalue.PBegin) -> beam.PCollection:
        headers = {
            f"{RSNA_DIR}/{RSNA_LABELS_CSV}": RSNA_LABELS_HEADER,
            f"{RSNA_DIR}/{RSNA_CLASS_INFO_CSV}": RSNA_CLASS_INFO_HEADER,
            f"{COVID_DIR}/{COVID_METADATA_CSV}": COVID_HEADERS[self._config.covid_header],
        }
        return (pipeline
                | "CreatePatients" >> beam.Create(self._work)
                | "Reshuffle" >> beam.Reshuffle()
                | "RenderAndWriteFiles" >> beam.ParDo(WriteSourceFilesFn(self._config))
                | "WriteCsvs" >> WriteCsvFiles(self._config.output_dir, headers))


def _parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description="Writes synthetic RSNA and covid-chestxray-dataset sources.")
    parser.add_argument("--output_dir", required=True, help="Local folder or gs:// prefix to write under.")
    parser.add_argument("--num_rsna", type=int, default=200, help="RSNA patients (one DICOM each).")
    parser.add_argument("--num_covid", type=int, default=100, help="covid-chestxray-dataset images.")
    parser.add_argument("--image_size", type=int, default=1024, help="RSNA image side; covid sides vary around it.")
    parser.add_argument("--seed", type=int, default=0, help="Everything written derives from it.")
    parser.add_argument("--covid_header", choices=sorted(COVID_HEADERS), default="later",
                        help="metadata.csv header generation: 'later' (with modality, folder) or early '2020'.")
    known, pipeline_args = parser.parse_known_args(argv)
    if known.num_rsna < 0 or known.num_covid < 0:
        parser.error(f"--num_rsna and --num_covid must be >= 0, got {known.num_rsna} and {known.num_covid}")
    if known.num_rsna + known.num_covid == 0:
        parser.error("nothing to write: --num_rsna and --num_covid are both 0")
    if not MIN_IMAGE_SIZE <= known.image_size <= MAX_IMAGE_SIZE:
        parser.error(f"--image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {known.image_size}")
    if known.seed < 0:
        parser.error(f"--seed must be >= 0, got {known.seed}")
    return known, pipeline_args


def _log_summary(result: PipelineResult, output_dir: str) -> None:
    counters: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + value
    logging.info("wrote %d RSNA DICOMs and %d covid images (%.1f MB, %d patients) under %s",
                 counters.get("rsna_dicoms_written", 0), counters.get("covid_images_written", 0),
                 counters.get("bytes_written", 0) / 1e6, counters.get("patients", 0), output_dir)


def run(argv: Sequence[str] | None = None) -> PipelineResult:
    """Parses flags, runs the pipeline to completion and logs what it wrote."""
    known, pipeline_args = _parse_args(argv)
    config = SynthesisConfig(known.output_dir, known.image_size, known.seed, known.covid_header)
    work = plan_patients(known.num_rsna, known.num_covid, known.seed)
    logging.info("synthesizing %d RSNA patients and %d covid images (%d patients) at %d px into %s",
                 known.num_rsna, known.num_covid, len(work) - known.num_rsna, known.image_size, known.output_dir)
    pipeline = beam.Pipeline(options=build_pipeline_options(pipeline_args))
    _ = pipeline | "Synthesize" >> SynthesizeSources(config, work)
    result = pipeline.run()
    result.wait_until_finish()
    _log_summary(result, known.output_dir)
    return result

