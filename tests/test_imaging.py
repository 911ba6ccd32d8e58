"""The one decode/normalise/frame/resize implementation, on every transfer syntax and on bad bytes.

DICOM inputs are pydicom's own bundled test files (shipped in its wheel, so nothing is
downloaded), which cover the transfer syntaxes real archives use.
"""

import concurrent.futures
import io
import struct
import warnings
import zlib

import numpy as np
import pydicom
import pydicom.encaps
import pydicom.pixels
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from cxr_core import imaging
from synthetic import dicom_writer, phantom

SIZE = 64


def pydicom_file_bytes(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    assert path, f"pydicom test file {name} is not installed"
    with open(path, "rb") as handle:
        return handle.read()


def dataset_bytes(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("name, syntax", [
    ("MR_small.dcm", "Explicit VR Little Endian"),
    ("MR_small_implicit.dcm", "Implicit VR Little Endian"),
    ("MR_small_bigendian.dcm", "Explicit VR Big Endian"),
    ("image_dfl.dcm", "Deflated Explicit VR Little Endian"),
    ("MR_small_RLE.dcm", "RLE Lossless"),
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", "JPEG Baseline (Process 1)"),
    ("SC_rgb_jpeg_gdcm.dcm",
     "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])"),
    ("JPGExtended.dcm", "JPEG Extended (Process 2 and 4)"),
    ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless Image Compression"),
    ("JPEGLSNearLossless_16.dcm", "JPEG-LS Lossy (Near-Lossless) Image Compression"),
    ("MR_small_jp2klossless.dcm", "JPEG 2000 Image Compression (Lossless Only)"),
    ("JPEG2000.dcm", "JPEG 2000 Image Compression"),
    ("SC_rgb_rle_2frame.dcm", "RLE Lossless"),
])
def test_every_common_transfer_syntax_decodes_to_an_8bit_square(name, syntax):
    data = pydicom_file_bytes(name)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID.name == syntax
    pixels = imaging.preprocess_image(data, SIZE, name).pixels
    assert pixels.shape == (SIZE, SIZE) and pixels.dtype == np.uint8
    if name != "JPEGLSNearLossless_16.dcm":  # A 50×10 strip of flat bands: its centre square holds two dark ones.
        assert pixels.max() - pixels.min() > 100, "normalisation should use most of the 8-bit range"


def test_monochrome1_is_inverted():
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    normal = imaging.preprocess_image(dataset_bytes(dataset), SIZE).pixels
    dataset.PhotometricInterpretation = "MONOCHROME1"
    inverted = imaging.preprocess_image(dataset_bytes(dataset), SIZE).pixels
    # Inversion happens before the resize, whose rounding may differ by one level.
    np.testing.assert_allclose(inverted.astype(int), 255 - normal.astype(int), atol=1)
    assert np.corrcoef(inverted.ravel(), normal.ravel())[0, 1] < -0.99


def test_modality_lut_and_window_are_applied():
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    stored = dataset.pixel_array.astype(np.float64)
    hounsfield = stored * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    centre = float(np.median(hounsfield))
    dataset.WindowCenter, dataset.WindowWidth = centre, 100.0
    # The window by its DICOM definition (PS3.3 C.11.2.1.2) tells where the body's square is;
    # decoding at that square's side compares pixel for pixel, without a resize.
    window_by_definition = np.clip(((hounsfield - (centre - 0.5)) / 99.0 + 0.5) * 255, 0, 255).astype(np.uint8)
    top, left, side = imaging.body_square(window_by_definition)
    hounsfield = hounsfield[top:top + side, left:left + side]
    windowed = imaging.preprocess_image(dataset_bytes(dataset), side).pixels
    assert windowed.shape == (side, side)
    # Pixels well outside the window saturate; without the window they would spread out.
    np.testing.assert_array_equal(windowed[hounsfield < centre - 60], 0)
    np.testing.assert_array_equal(windowed[hounsfield > centre + 60], 255)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def chest(seed: int = 3, size: int = 256) -> np.ndarray:
    return imaging.scale_to_uint8(phantom.render_chest(seed, "pneumonia", size))


def close_up_to_framing(first: np.ndarray, second: np.ndarray) -> bool:
    """Same picture, allowing for where the crop falls.

    A JPEG decoded at reduced size (`Image.draft`) is framed at that size: the body's
    edges round to whole pixels there, up to half an output pixel from a full-size decode.
    """
    return (np.abs(first.astype(int) - second.astype(int)).mean() < 6.0
            and np.corrcoef(first.ravel(), second.ravel())[0, 1] > 0.97)


def framed(pixels: np.ndarray, top: int, bottom: int, left: int, right: int, colour: int) -> np.ndarray:
    """`pixels` inside a uniform frame of the given widths."""
    height, width = pixels.shape
    canvas = np.full((top + height + bottom, left + width + right), colour, dtype=np.uint8)
    canvas[top:top + height, left:left + width] = pixels
    return canvas


@pytest.mark.parametrize("top, bottom, left, right, colour", [
    (0, 0, 90, 90, 0),  # Letterboxed (pillarboxed) in black, as a wide paper figure.
    (60, 60, 0, 0, 0),  # Letterboxed above and below.
    (14, 30, 20, 9, 0),  # Uneven black frame.
    (25, 25, 25, 25, 255),  # White page margin.
    (12, 12, 40, 40, 128),  # Grey padding.
])
def test_a_framed_copy_frames_like_the_image_itself(top, bottom, left, right, colour):
    image = chest()
    bordered = framed(image, top, bottom, left, right, colour)

    assert imaging.body_box(bordered) == tuple(
        np.add(imaging.body_box(image), (top, top, left, left)))
    same = imaging.preprocess_image(png_bytes(image), SIZE).pixels
    from_bordered = imaging.preprocess_image(png_bytes(bordered), SIZE).pixels
    np.testing.assert_array_equal(from_bordered, same)


def test_nested_frames_with_a_letter_and_jpeg_noise_are_trimmed():
    image = chest()
    rule = framed(image, 3, 3, 3, 3, 0)
    page = framed(rule, 40, 70, 30, 30, 250)
    page[-50:-42, 100:108] = 20  # A panel letter in the bottom margin: 8 of 322 pixels per row.
    buffer = io.BytesIO()
    Image.fromarray(page).save(buffer, format="JPEG", quality=80)

    assert imaging.body_box(np.asarray(Image.open(buffer).convert("L"))) == tuple(
        np.add(imaging.body_box(image), (43, 43, 33, 33)))
    # At 128 the JPEG decodes at half size, so the body keeps more than 128 pixels a side.
    pixels = imaging.preprocess_image(buffer.getvalue(), 128, "figure.jpg").pixels
    reference = imaging.preprocess_image(png_bytes(image), 128).pixels
    assert close_up_to_framing(pixels, reference)


def test_square_frameless_image_is_only_resized():
    image = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    assert imaging.body_box(image) == (0, 128, 0, 128)
    np.testing.assert_array_equal(imaging.frame_body(image), image)
    assert imaging.preprocess_image(png_bytes(image), 64).pixels.shape == (64, 64)


def test_non_square_body_is_centre_cropped_to_its_shorter_side():
    image = np.random.default_rng(1).integers(0, 256, (100, 160), dtype=np.uint8)
    np.testing.assert_array_equal(imaging.frame_body(image), image[:, 30:130])
    np.testing.assert_array_equal(imaging.frame_body(image.T), image.T[30:130])


def test_a_blank_image_is_not_trimmed_away():
    blank = np.full((50, 80), 7, dtype=np.uint8)
    assert imaging.body_box(blank) == (0, 50, 0, 80)
    assert imaging.preprocess_image(png_bytes(blank), 32).pixels.shape == (32, 32)


def test_framing_is_deterministic():
    page = framed(chest(seed=8), 10, 50, 70, 0, 255)
    first = imaging.preprocess_image(png_bytes(page), SIZE).pixels
    again = imaging.preprocess_image(png_bytes(page.copy()), SIZE).pixels
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16", "P"])
def test_bitmaps_of_any_mode_become_8bit_gray(mode):
    gradient = np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (100, 1))
    image = Image.fromarray(gradient)
    if mode == "I;16":
        image = Image.fromarray((gradient.astype(np.uint16) * 257))
    else:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    pixels = imaging.preprocess_image(buffer.getvalue(), 50).pixels
    assert pixels.shape == (50, 50) and pixels.dtype == np.uint8
    assert pixels[25, 35] > pixels[25, 15] + 50, "the gradient survives"


def test_jpeg_bitmap_decodes():
    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (256, 1))).save(buffer, format="JPEG")
    assert imaging.preprocess_image(buffer.getvalue(), 32, "x.jpg").pixels.shape == (32, 32)


