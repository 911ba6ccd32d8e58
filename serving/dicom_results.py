"""The DICOM objects the node writes back into a study: a Structured Report and a heat-map image.

**The report** is an Enhanced SR holding a TID 1500 Measurement Report (highdicom). Each
analysed image has one image-level measurement group (TID 1501) with the probability of
every class (NUM, unitless), the decided class (a qualitative evaluation coded in SNOMED
CT), the source image it was computed from, and the algorithm (TID 4019: name, version,
operating point and the research-use notice as its parameters). Why TID 1500: it is the
template the IHE AI Results profile and the open viewers (OHIF, 3D Slicer, highdicom) read
as machine-readable results, where a Basic Text SR (MONAI Deploy's writer) carries prose a
program cannot query. Why the Enhanced SR IOD rather than Comprehensive 3D SR: the content
is codes, numbers and image references with no 3-D coordinates, which Enhanced SR holds
and which more archives and viewers accept. The report is UNVERIFIED (no person checked
it) and its series says it is for research use.

**The heat map** is a Secondary Capture (`SCImage.from_ref_dataset`, which copies patient
and study from the source): the Grad-CAM overlay of `serving.gradcam` on the square image
the model saw, enlarged for reading, with NOT FOR DIAGNOSIS burned into the pixels, where
no viewer can hide it (BurnedInAnnotation YES).

Both go into the source study (its StudyInstanceUID, patient and study attributes) as new
series with new UIDs, with `MANUFACTURER` set so the node can recognise its own objects
when a PACS sends them back.
"""

import dataclasses

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxr_core import contract

MANUFACTURER = "cxr-classifier"
RESEARCH_NOTICE = "RESEARCH USE ONLY - NOT A MEDICAL DEVICE - NOT FOR DIAGNOSIS"
SR_SERIES_DESCRIPTION = "CXR AI result (research use only)"
SC_SERIES_DESCRIPTION = "CXR AI heat map (NOT FOR DIAGNOSIS)"
BURNED_IN_TEXT = "NOT FOR DIAGNOSIS"
# High numbers, so the node's series sort after the modality's in a viewer.
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
OWN_SOP_CLASSES = (pydicom.uid.EnhancedSRStorage, pydicom.uid.SecondaryCaptureImageStorage)

PROCEDURE_REPORTED = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")
CLASS_CODES = {
    "normal": hd.sr.CodedConcept("17621005", "SCT", "Normal"),
    "pneumonia": hd.sr.CodedConcept("233604007", "SCT", "Pneumonia"),
    "covid19": hd.sr.CodedConcept("840539006", "SCT", "COVID-19"),
}
# SNOMED CT and DICOM have no concept for "the model's probability of this class" nor for "the
# class its decision rule picked": a private coding scheme (99 prefix, as PS3.16 allows) names them.
PRIVATE_SCHEME = "99CXR"
PROBABILITY_CODES = {name: hd.sr.CodedConcept(f"p-{name}", PRIVATE_SCHEME, f"Probability of {name}")
                     for name in contract.CLASS_NAMES}
DECIDED_CLASS = hd.sr.CodedConcept("decided-class", PRIVATE_SCHEME, "Class decided at the operating point")
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
DEFAULT_ORIENTATION = ("L", "F")  # How a frontal chest film is displayed: patient's left on the right.
TEXT_HEIGHT_FRACTION = 0.06


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """What the report says produced it."""

    name: str
    version: str
    operating_point: str

    def parameters(self) -> list[str]:
        return [f"operating point: {self.operating_point}", RESEARCH_NOTICE]


@dataclasses.dataclass(frozen=True)
class ImageFinding:
    """One analysed source image: its dataset, the model's probabilities and decision, the Grad-CAM overlay."""

    source: pydicom.Dataset
    probabilities: tuple[float, ...]  # In `contract.CLASS_NAMES` order.
    class_id: int
    overlay: np.ndarray  # uint8 RGB [H, W, 3]: `gradcam.overlay` of the model's input, `gradcam.enlarged` for reading.

    @property
    def class_name(self) -> str:
        return contract.CLASS_NAMES[self.class_id]


