"""Tests of the synthetic sources: layouts as published, decodable files, determinism,
and a class signal that lives in the lungs and not in global brightness."""

import csv
import io
import os
import pathlib
import uuid

import apache_beam as beam
import numpy as np
import pydicom
import pytest
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image
from pydicom import uid

from synthetic import dicom_writer, phantom
from synthetic import pipeline as synthesize

IMAGE_SIZE = 64
NUM_RSNA = 30
NUM_COVID = 14
SEED = 5
RSNA_CLASSES = {"Lung Opacity": "1", "Normal": "0", "No Lung Opacity / Not Normal": "0"}
LATER_FINDINGS = {"Pneumonia/Viral/COVID-19", "Pneumonia/Viral/SARS", "Pneumonia/Bacterial/Streptococcus",
                  "Pneumonia/Fungal/Pneumocystis", "Pneumonia/Bacterial/Klebsiella", "No Finding", "todo"}


def _synthesize(output_dir: pathlib.Path, *extra_args: str, num_rsna: int = NUM_RSNA,
                num_covid: int = NUM_COVID, seed: int = SEED):
    return synthesize.run([
        "--output_dir", str(output_dir), "--num_rsna", str(num_rsna), "--num_covid", str(num_covid),
        "--image_size", str(IMAGE_SIZE), "--seed", str(seed), *extra_args])


