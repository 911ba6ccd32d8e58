"""Decode, normalise, frame and resize one chest X-ray: the single implementation.

The preprocess job, batch prediction and single-study prediction all call
`preprocess_image`, so a model sees at serving time exactly the pixels it saw in
training. Output is always an 8-bit grayscale square of `image_size`² pixels.

DICOM: pydicom decodes every common transfer syntax through its plugins; the
Modality LUT (rescale slope/intercept) and the VOI LUT or window are applied when
present, MONOCHROME1 is inverted, colour is converted to luminance, and the result
is scaled to 0–255 between its 0.5th and 99.5th percentiles. JPEG Baseline 8-bit frames (the RSNA files) take a fast
path: Pillow decodes the frame straight to reduced size with DCT scaling
(`Image.draft`), several times cheaper than a full-size decode. PALETTE COLOR goes
through its colour table; a VOI window that cannot be applied (width ≤ 0) is skipped
and noted. Multi-frame files decode frame 0 only.

Safety: the size an image claims (DICOM header, PNG/JPEG header) is checked against
`max_pixels` before anything is decoded, so one hostile file cannot exhaust a worker.
Truncation is read from the data (pixel bytes present against pixel bytes declared),
never from captured warnings, so decoding is thread-safe and the same in every
running mode.

Framing (`frame_body`): uniform borders are trimmed, then the body is centre-cropped
to a square of its shorter side, then resized. Padding to a square would mark every
non-square source with a band (black, mean or replicated edges), a cue a model learns
instead of the disease (DeGrave, Janizek and Lee, Nature Machine Intelligence, 2021);
cropping leaves none.
"""

import dataclasses
import io
import struct

import numpy as np
import pydicom
import pydicom.encaps
import pydicom.multival
import pydicom.pixels
import pydicom.pixels.utils
from PIL import Image, ImageOps
from pydicom.uid import JPEGBaseline8Bit

from cxr_core.rejection import UnusableInput

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

