"""The RSNA stage-2 training set at its real size, written fast for the data-plane benchmark.

The project's synthesizer renders every patient's radiograph (a phantom at 1024² plus a
JPEG encode), which takes tens of minutes for 26,684 patients on two cores. The benchmark
needs the real *shape* rather than 26,684 distinct pictures: here a small pool of phantom
radiographs per class is rendered and wrapped as RSNA DICOMs once by the synthesizer's own
`phantom` and `dicom_writer`, and each patient's file is that pool file with the patient's
own PatientID and UIDs. Every file is therefore a real 1024² 8-bit JPEG Baseline DICOM of
the usual size (~150 KB) whose pixels decode exactly like a synthesized one.

The label files have the published stage-2 shape: 26,684 patients, 30,227 rows. Normal
and "No Lung Opacity / Not Normal" patients have one row; "Lung Opacity" patients have one
row per box (1 to 4, in the published proportions), and the detailed class file repeats
the class on each of a patient's rows, as the real one does. Everything derives from the
seed, and the folder is reused when a complete one is already there.
"""

import csv
import io
import os
import uuid
from typing import Final

import numpy as np
import pydicom
from pydicom import uid

from beam_pipelines import sources
from cxr_core import selection
from synthetic import dicom_writer, phantom
from synthetic import pipeline as synthesize

IMAGE_SIZE: Final = 1024
# Stage-2 training labels as published: patients per class and, for "Lung Opacity",
# patients per number of boxes.
NORMAL_PATIENTS: Final = 8851
NOT_NORMAL_PATIENTS: Final = 11821
OPACITY_PATIENTS_BY_BOXES: Final[dict[int, int]] = {1: 2614, 2: 3266, 3: 119, 4: 13}
POOL_PER_KIND: Final = 8
COMPLETE_MARKER: Final = "COMPLETE"


def layout_counts() -> dict[str, int]:
    """Patients, label rows and used images (normal + pneumonia) of the full layout."""
    opacity_patients = sum(OPACITY_PATIENTS_BY_BOXES.values())
    boxes = sum(count * patients for count, patients in OPACITY_PATIENTS_BY_BOXES.items())
    return {"patients": NORMAL_PATIENTS + NOT_NORMAL_PATIENTS + opacity_patients,
            "rows": NORMAL_PATIENTS + NOT_NORMAL_PATIENTS + boxes,
            "used": NORMAL_PATIENTS + opacity_patients}


def _pool(seed: int) -> dict[tuple[str, int], list[tuple[pydicom.Dataset, tuple]]]:
    """(phantom label, boxes) → POOL_PER_KIND template datasets with their opacity boxes."""
    kinds = [("normal", 1), ("not_normal", 1)] + [("pneumonia", boxes) for boxes in OPACITY_PATIENTS_BY_BOXES]
    pool = {}
    for kind_index, (label, boxes) in enumerate(kinds):
        pool[(label, boxes)] = []
        for item in range(POOL_PER_KIND):
            rng = np.random.default_rng((seed, kind_index, item))
            radiograph = phantom.render_radiograph(int(rng.integers(0, 2**63 - 1)), label, IMAGE_SIZE,
                                                   num_opacities=boxes)
            data = dicom_writer.dicom_bytes(
                radiograph.pixels, patient_id="template", view="PA" if rng.random() < 0.55 else "AP",
                sex="M" if rng.random() < 0.57 else "F", age=int(np.clip(rng.normal(47, 16), 1, 92)),
                uid_seed=f"{seed}/{kind_index}/{item}")
            pool[(label, boxes)].append((pydicom.dcmread(io.BytesIO(data)), radiograph.opacity_boxes))
    return pool


def _patient_file(template: pydicom.Dataset, patient_id: str, seed: int) -> bytes:
    """The template DICOM carrying this patient's id and UIDs (deterministic in the seed)."""
    template.PatientID = patient_id
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(template, keyword, uid.generate_uid(entropy_srcs=[str(seed), patient_id, keyword]))
    template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
    buffer = io.BytesIO()
    template.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_layout(root: str, seed: int = 2026) -> str:
    """Writes (or reuses) `root/rsna` in the RSNA layout; returns that folder."""
    rsna_dir = os.path.abspath(os.path.join(root, "rsna"))
    if os.path.exists(os.path.join(rsna_dir, COMPLETE_MARKER)):
        return rsna_dir
    images_dir = os.path.join(rsna_dir, sources.RSNA_IMAGES_DIR)
    os.makedirs(images_dir, exist_ok=True)
    pool = _pool(seed)
    rng = np.random.default_rng((seed, len(pool)))
    patients = ([(selection.RSNA_NORMAL, "normal", 1)] * NORMAL_PATIENTS
                + [(selection.RSNA_NOT_NORMAL, "not_normal", 1)] * NOT_NORMAL_PATIENTS
                + [(selection.RSNA_OPACITY, "pneumonia", boxes)
                   for boxes, count in OPACITY_PATIENTS_BY_BOXES.items() for _ in range(count)])
    order = rng.permutation(len(patients))
    label_rows, class_rows = [], []
    for index in order:
        class_name, label, boxes = patients[index]
        patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        template, opacity_boxes = pool[(label, boxes)][int(rng.integers(0, POOL_PER_KIND))]
        with open(os.path.join(images_dir, f"{patient_id}.dcm"), "wb") as handle:
            handle.write(_patient_file(template, patient_id, seed))
        if label == "pneumonia":
            rows = [(patient_id, *(f"{value:.0f}" for value in box), "1") for box in opacity_boxes]
        else:
            rows = [(patient_id, "", "", "", "", "0")]
        label_rows.extend(rows)
        class_rows.extend((patient_id, class_name) for _ in rows)
    for name, header, rows in ((sources.RSNA_LABELS_FILE, synthesize.RSNA_LABELS_HEADER, label_rows),
                               (sources.RSNA_CLASS_INFO_FILE, synthesize.RSNA_CLASS_INFO_HEADER, class_rows)):
        with open(os.path.join(rsna_dir, name), "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
    with open(os.path.join(rsna_dir, COMPLETE_MARKER), "w") as handle:
        handle.write(f"seed={seed} patients={len(patients)} rows={len(label_rows)}\n")
    return rsna_dir


def used_images(rsna_dir: str) -> list[dict]:
    """The images the preprocess job uses by default (normal and pneumonia patients), sorted."""
    with open(os.path.join(rsna_dir, sources.RSNA_CLASS_INFO_FILE)) as handle:
        classes = {row["patientId"]: row["class"] for row in csv.DictReader(handle)}
    labels = {selection.RSNA_NORMAL: "normal", selection.RSNA_OPACITY: "pneumonia"}
    images_dir = os.path.join(os.path.abspath(rsna_dir), sources.RSNA_IMAGES_DIR)
    return [{"image_uri": os.path.join(images_dir, f"{patient}.dcm"), "label": labels[name], "patient_id": patient}
            for patient, name in sorted(classes.items()) if name in labels]
