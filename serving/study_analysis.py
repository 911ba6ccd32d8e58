"""From the files of one study to findings: which images are frontal chest radiographs, and what the model says.

Selection applies the data plane's rules (`cxr_core.selection`): a DICOM whose Modality is
not CR or DX, or whose ViewPosition is not an allowed (frontal) view, is not used; a header
that states neither passes, as in training. The size limits are the data plane's too: a
file larger than `imaging.max_file_bytes` is refused unread, and `imaging.preprocess_bytes`
checks the header's pixel count before decoding. Every file is either selected, an object
this node wrote itself (`dicom_results.is_own_output`), or rejected with the stage, code
and reason the preprocess job would give.

`StudyModel` is the one model of a node: the exported SavedModel with its contract (image
size, classes, decision rule) for prediction, and the Keras model beside it for Grad-CAM.
"""

import dataclasses
import hashlib
import io
import os

import numpy as np
import pydicom
import tensorflow as tf

from cxr_core import contract, imaging, selection
from cxr_core.rejection import UnusableInput
from serving import dicom_results, gradcam, model_store

MODEL_NAME = "cxr-classifier ResNet50"
VERSION_CHARACTERS = 12
# The files whose bytes identify an export: the graph, and the variables' index (it holds every tensor's checksum).
EXPORT_IDENTITY_FILES = (tf.saved_model.SAVED_MODEL_FILENAME_PB, os.path.join("variables", "variables.index"))


class ModelUnavailable(Exception):
    """The model cannot serve: missing, incompatible, or without the Keras file Grad-CAM needs."""


@dataclasses.dataclass(frozen=True)
class SelectionRules:
    """The data plane's selection flags, as the node was given them."""

    allowed_views: frozenset[str]
    max_pixels: int = imaging.DEFAULT_MAX_PIXELS


@dataclasses.dataclass(frozen=True)
class InstanceRejection:
    """A file of the study that was not analysed, and why (codes as in the preprocess job's rejections)."""

    instance_uid: str  # Empty when the file was unreadable.
    stage: str
    kind: str
    reason: str


@dataclasses.dataclass(frozen=True)
class SelectedImage:
    """A frontal radiograph: its header (for the SR's references) and the pixels the model takes."""

    header: pydicom.Dataset
    pixels: np.ndarray
    modality: str
    view: str


@dataclasses.dataclass(frozen=True)
class StudySelection:
    """What became of each file of a study."""

    selected: list[SelectedImage]
    rejected: list[InstanceRejection]
    own_outputs: list[pydicom.Dataset]  # Headers of this node's earlier SRs and heat maps.


def select_images(paths: list[str], image_size: int, rules: SelectionRules) -> StudySelection:
    """Sorts the study's files into selected frontal radiographs, the node's own objects and rejections."""
    selected, rejected, own = [], [], []
    for path in paths:
        outcome = _select_file(path, image_size, rules)
        if isinstance(outcome, SelectedImage):
            selected.append(outcome)
        elif isinstance(outcome, InstanceRejection):
            rejected.append(outcome)
        else:
            own.append(outcome)
    return StudySelection(selected, rejected, own)


def file_too_large(max_pixels: int) -> InstanceRejection:
    """The rejection of a file refused unread, worded as the data plane's `reading.read_file` words it."""
    return InstanceRejection("", "read", "image_too_large",
                             f"the file is larger than {imaging.max_file_bytes(max_pixels) / 1e6:.0f} MB, the most "
                             "the pixel limit allows (--max_megapixels)")


def _select_file(path: str, image_size: int, rules: SelectionRules
                 ) -> SelectedImage | InstanceRejection | pydicom.Dataset:
    if os.path.getsize(path) > imaging.max_file_bytes(rules.max_pixels):
        return file_too_large(rules.max_pixels)
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # pydicom raises many types on corrupt headers; preprocess_bytes names the problem below.
        header = None
    instance_uid = str(header.get("SOPInstanceUID", "")) if header is not None else ""
    if header is not None:
        if dicom_results.is_own_output(str(header.get("Manufacturer", "")), str(header.get("SOPClassUID", ""))):
            return header
        modality, view = _header_text(header, "Modality"), _header_text(header, "ViewPosition")
        if problem := selection.dicom_modality_problem(modality):
            return InstanceRejection(instance_uid, "select", "not_xray", problem)
        if problem := selection.view_problem(view, rules.allowed_views, "DICOM ViewPosition"):
            return InstanceRejection(instance_uid, "select", "view_not_allowed", problem)
    try:
        decoded = imaging.preprocess_bytes(data, image_size, "", rules.max_pixels)
    except UnusableInput as unusable:
        return InstanceRejection(instance_uid, unusable.stage, unusable.kind, unusable.reason)
    if header is None:  # preprocess_bytes read what pydicom's strict read refused: not a usable DICOM here.
        return InstanceRejection("", "decode", "not_dicom", "not a readable DICOM file")
    return SelectedImage(header, decoded.pixels, modality, view)


def _header_text(header: pydicom.Dataset, keyword: str) -> str:
    """As `imaging` reads a header value: upper case, whitespace collapsed."""
    return " ".join(str(header.get(keyword, "") or "").upper().split())


class StudyModel:
    """The exported model and its Keras twin, loaded once and shared by every study in progress."""

    def __init__(self, model_dir: str):
        try:
            self._loaded = model_store.load(model_dir)
            self._grad_cam = gradcam.GradCam(
                gradcam.load_model(os.path.dirname(self._loaded.export_dir.rstrip("/"))))
        except (model_store.ModelStoreError, FileNotFoundError) as error:
            raise ModelUnavailable(str(error)) from error
        except (OSError, ValueError, tf.errors.OpError) as error:
            raise ModelUnavailable(f"cannot load the model in {model_dir}: {type(error).__name__}: {error}") from error
        self.image_size = self._loaded.contract.image_size
        self._predict_png = self._loaded.signatures[contract.SERVING_PNG_SIGNATURE]
        rule = self._loaded.contract.decision_rule
        self.identity = dicom_results.ModelIdentity(
            name=f"{MODEL_NAME} {self.image_size}px", version=export_version(self._loaded.export_dir),
            operating_point=rule.describe() if rule else "argmax of the model's probabilities (no decision rule)")

    def predict(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities [N, classes] and class ids [N] of uint8 images at `image_size`, as the export computes them."""
        pngs = tf.constant([imaging.encode_png(image) for image in images])
        outputs = self._predict_png(**{contract.PNG_INPUT: pngs})
        return outputs[contract.PROBABILITIES_OUTPUT].numpy(), outputs[contract.CLASS_ID_OUTPUT].numpy()

    def findings(self, images: list[SelectedImage]) -> list[dicom_results.ImageFinding]:
        """Prediction and Grad-CAM of every selected image (its overlay enlarged for reading)."""
        pixels = np.stack([image.pixels for image in images])
        probabilities, class_ids = self.predict(list(pixels))
        heat_maps = self._grad_cam.heat_maps(pixels, class_ids)
        return [dicom_results.ImageFinding(image.header, tuple(float(p) for p in probabilities[index]),
                                           int(class_ids[index]),
                                           gradcam.enlarged(gradcam.overlay(image.pixels, heat_maps[index])))
                for index, image in enumerate(images)]


def export_version(export_dir: str) -> str:
    """A short digest of the export's graph and variable index: the same weights give the same version."""
    digest = hashlib.sha256()
    for name in EXPORT_IDENTITY_FILES:
        path = os.path.join(export_dir, name)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()[:VERSION_CHARACTERS]