def is_own_output(manufacturer: str, sop_class_uid: str) -> bool:
    """True for an object this node wrote (recognised when a PACS routes it back)."""
    return manufacturer.strip() == MANUFACTURER and sop_class_uid in OWN_SOP_CLASSES


def referenced_instances(report: pydicom.Dataset) -> set[str]:
    """SOPInstanceUIDs a report's evidence lists: the images it answered."""
    uids = set()
    for sequence in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in report.get(sequence, []):
            for series in study.get("ReferencedSeriesSequence", []):
                uids.update(str(item.ReferencedSOPInstanceUID) for item in series.get("ReferencedSOPSequence", []))
    return uids


def structured_report(findings: list[ImageFinding], model: ModelIdentity) -> hd.sr.EnhancedSR:
    """The TID 1500 report of `findings` (one study), in a new series of that study."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[model.name, model.version]), name=model.name,
        manufacturer_name=MANUFACTURER, model_name=model.version)
    observation_context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))
    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=model.version,
                                              parameters=model.parameters(), manufacturer=MANUFACTURER)
    groups = []
    for number, finding in enumerate(findings, start=1):
        measurements = [hd.sr.Measurement(name=PROBABILITY_CODES[name], value=float(probability), unit=UNITLESS,
                                          algorithm_id=algorithm)
                        for name, probability in zip(contract.CLASS_NAMES, finding.probabilities)]
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"frontal image {number}"),
            algorithm_id=algorithm,
            measurements=measurements,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(DECIDED_CLASS, CLASS_CODES[finding.class_name])],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(finding.source)]))
    report = hd.sr.MeasurementReport(observation_context=observation_context, procedure_reported=PROCEDURE_REPORTED,
                                     imaging_measurements=groups)
    return hd.sr.EnhancedSR(
        evidence=[finding.source for finding in findings], content=report[0],
        series_instance_uid=hd.UID(), series_number=SR_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=model.name, software_versions=model.version,
        is_complete=True, is_final=False, is_verified=False, series_description=SR_SERIES_DESCRIPTION)


def heat_map_images(findings: list[ImageFinding], model: ModelIdentity) -> list[hd.sc.SCImage]:
    """One Secondary Capture per finding, in one new series of the study."""
    series_uid = hd.UID()
    images = [hd.sc.SCImage.from_ref_dataset(
        ref_dataset=finding.source, pixel_array=burn_in_notice(finding.overlay),
        photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER, sop_instance_uid=hd.UID(),
        instance_number=number, manufacturer=MANUFACTURER, patient_orientation=orientation_of(finding.source),
        transfer_syntax_uid=ExplicitVRLittleEndian, manufacturer_model_name=model.name,
        software_versions=model.version, series_description=SC_SERIES_DESCRIPTION)
        for number, finding in enumerate(findings, start=1)]
    for image in images:
        image.BurnedInAnnotation = "YES"
    return images


def orientation_of(source: pydicom.Dataset) -> tuple[str, str]:
    """The source's PatientOrientation when it is a plain pair (cropping and resizing keep it)."""
    values = list(source.get("PatientOrientation") or [])
    if len(values) == 2 and all(str(value) in ("A", "P", "L", "R", "H", "F") for value in values):
        return str(values[0]), str(values[1])
    return DEFAULT_ORIENTATION


def burn_in_notice(rgb: np.ndarray, text: str = BURNED_IN_TEXT) -> np.ndarray:
    """`rgb` with `text` in white on a black band across its top and its bottom."""
    image = Image.fromarray(rgb, mode="RGB")
    band = max(12, round(image.height * TEXT_HEIGHT_FRACTION))
    font = ImageFont.load_default(size=round(band * 0.75))
    draw = ImageDraw.Draw(image)
    for top in (0, image.height - band):
        draw.rectangle((0, top, image.width, top + band - 1), fill=(0, 0, 0))
        draw.text((image.width / 2, top + band / 2), text, fill=(255, 255, 255), font=font, anchor="mm")
    return np.asarray(image)