def _read_csv(path: pathlib.Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _all_files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> pathlib.Path:
    output_dir = tmp_path_factory.mktemp("synthetic")
    _synthesize(output_dir)
    return output_dir


# --- RSNA layout -------------------------------------------------------------------------

def test_rsna_label_csvs_have_the_published_headers_and_one_row_per_box(synthetic_dir):
    header, labels = _read_csv(synthetic_dir / "rsna" / "stage_2_train_labels.csv")
    class_header, classes = _read_csv(synthetic_dir / "rsna" / "stage_2_detailed_class_info.csv")

    assert header == ["patientId", "x", "y", "width", "height", "Target"]
    assert class_header == ["patientId", "class"]
    assert len(classes) == len(labels), "class info has one row per label row, duplicates included"
    patients = {row["patientId"] for row in labels}
    assert len(patients) == NUM_RSNA
    for patient_id in patients:
        assert str(uuid.UUID(patient_id)) == patient_id
    for label_row, class_row in zip(labels, classes):
        assert label_row["patientId"] == class_row["patientId"]
        assert RSNA_CLASSES[class_row["class"]] == label_row["Target"]
        box = [label_row[key] for key in ("x", "y", "width", "height")]
        if label_row["Target"] == "1":
            x, y, width, height = map(float, box)
            assert 0 <= x and 0 <= y and width > 0 and height > 0
            assert x + width <= IMAGE_SIZE + 1 and y + height <= IMAGE_SIZE + 1
        else:
            assert box == ["", "", "", ""]
    assert labels == sorted(labels, key=lambda row: row["patientId"])


def test_rsna_pneumonia_patients_can_have_several_boxes_and_others_exactly_one_row(synthetic_dir):
    _, labels = _read_csv(synthetic_dir / "rsna" / "stage_2_train_labels.csv")
    rows_per_patient: dict[tuple[str, str], int] = {}
    for row in labels:
        key = (row["patientId"], row["Target"])
        rows_per_patient[key] = rows_per_patient.get(key, 0) + 1

    positive = [count for (_, target), count in rows_per_patient.items() if target == "1"]
    negative = [count for (_, target), count in rows_per_patient.items() if target == "0"]
    assert positive and negative
    assert max(positive) >= 2 and all(1 <= count <= 4 for count in positive)
    assert set(negative) == {1}
    assert len(rows_per_patient) == NUM_RSNA, "a patient is either positive or negative, never both"


def test_rsna_class_mix_has_all_three_classes(synthetic_dir):
    _, classes = _read_csv(synthetic_dir / "rsna" / "stage_2_detailed_class_info.csv")
    per_patient = {row["patientId"]: row["class"] for row in classes}
    assert set(per_patient.values()) == set(RSNA_CLASSES)


def test_rsna_dicoms_decode_and_carry_rsna_like_headers(synthetic_dir):
    _, labels = _read_csv(synthetic_dir / "rsna" / "stage_2_train_labels.csv")
    image_dir = synthetic_dir / "rsna" / "stage_2_train_images"
    assert {path.stem for path in image_dir.glob("*.dcm")} == {row["patientId"] for row in labels}

    syntaxes = []
    for path in image_dir.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        assert ds.pixel_array.shape == (IMAGE_SIZE, IMAGE_SIZE)
        assert ds.PatientID == path.stem
        assert ds.Modality == "CR" and ds.BodyPartExamined == "CHEST"
        assert ds.ViewPosition in ("PA", "AP") and ds.SeriesDescription == f"view: {ds.ViewPosition}"
        assert ds.PatientSex in ("M", "F") and ds.PatientAge.endswith("Y")
        assert ds.PatientName and ds.PatientBirthDate and ds.StudyDate and ds.AccessionNumber
        assert ds.InstitutionName and ds.ReferringPhysicianName
        assert ds.SOPClassUID in (uid.SecondaryCaptureImageStorage, uid.ComputedRadiographyImageStorage)
        syntaxes.append((ds.file_meta.TransferSyntaxUID, ds.BitsStored, ds.PhotometricInterpretation))
    assert syntaxes.count((uid.JPEGBaseline8Bit, 8, "MONOCHROME2")) == NUM_RSNA * 9 // 10
    assert set(syntaxes) == {(uid.JPEGBaseline8Bit, 8, "MONOCHROME2"),
                             (uid.ExplicitVRLittleEndian, 12, "MONOCHROME2"),
                             (uid.ExplicitVRLittleEndian, 16, "MONOCHROME2"),
                             (uid.ExplicitVRLittleEndian, 12, "MONOCHROME1")}


# --- DICOM writer ------------------------------------------------------------------------

_WRITER_CASES = [
    (syntax, bits, photometric)
    for syntax in dicom_writer.TRANSFER_SYNTAXES
    for bits in (8, 12, 16)
    for photometric in dicom_writer.PHOTOMETRICS
    if not (syntax == "jpeg_baseline" and bits != 8) and not (photometric == "RGB" and bits != 8)
]


@pytest.mark.parametrize("transfer_syntax,bits_stored,photometric", _WRITER_CASES)
def test_every_dicom_variant_decodes_to_the_written_pixels(transfer_syntax, bits_stored, photometric):
    pixels = phantom.render_chest(11, "pneumonia", IMAGE_SIZE)
    data = dicom_writer.dicom_bytes(
        pixels, patient_id="patient-1", view="AP", sex="F", age=7, transfer_syntax=transfer_syntax,
        bits_stored=bits_stored, photometric=photometric)

    ds = pydicom.dcmread(io.BytesIO(data))
    decoded = ds.pixel_array.astype(np.float64)
    if photometric == "RGB":
        assert decoded.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        decoded = decoded.mean(axis=2)
    max_value = (1 << bits_stored) - 1
    if photometric == "MONOCHROME1":
        decoded = max_value - decoded
    expected = pixels.astype(np.float64) / 65535 * max_value
    tolerance = 0.02 * max_value if transfer_syntax == "jpeg_baseline" else 0.51
    assert np.abs(decoded - expected).mean() <= tolerance
    assert ds.file_meta.TransferSyntaxUID == dicom_writer.TRANSFER_SYNTAXES[transfer_syntax]
    assert ds.BitsStored == bits_stored and ds.PatientAge == "007Y" and ds.ViewPosition == "AP"


def test_rescale_and_window_are_written_in_output_units():
    pixels = phantom.render_chest(3, "normal", IMAGE_SIZE)
    ds = pydicom.dcmread(io.BytesIO(dicom_writer.dicom_bytes(
        pixels, patient_id="p", view="PA", sex="M", age=60, transfer_syntax="explicit_le", bits_stored=12,
        rescale=(0.5, -1024.0), window=True)))

    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (0.5, -1024.0)
    rescaled = ds.pixel_array * 0.5 - 1024.0
    low = float(ds.WindowCenter) - float(ds.WindowWidth) / 2
    high = float(ds.WindowCenter) + float(ds.WindowWidth) / 2
    assert rescaled.min() <= low < high <= rescaled.max()
    assert np.mean((rescaled >= low) & (rescaled <= high)) >= 0.98


def test_jpeg_baseline_dicom_is_encapsulated_like_rsna():
    pixels = phantom.render_chest(4, "covid19", IMAGE_SIZE)
    ds = pydicom.dcmread(io.BytesIO(dicom_writer.dicom_bytes(pixels, patient_id="p", view="PA", sex="M", age=30)))

    assert ds.file_meta.TransferSyntaxUID == uid.JPEGBaseline8Bit
    assert ds.SOPClassUID == uid.SecondaryCaptureImageStorage and ds.ConversionType == "WSD"
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 8
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"
    frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    assert frames[0][:2] == b"\xff\xd8", "one encapsulated JPEG frame"


def test_uids_and_identifiers_are_deterministic_and_seeded():
    pixels = phantom.render_chest(4, "normal", IMAGE_SIZE)

    def write(uid_seed: str) -> pydicom.Dataset:
        return pydicom.dcmread(io.BytesIO(dicom_writer.dicom_bytes(
            pixels, patient_id="p", view="PA", sex="M", age=30, uid_seed=uid_seed)))

    first, again, other_seed = write("1"), write("1"), write("2")
    assert first == again
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert first[keyword].value != other_seed[keyword].value
    assert len({first.SOPInstanceUID, first.StudyInstanceUID, first.SeriesInstanceUID}) == 3


@pytest.mark.parametrize("kwargs,message", [
    ({"transfer_syntax": "jpeg_baseline", "bits_stored": 12}, "8-bit"),
    ({"transfer_syntax": "jpeg_ls"}, "unknown transfer syntax"),
    ({"photometric": "PALETTE COLOR"}, "photometric"),
    ({"view": "LL"}, "view"),
    ({"bits_stored": 10, "transfer_syntax": "explicit_le"}, "bits_stored"),
])
def test_dicom_writer_rejects_bad_arguments_clearly(kwargs, message):
    arguments = {"patient_id": "p", "view": "PA", "sex": "M", "age": 30} | kwargs
    with pytest.raises(ValueError, match=message):
        dicom_writer.dicom_bytes(np.zeros((8, 8), np.uint8), **arguments)


# --- covid-chestxray-dataset layout ------------------------------------------------------

def test_covid_metadata_has_the_later_header_and_several_images_per_patient(synthetic_dir):
    header, rows = _read_csv(synthetic_dir / "covid" / "metadata.csv")

    assert header == list(synthesize.COVID_HEADERS["later"])
    assert header[-1] == "Unnamed: 29" and "modality" in header and "folder" in header
    assert len(rows) == NUM_COVID
    assert {row["folder"] for row in rows} == {"images"}
    images_per_patient: dict[str, int] = {}
    for row in rows:
        images_per_patient[row["patientid"]] = images_per_patient.get(row["patientid"], 0) + 1
        assert row["modality"] in ("X-ray", "CT")
        assert row["finding"] in LATER_FINDINGS
    assert max(images_per_patient.values()) >= 2 and all(1 <= n <= 4 for n in images_per_patient.values())
    assert any("COVID-19" in row["finding"] for row in rows)


def test_covid_images_open_with_pillow_in_varied_sizes_and_modes(synthetic_dir):
    _, rows = _read_csv(synthetic_dir / "covid" / "metadata.csv")
    image_dir = synthetic_dir / "covid" / "images"
    assert {path.name for path in image_dir.iterdir()} == {row["filename"] for row in rows}

    sizes, modes, formats = set(), set(), set()
    for row in rows:
        with Image.open(image_dir / row["filename"]) as image:
            image.load()
            sizes.add(image.size)
            modes.add(image.mode)
            formats.add(image.format)
            assert 0.6 * IMAGE_SIZE - 1 <= min(image.size) and max(image.size) <= 1.6 * IMAGE_SIZE
    assert len(sizes) > 1 and any(width != height for width, height in sizes)
    assert formats <= {"PNG", "JPEG"} and len(modes) >= 2 and modes <= {"L", "RGB", "I;16"}


def test_covid_2020_header_generation(tmp_path):
    _synthesize(tmp_path, "--covid_header", "2020", num_rsna=0, num_covid=10)

    with (tmp_path / "covid" / "metadata.csv").open() as handle:
        first_line = handle.readline().rstrip("\n")
    assert first_line == "Patientid,offset,sex,age,finding,survival,view,date,location,filename,doi, url,license,notes"
    _, rows = _read_csv(tmp_path / "covid" / "metadata.csv")
    assert len(rows) == 10
    assert {row["finding"] for row in rows} <= {"COVID-19", "SARS", "Streptococcus", "Pneumocystis", "ARDS",
                                                  "No Finding"}
    assert {row["view"] for row in rows} <= {"PA", "AP", "AP Supine", "L"}
    for row in rows:
        assert (tmp_path / "covid" / "images" / row["filename"]).is_file()
    assert not (tmp_path / "rsna").exists()


def test_plan_splits_covid_images_into_patients_of_one_to_four():
    work = synthesize.plan_patients(num_rsna=3, num_covid=25, seed=9)

    rsna = [item for item in work if item.source == "rsna"]
    covid = [item for item in work if item.source == "covid"]
    assert [item.index for item in rsna] == [0, 1, 2]
    assert sum(item.num_images for item in covid) == 25
    assert all(1 <= item.num_images <= 4 for item in covid)
    assert work == synthesize.plan_patients(num_rsna=3, num_covid=25, seed=9)


# --- pipeline behaviour ------------------------------------------------------------------

@pytest.mark.slow
def test_same_seed_gives_identical_bytes_on_another_runner_mode(synthetic_dir, tmp_path):
    _synthesize(tmp_path / "again", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing")
    _synthesize(tmp_path / "other_seed", seed=SEED + 1)

    expected = _all_files(synthetic_dir)
    assert _all_files(tmp_path / "again") == expected
    other = _all_files(tmp_path / "other_seed")
    assert other.keys() != expected.keys() or all(other[name] != expected[name] for name in expected)


def test_counters_report_every_file_written(tmp_path):
    result = _synthesize(tmp_path, num_rsna=4, num_covid=3)

    counters = {counter.key.metric.name: counter.committed
                for counter in result.metrics().query()["counters"]}
    on_disk = [path for path in tmp_path.rglob("*") if path.is_file() and path.suffix != ".csv"]
    assert counters["rsna_dicoms_written"] == 4 and counters["covid_images_written"] == 3
    assert counters["bytes_written"] == sum(path.stat().st_size for path in on_disk)


@pytest.mark.parametrize("args", [
    ["--num_rsna", "0", "--num_covid", "0"],
    ["--num_rsna", "-1"],
    ["--image_size", "8"],
    ["--covid_header", "2019"],
])
def test_bad_flags_fail_before_any_work(tmp_path, args, capsys):
    with pytest.raises(SystemExit):
        synthesize.run(["--output_dir", str(tmp_path / "out"), *args])
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- class signal ------------------------------------------------------------------------

def _opacity_added(seed: int, label: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """What a finding adds to the same patient, exposure and noise (same seed)."""
    normal = phantom.render_chest(seed, "normal", size).astype(np.float64) / 65535
    return np.clip(phantom.render_chest(seed, label, size).astype(np.float64) / 65535 - normal, 0, None)


def _zone_fractions(added: np.ndarray) -> dict[str, float]:
    size = added.shape[0]
    rows = (np.arange(size) + 0.5) / size
    distance_from_midline = np.abs((np.arange(size) + 0.5) / size - 0.5)
    total = added.sum()
    return {
        "smaller_side": min(added[:, : size // 2].sum(), added[:, size // 2:].sum()) / total,
        "lower_zones": added[(rows >= 0.4) & (rows < 0.7)].sum() / total,
        "upper_zones": added[(rows >= 0.1) & (rows < 0.35)].sum() / total,
        "periphery": added[:, distance_from_midline >= 0.25].sum() / total,
        "density": float(np.percentile(added[added > 0.02], 90)),
    }


def test_pneumonia_is_a_dense_opacity_in_one_lung_and_covid_a_bilateral_basal_peripheral_haze():
    seeds = range(12)
    pneumonia = [_zone_fractions(_opacity_added(seed, "pneumonia")) for seed in seeds]
    covid = [_zone_fractions(_opacity_added(seed, "covid19")) for seed in seeds]

    assert all(zones["smaller_side"] < 0.02 for zones in pneumonia), "one lung only"
    assert all(zones["smaller_side"] > 0.05 for zones in covid), "both lungs"
    assert np.mean([zones["lower_zones"] for zones in covid]) > 0.65
    assert np.mean([zones["upper_zones"] for zones in covid]) < 0.15
    assert np.mean([zones["periphery"] for zones in covid]) > 0.8
    assert np.mean([zones["upper_zones"] for zones in pneumonia]) > 0.2, "any lobe, upper ones included"
    assert np.median([zones["density"] for zones in pneumonia]) > 1.5 * np.median([zones["density"] for zones in covid])


def test_opacity_boxes_enclose_the_opacity():
    for seed in range(6):
        radiograph = phantom.render_radiograph(seed, "pneumonia", IMAGE_SIZE, num_opacities=2)
        added = _opacity_added(seed, "pneumonia")
        inside = np.zeros_like(added, dtype=bool)
        for x, y, width, height in radiograph.opacity_boxes:
            inside[int(y):int(np.ceil(y + height)), int(x):int(np.ceil(x + width))] = True
        assert 1 <= len(radiograph.opacity_boxes) <= 2
        assert added[inside].sum() / added.sum() > 0.8
    assert phantom.render_radiograph(0, "normal", IMAGE_SIZE).opacity_boxes == ()


def test_not_normal_is_abnormal_without_changing_normal_anatomy_elsewhere():
    changed = [np.abs(phantom.render_chest(seed, "not_normal", IMAGE_SIZE).astype(np.int64)
                      - phantom.render_chest(seed, "normal", IMAGE_SIZE)).max() for seed in range(8)]
    assert all(difference > 0.05 * 65535 for difference in changed)


def test_global_brightness_does_not_reveal_the_class():
    seeds = range(30)
    normal = np.array([phantom.render_chest(seed, "normal", IMAGE_SIZE).mean() / 65535 for seed in seeds])
    spread_between_patients = normal.std()
    for label in ("pneumonia", "covid19", "not_normal"):
        shifted = np.array([phantom.render_chest(seed, label, IMAGE_SIZE).mean() / 65535 for seed in seeds])
        assert abs(np.mean(shifted - normal)) < 0.25 * spread_between_patients, label


def test_phantom_is_deterministic_and_validates_its_arguments():
    first = phantom.render_chest(123, "covid19", IMAGE_SIZE)
    assert first.dtype == np.uint16 and first.shape == (IMAGE_SIZE, IMAGE_SIZE)
    assert np.array_equal(first, phantom.render_chest(123, "covid19", IMAGE_SIZE))
    assert not np.array_equal(first, phantom.render_chest(124, "covid19", IMAGE_SIZE))
    with pytest.raises(ValueError, match="unknown label"):
        phantom.render_chest(1, "tuberculosis", IMAGE_SIZE)
    with pytest.raises(ValueError, match="num_opacities"):
        phantom.render_radiograph(1, "pneumonia", IMAGE_SIZE, num_opacities=5)


# --- the job's transforms, each alone ------------------------------------------------------


def test_write_source_files_writes_a_patient_and_emits_its_csv_rows(beam_pipeline, tmp_path):
    config = synthesize.SynthesisConfig(str(tmp_path), IMAGE_SIZE, SEED)
    work = synthesize.PatientWork(synthesize.RSNA_DIR, 0, 1)
    expected = synthesize.synthesize_patient(config, work)
    with beam_pipeline as pipeline:
        rows = pipeline | beam.Create([work]) | beam.ParDo(synthesize.WriteSourceFilesFn(config))
        assert_that(rows, equal_to(expected.csv_rows))
    assert {source_file.relative_path: source_file.data for source_file in expected.files} == {
        path: data for path, data in _all_files(tmp_path).items()}


def test_write_csv_files_orders_rows_by_their_sort_key(beam_pipeline, tmp_path):
    rows = [("a.csv", (2, ("x2", "y2"))), ("a.csv", (1, ("x1", "y1"))), ("b.csv", (0, ("z",)))]
    with beam_pipeline as pipeline:
        paths = (pipeline
                 | beam.Create(rows)
                 | synthesize.WriteCsvFiles(str(tmp_path), {"a.csv": ("x", "y"), "b.csv": ("z",)}))
        assert_that(paths, equal_to([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]))
    assert (tmp_path / "a.csv").read_text() == "x,y\nx1,y1\nx2,y2\n"
    assert (tmp_path / "b.csv").read_text() == "z\nz\n"


def test_synthesize_sources_writes_both_layouts(beam_pipeline, tmp_path):
    config = synthesize.SynthesisConfig(str(tmp_path), IMAGE_SIZE, SEED)
    with beam_pipeline as pipeline:
        paths = pipeline | synthesize.SynthesizeSources(config, synthesize.plan_patients(2, 3, SEED))
        assert_that(paths | beam.Map(lambda path: os.path.relpath(path, tmp_path)), equal_to([
            f"{synthesize.RSNA_DIR}/{synthesize.RSNA_LABELS_CSV}",
            f"{synthesize.RSNA_DIR}/{synthesize.RSNA_CLASS_INFO_CSV}",
            f"{synthesize.COVID_DIR}/{synthesize.COVID_METADATA_CSV}"]))
    assert len(list((tmp_path / synthesize.RSNA_DIR / "stage_2_train_images").glob("*.dcm"))) == 2
