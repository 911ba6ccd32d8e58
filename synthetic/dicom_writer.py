"""Builds DICOM files like the RSNA Pneumonia Detection Challenge's, from pixels.

The synthetic RSNA source must exercise the decoder the way real files do: 8-bit JPEG
Baseline MONOCHROME2 Secondary Capture files as published, plus the variants a hospital
export produces (12- and 16-bit, rescale slope/intercept, VOI windows, MONOCHROME1,
RGB and the other common transfer syntaxes). Each file also carries realistic, fake,
identifying headers (name, birth date, study date, accession number, institution) so
tests can check that none of them reaches a record. Everything, UIDs included, is
derived from the arguments, so the same call returns the same bytes.
"""

import hashlib
import io
from typing import Final

import numpy as np
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

TRANSFER_SYNTAXES: Final[dict[str, uid.UID]] = {
    "jpeg_baseline": uid.JPEGBaseline8Bit,
    "explicit_le": uid.ExplicitVRLittleEndian,
    "implicit_le": uid.ImplicitVRLittleEndian,
    "explicit_be": uid.ExplicitVRBigEndian,
    "deflated_le": uid.DeflatedExplicitVRLittleEndian,
    "rle": uid.RLELossless,
    "jpeg2000_lossless": uid.JPEG2000Lossless,
}
PHOTOMETRICS: Final[tuple[str, ...]] = ("MONOCHROME2", "MONOCHROME1", "RGB")
SOP_CLASSES: Final[dict[str, uid.UID]] = {
    "secondary_capture": uid.SecondaryCaptureImageStorage,
    "cr": uid.ComputedRadiographyImageStorage,
}
JPEG_QUALITY: Final = 90
PIXEL_SPACING_MM: Final = 0.168

_FAMILY_NAMES: Final = ("SMITH", "GARCIA", "NGUYEN", "MULLER", "ROSSI", "KOWALSKI", "OKAFOR", "TANAKA",
                        "JOHANSSON", "DUBOIS", "PATEL", "SILVA", "COHEN", "MURPHY", "IVANOVA", "KIM")
_GIVEN_NAMES: Final = ("JOHN", "MARIA", "WEI", "ANNA", "JAMES", "FATIMA", "LUCA", "SOFIA",
                       "AHMED", "EMMA", "HIROSHI", "OLGA", "DAVID", "AMARA", "PIOTR", "LEILA")
_INSTITUTIONS: Final = ("ST. ELSEWHERE GENERAL HOSPITAL", "MERCY WEST MEDICAL CENTER",
                        "COUNTY CHEST CLINIC", "RIVERSIDE UNIVERSITY HOSPITAL")
_PHYSICIANS: Final = ("HOUSE^GREGORY", "GREY^MEREDITH", "ROSS^DOUG", "CARTER^JOHN")


def dicom_bytes(
    pixels: np.ndarray,
    *,
    patient_id: str,
    view: str,
    sex: str,
    age: int,
    transfer_syntax: str = "jpeg_baseline",
    bits_stored: int = 8,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    window: bool = False,
    sop_class: str = "secondary_capture",
    uid_seed: str = "",
) -> bytes:
    """Returns a complete DICOM file (preamble, file meta, dataset) holding `pixels`.

    `pixels` is a 2-D uint8 or uint16 grayscale image, scaled here to the full range of
    `bits_stored` (and inverted for MONOCHROME1, so it displays the same). `rescale` is
    (slope, intercept) of the Modality LUT; `window` adds a VOI window spanning the
    0.5–99.5th percentiles of the rescaled values. `uid_seed` is mixed into every UID,
    so datasets generated with different seeds never share one.
    """
    syntax = _checked_transfer_syntax(transfer_syntax, bits_stored, photometric)
    if view not in ("PA", "AP"):
        raise ValueError(f"view must be 'PA' or 'AP', got {view!r}")
    if sex not in ("M", "F", "O"):
        raise ValueError(f"sex must be 'M', 'F' or 'O', got {sex!r}")
    if not 0 <= age <= 999:
        raise ValueError(f"age must be in [0, 999] years, got {age}")
    if sop_class not in SOP_CLASSES:
        raise ValueError(f"unknown sop_class {sop_class!r}; expected one of {sorted(SOP_CLASSES)}")
    stored = _to_stored_values(pixels, bits_stored, photometric)

    ds = _header(patient_id, view, sex, age, SOP_CLASSES[sop_class], uid_seed)
    ds.Rows, ds.Columns = stored.shape[:2]
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits_stored == 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = _decimal(rescale[0]), _decimal(rescale[1])
        ds.RescaleType = "US"
    if window:
        slope, intercept = rescale or (1.0, 0.0)
        low, high = np.percentile(stored, (0.5, 99.5)) * slope + intercept
        ds.WindowCenter = _decimal((low + high) / 2)
        ds.WindowWidth = _decimal(max(high - low, 1.0))

    if syntax == uid.JPEGBaseline8Bit:
        ds.file_meta = _file_meta(ds, syntax)
        _set_jpeg_baseline_pixels(ds, stored)
    elif syntax.is_compressed:
        ds.file_meta = _file_meta(ds, uid.ExplicitVRLittleEndian)
        ds.PixelData = stored.tobytes()
        ds.compress(syntax, generate_instance_uid=False)
    else:
        ds.file_meta = _file_meta(ds, syntax)
        byte_order = ">" if syntax == uid.ExplicitVRBigEndian else "<"
        ds.PixelData = stored.astype(stored.dtype.newbyteorder(byte_order)).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _checked_transfer_syntax(name: str, bits_stored: int, photometric: str) -> uid.UID:
    if name not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {name!r}; expected one of {sorted(TRANSFER_SYNTAXES)}")
    if bits_stored not in (8, 12, 16):
        raise ValueError(f"bits_stored must be 8, 12 or 16, got {bits_stored}")
    if photometric not in PHOTOMETRICS:
        raise ValueError(f"unknown photometric interpretation {photometric!r}; expected one of {PHOTOMETRICS}")
    if name == "jpeg_baseline" and bits_stored != 8:
        raise ValueError(f"JPEG Baseline holds 8-bit samples only, got bits_stored={bits_stored}")
    if photometric == "RGB" and bits_stored != 8:
        raise ValueError(f"RGB is written with 8-bit samples only, got bits_stored={bits_stored}")
    return TRANSFER_SYNTAXES[name]