DEFAULT_MAX_MEGAPIXELS = 50.0
# Pixel-data bytes allowed per pixel of the limit: a 16-bit grayscale or 8-bit RGBA frame
# at the limit, or several smaller frames. A 50-megapixel limit allows 200 MB of pixel data.
PIXEL_BYTES_PER_ALLOWED_PIXEL = 4
# Room for a DICOM header, overlays and private elements on top of the pixel data.
FILE_HEADER_ALLOWANCE_BYTES = 16 * 1024 * 1024
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
SUPPORTED_PHOTOMETRIC = (*MONOCHROME, "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM_TAG = 0xFFFEE000
ITEM_HEADER_BYTES = 8
NOTE_INVALID_VOI_WINDOW = "invalid_voi_window"


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
    """Preprocessed pixels, what the file itself says of its view and modality, and notes.

    `notes` are stable codes of things that were tolerated rather than rejected (an
    unusable VOI window), counted in the preprocess manifest.
    """

    pixels: np.ndarray
    view: str = ""
    modality: str = ""
    notes: tuple[str, ...] = ()


def max_pixels_for(megapixels: float) -> int:
    """The `--max_megapixels` flag as a pixel count."""
    return int(megapixels * 1_000_000)


DEFAULT_MAX_PIXELS = max_pixels_for(DEFAULT_MAX_MEGAPIXELS)


def max_file_bytes(max_pixels: int) -> int:
    """Largest file worth reading under the pixel limit: its pixel data plus a header allowance."""
    return max_pixels * PIXEL_BYTES_PER_ALLOWED_PIXEL + FILE_HEADER_ALLOWANCE_BYTES


def is_dicom(data: bytes) -> bool:
    """True when the bytes carry the DICOM Part 10 preamble and magic."""
    return data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC


def preprocess_image(data: bytes, image_size: int, uri: str = "",
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Turns DICOM, PNG or JPEG bytes into an `image_size`² uint8 grayscale image.

    `max_pixels` bounds the width × height an image may claim (and, for DICOM, its
    pixel-data bytes); it is checked before any pixel is decoded.

    Raises:
      ImageDecodeError: the bytes are not a usable image (the reason is user-facing).
    """
    if not data:
        raise ImageDecodeError("empty_file", "the file has no bytes")
    if is_dicom(data) or uri.lower().endswith((".dcm", ".dicom")):
        decoded = _decode_dicom(data, image_size, max_pixels)
    else:
        # A bitmap's body is stretched between its percentiles as a DICOM's values are,
        # after framing so that a figure's margins do not set its contrast: contrast must
        # not tell a PNG or JPEG source apart from a DICOM one.
        body = scale_to_uint8(frame_body(_decode_bitmap(data, image_size, max_pixels)))
        return DecodedImage(pixels=resize_square(body, image_size))
    return dataclasses.replace(decoded, pixels=resize_square(frame_body(decoded.pixels), image_size))


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless 8-bit grayscale PNG, the record's and the serving input's format."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_png(png: bytes) -> np.ndarray:
    """The pixels `encode_png` was given, bit for bit (the PNG is lossless)."""
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("L"))


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


def _decode_dicom(data: bytes, image_size: int, max_pixels: int) -> DecodedImage:
    """Gray pixels at full (or DCT-reduced) size, with the header's view and modality."""
    has_preamble = is_dicom(data)
    try:
        # Files written without the Part 10 preamble still occur in old archives.
        dataset = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except Exception as error:  # pydicom raises many types on corrupt headers
        raise ImageDecodeError("unreadable_dicom_header", f"{type(error).__name__}: {error}") from error
    if "PixelData" not in dataset:
        raise _missing_pixel_data(data, dataset, has_preamble)
    _check_dicom_size(dataset, max_pixels)
    _check_pixel_data_complete(dataset)
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise ImageDecodeError("unsupported_photometric", f"photometric interpretation {photometric!r}")
    try:
        pixels = _dicom_pixels(dataset, image_size, max_pixels)
        gray, notes = _dicom_gray(pixels, dataset, photometric)
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
    return DecodedImage(pixels=scaled, view=_header_text(dataset, "ViewPosition"),
                        modality=_header_text(dataset, "Modality"), notes=notes)


def _header_text(dataset: pydicom.Dataset, keyword: str) -> str:
    return " ".join(str(dataset.get(keyword, "") or "").upper().split())


def _missing_pixel_data(data: bytes, dataset: pydicom.Dataset, has_preamble: bool) -> ImageDecodeError:
    """Why a dataset has no Pixel Data: the file was cut short, it has none, or it is not DICOM."""
    if not has_preamble:
        return ImageDecodeError("not_dicom", "no DICM preamble and no readable DICOM dataset")
    if _ends_inside_an_element(data, dataset):
        return ImageDecodeError("truncated_file", "the file ends inside a DICOM element, before its pixel data")
    return ImageDecodeError("no_pixel_data", "the DICOM file has no Pixel Data element")


def _ends_inside_an_element(data: bytes, dataset: pydicom.Dataset) -> bool:
    """True when the file stops inside an element, read from the data rather than from warnings.

    pydicom keeps a value shorter than its declared length as it is, ignores a partial
    element header at the end, and gives an empty dataset when an undefined-length
    element (encapsulated pixel data, a sequence) has no end. So: an empty dataset with
    bytes after the file meta, a short last value, or bytes after the last value.
    """
    if not dataset:
        meta_length = dataset.file_meta.get("FileMetaInformationGroupLength")
        return isinstance(meta_length, int) and len(data) != _file_meta_end(meta_length)
    last = dataset.get_item(max(dataset.keys()))
    value_tell, length, value = (getattr(last, name, None) for name in ("value_tell", "length", "value"))
    if not isinstance(value_tell, int) or not isinstance(value, bytes) or not isinstance(length, int):
        return False
    if length == UNDEFINED_LENGTH:
        end = value_tell + len(value) + ITEM_HEADER_BYTES  # the sequence delimitation item
    elif len(value) < length:
        return True
    else:
        end = value_tell + length
    return end < len(data)


def _file_meta_end(group_length: int) -> int:
    """Offset after the file meta: preamble, magic, the group length element (12 bytes), the group."""
    return DICOM_MAGIC_OFFSET + len(DICOM_MAGIC) + 12 + group_length


def _check_dicom_size(dataset: pydicom.Dataset, max_pixels: int) -> None:
    """Refuses a header whose image is over the limit, before any pixel is decoded."""
    try:
        rows, columns = int(dataset.get("Rows") or 0), int(dataset.get("Columns") or 0)
        frames = max(1, int(dataset.get("NumberOfFrames") or 1))
        samples = max(1, int(dataset.get("SamplesPerPixel") or 1))
        bytes_per_sample = -(-int(dataset.get("BitsAllocated") or 8) // 8)
    except (TypeError, ValueError) as error:
        raise ImageDecodeError("unreadable_dicom_header", f"image dimensions are not numbers ({error})") from error
    pixel_bytes = rows * columns * frames * samples * bytes_per_sample
    if rows * columns > max_pixels or pixel_bytes > max_pixels * PIXEL_BYTES_PER_ALLOWED_PIXEL:
        raise ImageDecodeError(
            "image_too_large",
            f"the header describes {frames} frame(s) of {columns}×{rows} pixels ({pixel_bytes / 1e6:.0f} MB of "
            f"pixel data); the limit is {max_pixels / 1e6:g} megapixels per frame and "
            f"{max_pixels * PIXEL_BYTES_PER_ALLOWED_PIXEL / 1e6:.0f} MB in all (--max_megapixels)")


def _check_pixel_data_complete(dataset: pydicom.Dataset) -> None:
    """Refuses pixel data shorter than the header declares (native) or than its items claim."""
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
    pixel_data = dataset.PixelData
    if transfer_syntax is not None and transfer_syntax.is_encapsulated:
        if not _encapsulated_items_complete(pixel_data, transfer_syntax.is_little_endian):
            raise ImageDecodeError("truncated_file", "the encapsulated pixel data ends inside one of its fragments")
        return
    try:
        expected = pydicom.pixels.utils.get_expected_length(dataset, "bytes")
    except Exception:  # missing image pixel elements: the decoder reports them
        return
    if len(pixel_data) < expected:
        raise ImageDecodeError(
            "truncated_file", f"the pixel data holds {len(pixel_data)} of the {expected} bytes the header declares")


def _encapsulated_items_complete(pixel_data: bytes, little_endian: bool) -> bool:
    """True when every item of encapsulated pixel data fits inside it (offset table included)."""
    endian = "<" if little_endian else ">"
    offset = 0
    while offset + ITEM_HEADER_BYTES <= len(pixel_data):
        group, element, length = struct.unpack_from(f"{endian}HHL", pixel_data, offset)
        if (group << 16 | element) != ITEM_TAG:
            return False
        offset += ITEM_HEADER_BYTES + length
    return offset == len(pixel_data) and offset > 0


def _dicom_pixels(dataset: pydicom.Dataset, image_size: int, max_pixels: int) -> np.ndarray:
    """Frame 0's stored values only; JPEG Baseline mono frames decode at reduced size."""
    if (dataset.file_meta.get("TransferSyntaxUID") == JPEGBaseline8Bit
            and dataset.get("SamplesPerPixel", 1) == 1 and dataset.get("BitsAllocated") == 8):
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        frame = pydicom.encaps.get_frame(dataset.PixelData, 0, number_of_frames=frames)
        with _open_bitmap(frame, max_pixels) as image:
            image.draft("L", (image_size, image_size))
            return np.asarray(image.convert("L"))
    return pydicom.pixels.pixel_array(dataset, index=0)


def _dicom_gray(pixels: np.ndarray, dataset: pydicom.Dataset,
                photometric: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Stored values → one gray channel: colour table, colour to luminance, or the LUTs."""
    if photometric == "PALETTE COLOR":
        return _luminance(pydicom.pixels.apply_color_lut(pixels, dataset)), ()
    if pixels.ndim == 3 and photometric not in MONOCHROME:
        return _luminance(pixels), ()
    values = pydicom.pixels.apply_modality_lut(pixels, dataset)
    if _window_is_invalid(dataset):
        return values, (NOTE_INVALID_VOI_WINDOW,)
    return pydicom.pixels.apply_voi_lut(values, dataset), ()


def _window_is_invalid(dataset: pydicom.Dataset) -> bool:
    """True when pydicom would window the image but the window cannot be applied.

    A VOI LUT Sequence takes precedence over the window, as in `apply_voi_lut`. The
    window is unusable when its width is below 1 for LINEAR (≤ 0 for the other
    functions), or when its values or function are unreadable.
    """
    sequence = dataset.get("VOILUTSequence")
    if sequence and None not in (sequence[0].get("LUTDescriptor"), sequence[0].get("LUTData")):
        return False
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is None or width is None:
        return False
    try:
        width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
    except (TypeError, ValueError, IndexError):
        return True
    function = str(dataset.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if function == "LINEAR":
        return width < 1
    return function not in ("LINEAR_EXACT", "SIGMOID") or width <= 0


def _open_bitmap(data: bytes, max_pixels: int) -> Image.Image:
    """Opens PNG/JPEG bytes lazily and refuses an image over the pixel limit before decoding.

    Pillow only warns between its own limit and twice it: the check here makes that an
    error too, per call, without touching the process-wide warning filters.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ImageDecodeError("image_too_large", f"Pillow refused the image: {error}") from error
    width, height = image.size
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if width * height > limit:
        image.close()
        raise ImageDecodeError(
            "image_too_large", f"{width}×{height} pixels is over the {limit / 1e6:g}-megapixel limit")
    return image


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, as Pillow's `convert('L')` computes it."""
    rgb = rgb.astype(np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _decode_bitmap(data: bytes, image_size: int, max_pixels: int) -> np.ndarray:
    """PNG/JPEG (any mode or bit depth, up to the pixel limit) to 8-bit grayscale at or above `image_size`."""
    try:
        with _open_bitmap(data, max_pixels) as image:
            image.draft("L", (image_size, image_size))
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return scale_to_uint8(np.asarray(image))
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (0, 0, 0, 255))
                image = Image.alpha_composite(background, image)
            return np.asarray(image.convert("L"))
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageDecodeError("image_too_large", f"Pillow refused the image: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(
            "not_an_image", f"not a readable DICOM, PNG or JPEG file ({type(error).__name__})") from error


def preprocess_bytes(data: bytes, image_size: int, uri: str = "",
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """`preprocess_image`; every failure is an `UnusableInput`."""
    try:
        return preprocess_image(data, image_size, uri, max_pixels)
    except ImageDecodeError as error:
        raise UnusableInput("decode", error.kind, error.reason) from error
    except Exception as error:  # a decoder bug must not fail the job: record it instead
        raise UnusableInput("decode", "unexpected_error", f"{type(error).__name__}: {error}") from error
