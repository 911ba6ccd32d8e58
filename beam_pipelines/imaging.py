"""Decode, normalise, frame and resize one chest X-ray: the single implementation.

The preprocess job, batch prediction and single-study prediction all call
`preprocess_image`, so a model sees at serving time exactly the pixels it saw in
training. Output is always an 8-bit grayscale square of `image_size`² pixels.

DICOM: pydicom decodes every common transfer syntax through its plugins; the
Modality LUT (rescale slope/intercept) and the VOI LUT or window are applied when
present, MONOCHROME1 is inverted, colour is converted to luminance, and the result
is scaled to 0–255 between its 0.5th and 99.5th percentiles. JPEG Baseline 8-bit frames (the RSNA files) take a fast
path: Pillow decodes the frame straight to reduced size with DCT scaling
(`Image.draft`), several times cheaper than a full-size decode.

Framing (`frame_body`): uniform borders are trimmed, then the body is centre-cropped
to a square of its shorter side, then resized. Black padding to a square, the former
rule, marked every non-square source with black bars, a cue a model learns instead
of the disease (DeGrave, Janizek and Lee, Nature Machine Intelligence, 2021); any
padding (black, mean, replicated edges) leaves such a band, cropping leaves none.
"""

import dataclasses
import io
import warnings

import numpy as np
import pydicom
import pydicom.encaps
import pydicom.pixels
from PIL import Image, ImageOps
from pydicom.uid import JPEGBaseline8Bit

DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
SCALE_PERCENTILES = (0.5, 99.5)
PERCENTILE_SAMPLE_SIDE = 256  # percentiles from a strided sample of about 256² pixels
BORDER_TOLERANCE_LEVELS = 10  # of 255: a border line's pixels lie this close to its colour
BORDER_COVERAGE = 0.97  # share of a line that must match; the rest may be text, arrows, noise
BORDER_LINE_SAMPLES = 512  # pixels sampled along each line (stride), enough to see a body
BORDER_GAP_FRACTION = 0.04  # marks in a margin (a panel letter, an arrow) up to this share of a side
MAX_TRIM_PASSES = 3  # nested frames: page margin, rule, image border
MIN_BODY_FRACTION = 0.2  # below this share of a side left, the "border" was the image itself


class ImageDecodeError(ValueError):
    """An input that cannot become a training or prediction image.

    `kind` is a stable short code (counted in the manifest); `reason` is the
    user-facing detail written to the rejected records.
    """

    def __init__(self, kind: str, reason: str):
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    """Preprocessed pixels, plus the view position when the file itself records one."""

    pixels: np.ndarray
    view: str = ""


def is_dicom(data: bytes) -> bool:
    """True when the bytes carry the DICOM Part 10 preamble and magic."""
    return data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC


def preprocess_image(data: bytes, image_size: int, uri: str = "") -> DecodedImage:
    """Turns DICOM, PNG or JPEG bytes into an `image_size`² uint8 grayscale image.

    Raises:
      ImageDecodeError: the bytes are not a usable image (the reason is user-facing).
    """
    if not data:
        raise ImageDecodeError("empty_file", "the file has no bytes")
    if is_dicom(data) or uri.lower().endswith((".dcm", ".dicom")):
        gray, view = _decode_dicom(data, image_size)
    else:
        gray, view = _decode_bitmap(data, image_size), ""
    return DecodedImage(pixels=resize_square(frame_body(gray), image_size), view=view)


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless 8-bit grayscale PNG, the record's and the serving input's format."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def frame_body(gray: np.ndarray) -> np.ndarray:
    """Trims uniform borders, then centre-crops to a square of the shorter side.

    The same rule for every source, so a letterboxed or framed paper figure and a
    square DICOM of the same chest come out alike. Cropping rather than padding: a
    pad of any colour is a band whose size depends on the source's aspect ratio;
    a crop removes only periphery (shoulders, arms, upper abdomen for a typical
    frontal film), as torchxrayvision's `XRayCenterCrop` does.
    """
    top, left, side = body_square(gray)
    return np.ascontiguousarray(gray[top:top + side, left:left + side])


def body_square(gray: np.ndarray) -> tuple[int, int, int]:
    """(top, left, side) of the square `frame_body` keeps: centred in `body_box`."""
    top, bottom, left, right = body_box(gray)
    height, width = bottom - top, right - left
    side = min(height, width)
    return top + (height - side) // 2, left + (width - side) // 2, side