def _to_stored_values(pixels: np.ndarray, bits_stored: int, photometric: str) -> np.ndarray:
    """Rescales uint8/uint16 pixels to [0, 2**bits_stored - 1] in the sample dtype."""
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be a 2-D uint8 or uint16 array, got {pixels.dtype} {pixels.shape}")
    target_max = (1 << bits_stored) - 1
    scaled = pixels.astype(np.float32)
    scaled *= np.float32(target_max / np.iinfo(pixels.dtype).max)
    np.rint(scaled, out=scaled)
    if photometric == "MONOCHROME1":
        np.subtract(target_max, scaled, out=scaled)
    stored = scaled.astype(np.uint8 if bits_stored == 8 else np.uint16)
    if photometric == "RGB":
        stored = np.repeat(stored[:, :, np.newaxis], 3, axis=2)
    return stored


def _header(patient_id: str, view: str, sex: str, age: int, sop_class_uid: uid.UID, uid_seed: str) -> Dataset:
    """The RSNA header fields, plus fake identifying ones the RSNA release had blanked."""
    digest = hashlib.sha256(f"{uid_seed}/{patient_id}".encode()).digest()
    study_year = 2015 + digest[0] % 5
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = uid.generate_uid(entropy_srcs=[uid_seed, patient_id, "instance"])
    ds.StudyDate = f"{study_year}{1 + digest[1] % 12:02d}{1 + digest[2] % 28:02d}"
    ds.StudyTime = f"{digest[3] % 24:02d}{digest[4] % 60:02d}{digest[5] % 60:02d}"
    ds.AccessionNumber = f"A{int.from_bytes(digest[6:10], 'big') % 10**9:09d}"
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.InstitutionName = _INSTITUTIONS[digest[10] % len(_INSTITUTIONS)]
    ds.ReferringPhysicianName = _PHYSICIANS[digest[11] % len(_PHYSICIANS)]
    ds.SeriesDescription = f"view: {view}"
    ds.PatientName = f"{_FAMILY_NAMES[digest[12] % 16]}^{_GIVEN_NAMES[digest[13] % 16]}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = f"{study_year - age:04d}{1 + digest[14] % 12:02d}{1 + digest[15] % 28:02d}"
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.StudyInstanceUID = uid.generate_uid(entropy_srcs=[uid_seed, patient_id, "study"])
    ds.SeriesInstanceUID = uid.generate_uid(entropy_srcs=[uid_seed, patient_id, "series"])
    ds.StudyID = str(int.from_bytes(digest[16:19], "big"))
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.PixelSpacing = [_decimal(PIXEL_SPACING_MM), _decimal(PIXEL_SPACING_MM)]
    return ds


def _file_meta(ds: Dataset, syntax: uid.UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    return meta


def _set_jpeg_baseline_pixels(ds: Dataset, stored: np.ndarray) -> None:
    """Encodes with Pillow and encapsulates one frame, as the RSNA files were made.

    Colour is stored as the standard requires for JPEG Baseline: YCbCr, chroma 4:2:2.
    """
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=1)
    frame = buffer.getvalue()
    if stored.ndim == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate([frame])
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = _decimal(stored.nbytes / len(frame))
    ds.LossyImageCompressionMethod = "ISO_10918_1"


def _decimal(value: float) -> str:
    """A Decimal String value (at most 16 characters)."""
    return f"{value:.6g}"