@pytest.mark.parametrize("data, uri, kind", [
    (b"", "a.dcm", "empty_file"),
    (b"this is not an image", "a.dcm", "not_dicom"),
    (b"this is not an image", "a.png", "not_an_image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "a.png", "not_an_image"),
])
def test_bad_bytes_are_refused_with_a_reason(data, uri, kind):
    with pytest.raises(imaging.ImageDecodeError) as raised:
        imaging.preprocess_image(data, SIZE, uri)
    assert raised.value.kind == kind and raised.value.reason


@pytest.mark.parametrize("name, kind", [
    ("MR_truncated.dcm", "truncated_file"),  # its pixel data is 62 bytes short of the declared size
    ("rtplan.dcm", "no_pixel_data"),
    ("JPEG-lossy.dcm", "pixel_decode_failed"),
])
def test_broken_dicoms_are_refused_with_a_reason(name, kind):
    with pytest.raises(imaging.ImageDecodeError) as raised:
        imaging.preprocess_image(pydicom_file_bytes(name), SIZE, name)
    assert raised.value.kind == kind


def test_truncated_file_is_refused():
    data = pydicom_file_bytes("MR_small.dcm")
    with pytest.raises(imaging.ImageDecodeError):
        imaging.preprocess_image(data[: len(data) // 2], SIZE, "half.dcm")


def test_png_round_trip_is_lossless():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(imaging.encode_png(pixels))))
    np.testing.assert_array_equal(decoded, pixels)


def test_jpeg_baseline_fast_path_matches_a_full_decode():
    """DCT-scaled decoding of RSNA-style frames gives what a full decode + resize gives."""
    chest = phantom.render_chest(3, "pneumonia", 512)
    data = dicom_writer.dicom_bytes(chest, patient_id="p", view="PA", sex="F", age=40)
    fast = imaging.preprocess_image(data, SIZE).pixels
    full = pydicom.dcmread(io.BytesIO(data)).pixel_array
    slow = imaging.resize_square(imaging.frame_body(imaging.scale_to_uint8(full)), SIZE)
    assert close_up_to_framing(fast, slow)


@pytest.mark.parametrize("variant", [
    {"transfer_syntax": "explicit_le", "bits_stored": 12, "rescale": (1.0, -1024.0), "window": True},
    {"transfer_syntax": "explicit_le", "bits_stored": 16},
    {"transfer_syntax": "explicit_le", "bits_stored": 12, "photometric": "MONOCHROME1", "window": True},
])
def test_rsna_variants_decode_like_the_baseline_image(variant):
    chest = phantom.render_chest(5, "normal", 256)
    baseline = imaging.preprocess_image(
        dicom_writer.dicom_bytes(chest, patient_id="p", view="AP", sex="M", age=60), SIZE).pixels
    pixels = imaging.preprocess_image(
        dicom_writer.dicom_bytes(chest, patient_id="p", view="AP", sex="M", age=60, **variant), SIZE).pixels
    assert np.corrcoef(baseline.ravel(), pixels.ravel())[0, 1] > 0.95, "same anatomy, same polarity"


def test_view_position_comes_from_the_dicom_header():
    data = dicom_writer.dicom_bytes(phantom.render_chest(1, "normal", 64), patient_id="p", view="AP",
                                    sex="M", age=30)
    assert imaging.preprocess_image(data, 32).view == "AP"


# Decode safety: size limits, frame 0, truncation from the data, thread safety, colour, VOI -----

def png_claiming(width: int, height: int) -> bytes:
    """A few-hundred-byte PNG whose header claims width × height 8-bit gray pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("max_pixels", [imaging.DEFAULT_MAX_PIXELS, 10**9])
def test_a_png_claiming_100_megapixels_is_refused_before_decoding(max_pixels, monkeypatch):
    """Over our limit, or over Pillow's bomb limit (a warning in Pillow), it is an error either way."""
    data = png_claiming(10_000, 10_000)
    assert len(data) < 2000
    filters = list(warnings.filters)
    with pytest.raises(imaging.ImageDecodeError) as raised:
        imaging.preprocess_image(data, SIZE, "bomb.png", max_pixels=max_pixels)
    assert raised.value.kind == "image_too_large" and "10000×10000" in raised.value.reason
    assert warnings.filters == filters, "no process-wide warning filter may change"


def test_a_dicom_header_over_the_limit_is_refused_before_decoding():
    dataset = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm", download=False))
    dataset.Rows = dataset.Columns = 30_000  # the RLE stream is tiny; a decode would need 1.8 GB
    with pytest.raises(imaging.ImageDecodeError) as raised:
        imaging.preprocess_image(dataset_bytes(dataset), SIZE)
    assert raised.value.kind == "image_too_large" and "30000×30000" in raised.value.reason

    data = pydicom_file_bytes("CT_small.dcm")  # 128² × 16 bits
    assert imaging.preprocess_image(data, SIZE, max_pixels=128 * 128).pixels.shape == (SIZE, SIZE)
    with pytest.raises(imaging.ImageDecodeError, match="image_too_large"):
        imaging.preprocess_image(data, SIZE, max_pixels=128 * 127)


def test_the_frame_count_and_bytes_per_sample_count_towards_the_limit():
    dataset = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm", download=False))  # 2 × 100² × RGB
    data = dataset_bytes(dataset)
    assert imaging.preprocess_image(data, SIZE, max_pixels=15_000).pixels.shape == (SIZE, SIZE)
    with pytest.raises(imaging.ImageDecodeError) as raised:  # 60 KB of pixel data > 4 bytes × 14,000
        imaging.preprocess_image(data, SIZE, max_pixels=14_000)
    assert raised.value.kind == "image_too_large"


def test_multi_frame_files_decode_frame_zero_only():
    dataset = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm", download=False))
    original = imaging.preprocess_image(dataset_bytes(dataset), SIZE).pixels
    first, _ = pydicom.encaps.generate_frames(dataset.PixelData, number_of_frames=2)
    dataset.PixelData = pydicom.encaps.encapsulate([first, b"\xff" * 64])  # frame 1: not an RLE stream
    broken_second_frame = dataset_bytes(dataset)
    with pytest.raises(Exception):
        pydicom.dcmread(io.BytesIO(broken_second_frame)).pixel_array  # decoding every frame fails
    np.testing.assert_array_equal(imaging.preprocess_image(broken_second_frame, SIZE).pixels, original)


TRUNCATION_CASES = [(name, fraction) for name in (
    "MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "MR_small_jp2klossless.dcm",
    "SC_rgb_rle_2frame.dcm") for fraction in (0.3, 0.7, 0.9)]


@pytest.mark.parametrize("name, fraction", TRUNCATION_CASES)
def test_truncation_is_read_from_the_data(name, fraction):
    """Native pixel data shorter than declared, or encapsulated data without its end: truncated_file."""
    data = pydicom_file_bytes(name)
    imaging.preprocess_image(data, SIZE, name)
    with pytest.raises(imaging.ImageDecodeError) as raised:
        imaging.preprocess_image(data[: int(len(data) * fraction)], SIZE, name)
    assert raised.value.kind == "truncated_file"


def test_decoding_captures_no_warnings(monkeypatch):
    """warnings.catch_warnings swaps process-wide state: with threads it loses or misroutes warnings."""
    def forbidden(*args, **kwargs):
        raise AssertionError("decoding must not capture warnings")

    monkeypatch.setattr(warnings, "catch_warnings", forbidden)
    for name, _ in TRUNCATION_CASES[::3]:
        data = pydicom_file_bytes(name)
        imaging.preprocess_image(data, SIZE, name)
        with pytest.raises(imaging.ImageDecodeError):
            imaging.preprocess_image(data[: len(data) // 2], SIZE, name)


def decode_outcome(item: tuple[str, bytes]) -> tuple[str, bytes]:
    name, data = item
    try:
        return "ok", imaging.preprocess_image(data, SIZE, name).pixels.tobytes()
    except imaging.ImageDecodeError as error:
        return error.kind, b""


def test_decoding_in_8_threads_gives_what_it_gives_in_one():
    inputs = []
    for name, fraction in TRUNCATION_CASES:
        data = pydicom_file_bytes(name)
        inputs += [(name, data), (name, data[: int(len(data) * fraction)])]
    serial = [decode_outcome(item) for item in inputs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(5):
            assert list(pool.map(decode_outcome, inputs)) == serial


def palette_dicom(indices: np.ndarray, red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> bytes:
    """An 8-bit PALETTE COLOR DICOM with 256-entry, 16-bit colour tables."""
    dataset = pydicom.dcmread(io.BytesIO(dicom_writer.dicom_bytes(
        indices, patient_id="p", view="PA", sex="F", age=40, transfer_syntax="explicit_le")))
    dataset.PhotometricInterpretation = "PALETTE COLOR"
    dataset.PixelData = indices.astype(np.uint8).tobytes()
    for colour, table in (("Red", red), ("Green", green), ("Blue", blue)):
        dataset.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [256, 0, 16])
        dataset.add_new(f"{colour}PaletteColorLookupTableData", "OW", (table.astype("<u2") * 257).tobytes())
    for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if keyword in dataset:
            delattr(dataset, keyword)
    return dataset_bytes(dataset)


def test_palette_color_is_rendered_through_its_colour_table():
    indices = np.tile(np.arange(256, dtype=np.uint8), (64, 1))[:, ::4]
    ramp = np.arange(256)
    data = palette_dicom(indices, red=255 - ramp, green=255 - ramp, blue=(ramp * 3) % 256)
    pixels = imaging.preprocess_image(data, SIZE).pixels
    dataset = pydicom.dcmread(io.BytesIO(data))
    rendered = pydicom.pixels.apply_color_lut(dataset.pixel_array, dataset).astype(np.float32)
    luminance = rendered[..., 0] * 0.299 + rendered[..., 1] * 0.587 + rendered[..., 2] * 0.114
    expected = imaging.resize_square(imaging.frame_body(imaging.scale_to_uint8(luminance)), SIZE)
    assert np.corrcoef(pixels.ravel(), expected.ravel())[0, 1] > 0.99
    as_gray_indices = imaging.resize_square(imaging.frame_body(imaging.scale_to_uint8(indices)), SIZE)
    assert np.corrcoef(pixels.ravel(), as_gray_indices.ravel())[0, 1] < -0.5, "indices are not intensities"


@pytest.mark.parametrize("width, function", [(0, None), (-40, None), (0.5, "LINEAR"), (0, "SIGMOID"),
                                             (10, "NOT_A_FUNCTION")])
def test_an_invalid_voi_window_is_ignored_with_a_note(width, function):
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    assert "WindowWidth" not in dataset and "VOILUTSequence" not in dataset
    unwindowed = imaging.preprocess_image(dataset_bytes(dataset), SIZE)
    dataset.WindowCenter, dataset.WindowWidth = 40, width
    if function:
        dataset.VOILUTFunction = function
    decoded = imaging.preprocess_image(dataset_bytes(dataset), SIZE)
    assert decoded.notes == (imaging.NOTE_INVALID_VOI_WINDOW,)
    np.testing.assert_array_equal(decoded.pixels, unwindowed.pixels)
    assert unwindowed.notes == ()


def test_header_view_and_modality_are_reported():
    decoded = imaging.preprocess_image(pydicom_file_bytes("CT_small.dcm"), SIZE)
    assert decoded.modality == "CT"
    data = dicom_writer.dicom_bytes(phantom.render_chest(1, "normal", 64), patient_id="p", view="PA",
                                    sex="M", age=30)
    assert (imaging.preprocess_image(data, 32).view, imaging.preprocess_image(data, 32).modality) == ("PA", "CR")


def test_a_bitmap_body_is_stretched_like_a_dicom_whatever_its_margins():
    body = np.random.default_rng(0).integers(60, 181, size=(64, 64), dtype=np.uint8)
    framed = np.full((64, 100), 255, dtype=np.uint8)
    framed[:, 18:82] = body
    plain, in_a_figure = (imaging.preprocess_image(imaging.encode_png(image), 32).pixels for image in (body, framed))
    assert int(plain.max()) - int(plain.min()) > 180 - 60, "the body's own percentiles set its contrast"
    np.testing.assert_array_equal(plain, in_a_figure)


def test_decode_png_gives_back_the_encoded_pixels_bit_for_bit():
    pixels = np.random.default_rng(3).integers(0, 256, (37, 41), dtype=np.uint8)
    decoded = imaging.decode_png(imaging.encode_png(pixels))
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, pixels)