def body_box(gray: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the image inside its uniform borders.

    A border line (row or column) is one where at least `BORDER_COVERAGE` of the
    pixels lie within `BORDER_TOLERANCE_LEVELS` of the colour of the outermost line
    on that side: black or white frames, letterboxing, padding, flat air outside the
    body, with room for noise or JPEG ringing. The body starts at the first
    `BORDER_GAP_FRACTION` of a side of consecutive non-border lines, so a panel
    letter or an arrow in a margin does not stop the trim. Each edge is trimmed,
    then again for nested frames (a page margin around a rule around the image).
    The tolerance is in 8-bit levels, not relative to the image's contrast, so
    adding a border cannot change what is trimmed inside it. When less than
    `MIN_BODY_FRACTION` of a side would remain (a blank or near-flat image) nothing
    is trimmed.
    """
    height, width = gray.shape
    stride = max(1, max(height, width) // BORDER_LINE_SAMPLES)
    top, bottom, left, right = 0, height, 0, width
    for _ in range(MAX_TRIM_PASSES):
        region = gray[top:bottom, left:right]
        top_run, bottom_run = _border_runs(region[:, ::stride])
        left_run, right_run = _border_runs(region[::stride].T)
        if not top_run + bottom_run + left_run + right_run:
            break
        top, bottom, left, right = top + top_run, bottom - bottom_run, left + left_run, right - right_run
        if bottom - top < MIN_BODY_FRACTION * height or right - left < MIN_BODY_FRACTION * width:
            return 0, height, 0, width
    return top, bottom, left, right


def _border_runs(lines: np.ndarray) -> tuple[int, int]:
    """How many of the first and of the last `lines` (rows of a 2-D array) are border."""
    gap = max(2, round(BORDER_GAP_FRACTION * len(lines)))

    def run(ordered: np.ndarray) -> int:
        """Lines before the body, which starts at the first `gap` consecutive non-border lines."""
        colour = int(np.median(ordered[0]))
        is_border = np.empty(0, dtype=bool)
        block = 2 * gap
        while len(is_border) < len(ordered):  # Growing blocks: a frameless side costs one small block.
            block_lines = ordered[len(is_border):len(is_border) + block].astype(np.int16)
            matching = (np.abs(block_lines - colour) <= BORDER_TOLERANCE_LEVELS).mean(axis=1)
            is_border = np.concatenate([is_border, matching >= BORDER_COVERAGE])
            non_border_in_window = np.convolve(~is_border, np.ones(gap, dtype=int), mode="valid")
            if (body_starts := np.flatnonzero(non_border_in_window == gap)).size:
                return int(body_starts[0])
            block *= 2
        return len(ordered)

    return run(lines), run(lines[::-1])


def resize_square(square: np.ndarray, image_size: int) -> np.ndarray:
    """Resizes a square uint8 image to `image_size`² (bilinear with area pre-reduction)."""
    if square.shape[0] == image_size:
        return np.ascontiguousarray(square)
    resized = Image.fromarray(square, mode="L").resize(
        (image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.uint8)


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scales any numeric image to 0–255 between its 0.5th and 99.5th percentiles.

    Percentiles rather than the extremes keep a few hot or dead pixels (and the noise
    extremes that differ between a full-size and a reduced-size decode) from setting
    the contrast. A constant image becomes black.
    """
    values = values.astype(np.float32, copy=False)
    stride = max(1, max(values.shape) // PERCENTILE_SAMPLE_SIDE)
    low, high = (float(bound) for bound in np.percentile(values[::stride, ::stride], SCALE_PERCENTILES))
    if not np.isfinite(low) or not np.isfinite(high):
        raise ImageDecodeError("non_finite_pixels", "pixel values are not finite")
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _decode_dicom(data: bytes, image_size: int) -> tuple[np.ndarray, str]:
    has_preamble = is_dicom(data)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Files written without the Part 10 preamble still occur in old archives.
            dataset = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except Exception as error:  # pydicom raises many types on corrupt headers
        raise ImageDecodeError("unreadable_dicom_header", f"{type(error).__name__}: {error}") from error
    # pydicom only warns when encapsulated pixel data is cut off, and then drops it.
    if any("end of file" in str(warning.message).lower() for warning in caught):
        raise ImageDecodeError("truncated_file", "the file ends before its pixel data is complete")
    if "PixelData" not in dataset:
        if has_preamble:
            raise ImageDecodeError("no_pixel_data", "the DICOM file has no Pixel Data element")
        raise ImageDecodeError("not_dicom", "no DICM preamble and no readable DICOM dataset")
    view = str(dataset.get("ViewPosition", "") or "").strip().upper()
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422",
                           "YBR_ICT", "YBR_RCT", "PALETTE COLOR"):
        raise ImageDecodeError("unsupported_photometric", f"photometric interpretation {photometric!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = _dicom_pixels(dataset, image_size)
            if pixels.ndim == 3 and photometric not in ("MONOCHROME1", "MONOCHROME2"):
                gray = _luminance(pixels)
            else:
                gray = pydicom.pixels.apply_voi_lut(
                    pydicom.pixels.apply_modality_lut(pixels, dataset), dataset)
    except ImageDecodeError:
        raise
    except Exception as error:  # decoder plugins raise their own types on bad streams
        transfer_syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown")
        raise ImageDecodeError(
            "pixel_decode_failed",
            f"transfer syntax {transfer_syntax!s}: {type(error).__name__}: {error}") from error
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise ImageDecodeError("unexpected_shape", f"pixel array shape {gray.shape}")
    scaled = scale_to_uint8(gray)
    if photometric == "MONOCHROME1":
        scaled = 255 - scaled
    return scaled, view


def _dicom_pixels(dataset: pydicom.Dataset, image_size: int) -> np.ndarray:
    """First frame's stored values; JPEG Baseline mono frames decode at reduced size."""
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if (dataset.file_meta.get("TransferSyntaxUID") == JPEGBaseline8Bit
            and dataset.get("SamplesPerPixel", 1) == 1 and dataset.get("BitsAllocated") == 8):
        frame = pydicom.encaps.get_frame(dataset.PixelData, 0, number_of_frames=frames)
        with Image.open(io.BytesIO(frame)) as image:
            image.draft("L", (image_size, image_size))
            return np.asarray(image.convert("L"))
    pixels = dataset.pixel_array
    return pixels[0] if frames > 1 else pixels


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, as Pillow's `convert('L')` computes it."""
    rgb = rgb.astype(np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _decode_bitmap(data: bytes, image_size: int) -> np.ndarray:
    """PNG/JPEG (any size, mode or bit depth) to 8-bit grayscale at or above `image_size`."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("L", (image_size, image_size))
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return scale_to_uint8(np.asarray(image))
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (0, 0, 0, 255))
                image = Image.alpha_composite(background, image)
            return np.asarray(image.convert("L"))
    except Image.DecompressionBombError as error:
        raise ImageDecodeError("image_too_large", str(error)) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(
            "not_an_image", f"not a readable DICOM, PNG or JPEG file ({type(error).__name__})") from error
