"""Synthetic chest radiographs whose class is visible in the lungs and nowhere else.

There is no real X-ray data on the machines that build and test this project, so the
synthetic sources render chest-like anatomy in numpy: body, lungs, mediastinum and heart,
spine, clavicles, ribs, diaphragm domes and vascular markings, with each image's
patient size, position, rotation, exposure and noise drawn from its seed. The class
lives only in the lungs, as a radiologist would look for it:

* ``pneumonia``: a dense focal consolidation confined to one lobe of one lung;
* ``covid19``: hazy ground-glass opacities in both lungs, peripheral and mostly in the
  lower zones;
* ``not_normal``: something abnormal that is not an airspace opacity (cardiomegaly,
  a nodule, a small effusion blunting one costophrenic angle, or a pacemaker);
* ``normal``: nothing.

Each image is auto-ranged on its own percentiles, as CR processing does, and exposure
varies far more between images than an opacity shifts the mean, so global brightness
does not give the class away; nor does any fixed-position marker.

Anatomy is built on a grid of at most `WORK_SIZE` pixels and upsampled with a cubic
kernel, then noise is added at full resolution: that keeps a 1024² image at a few tens of
milliseconds on one core. Output is deterministic for a seed on a given machine.
"""

import dataclasses
import math
from typing import Final

import numpy as np
from PIL import Image

LABELS: Final[tuple[str, ...]] = ("normal", "pneumonia", "covid19", "not_normal")
WORK_SIZE: Final = 256
MAX_OPACITIES: Final = 4

# Findings draw from their own random stream, so one seed gives the same patient,
# exposure and noise whatever the label: the finding is the only difference.
_FINDING_STREAM: Final = 1
_TRIANGULAR_NOISE_STD: Final = 255.0 / math.sqrt(6.0)

# Lobes as (lung side, band of the lung's apex-to-base coordinate v). Side -1 is the
# patient's right lung, drawn on the image's left as in a PA film.
_LOBES: Final[tuple[tuple[int, float, float], ...]] = (
    (-1, 0.0, 0.40),   # right upper lobe, down to the horizontal fissure
    (-1, 0.40, 0.72),  # right middle lobe
    (-1, 0.55, 1.05),  # right lower lobe
    (1, 0.0, 0.55),    # left upper lobe with lingula
    (1, 0.50, 1.05),   # left lower lobe
)


@dataclasses.dataclass(frozen=True)
class Radiograph:
    """Rendered pixels and where the airspace opacities are.

    `opacity_boxes` holds one (x, y, width, height) pixel box per pneumonia or COVID-19
    opacity, the way RSNA annotates lung opacities; it is empty for other labels.
    """

    pixels: np.ndarray
    opacity_boxes: tuple[tuple[float, float, float, float], ...]


@dataclasses.dataclass(frozen=True)
class _Lung:
    """Coordinates local to one lung: u runs medial (0) to lateral (1), v apex (0) to base (1)."""

    u: np.ndarray
    v: np.ndarray
    mask: np.ndarray


def render_chest(rng_seed: int, label: str, size: int) -> np.ndarray:
    """Renders a `size`² uint16 chest radiograph of class `label` (one of `LABELS`)."""
    return render_radiograph(rng_seed, label, size).pixels


def render_radiograph(rng_seed: int, label: str, size: int, num_opacities: int = 1) -> Radiograph:
    """Renders a radiograph and the boxes of its opacities.

    `num_opacities` (1 to `MAX_OPACITIES`) applies to pneumonia only: the first is the
    lobar consolidation, further ones are smaller consolidations in other lobes, like
    the multi-box patients of RSNA.
    """
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {LABELS}")
    if size < 16:
        raise ValueError(f"image size must be at least 16 pixels, got {size}")
    if not 1 <= num_opacities <= MAX_OPACITIES:
        raise ValueError(f"num_opacities must be in [1, {MAX_OPACITIES}], got {num_opacities}")
    rng = np.random.default_rng(rng_seed)
    finding_rng = np.random.default_rng((rng_seed, _FINDING_STREAM))
    work = min(size, WORK_SIZE)
    x, y = _patient_coordinates(rng, work)
    lungs = (_lung(x, y, side=-1, rng=rng), _lung(x, y, side=1, rng=rng))
    cardiomegaly = label == "not_normal" and finding_rng.random() < 0.3
    heart = _heart(x, y, rng, scale=finding_rng.uniform(1.35, 1.5) if cardiomegaly else 1.0)

    density = _soft_tissue(x, y) + _mediastinum(x, y, heart) + _bones(x, y, rng)
    lung_air = sum(lung.mask for lung in lungs) * rng.uniform(0.45, 0.55)
    lung_air = lung_air * (1.0 - 0.75 * heart) * (1.0 - 0.5 * _vascular_markings(x, y, rng))
    lung_air = lung_air * (1.0 - 0.12 * _smooth_noise(rng, work, cells=24))

    boxes: tuple[tuple[float, float, float, float], ...] = ()
    if label == "pneumonia":
        opacity, boxes = _consolidations(lungs, finding_rng, num_opacities, work)
    elif label == "covid19":
        opacity, boxes = _ground_glass(lungs, finding_rng, work)
    elif label == "not_normal" and not cardiomegaly:
        opacity = _non_opacity_finding(x, y, lungs, finding_rng)
    else:
        opacity = np.zeros_like(x)
    tissue = density - lung_air * (1.0 - np.clip(opacity, 0.0, 1.0))
    metal = 0.45 * np.clip(opacity - 1.0, 0.0, None)

    image = _expose(tissue, metal, rng)
    if size != work:
        image = _resize(image, size)
    scale = size / work
    return Radiograph(
        pixels=_add_noise_and_quantise(image, rng),
        opacity_boxes=tuple(tuple(round(c * scale, 1) for c in box) for box in boxes),
    )


def _patient_coordinates(rng: np.random.Generator, work: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel grid mapped to patient coordinates after random size, shift and tilt.

    x runs across the chest (about ±0.5 at the body edge), y from the neck (-0.5) to the
    upper abdomen (+0.5).
    """
    grid = (np.arange(work, dtype=np.float32) + 0.5) / work - 0.5
    gx, gy = np.meshgrid(grid, grid)
    scale = rng.uniform(0.9, 1.12)
    angle = math.radians(rng.uniform(-4.0, 4.0))
    dx, dy = rng.uniform(-0.05, 0.05), rng.uniform(-0.04, 0.06)
    cos, sin = math.cos(angle), math.sin(angle)
    x = ((gx - dx) * cos + (gy - dy) * sin) / scale
    y = (-(gx - dx) * sin + (gy - dy) * cos) / scale
    return x, y


def _smoothstep(edge0: float, edge1: float, t: np.ndarray) -> np.ndarray:
    t = np.clip((t - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _band(distance: np.ndarray, half_width: float, softness: float) -> np.ndarray:
    """1 inside |distance| < half_width, fading to 0 over `softness`."""
    return 1.0 - _smoothstep(half_width, half_width + softness, np.abs(distance))


def _soft_tissue(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Path length through the body: thickest in the middle, fading towards the skin."""
    half_width = 0.1 + 0.37 * _smoothstep(-0.56, -0.4, y) + 0.02 * np.clip(y, 0.0, None)
    ratio = np.clip(1.0 - (x / half_width) ** 2, 0.0, 1.0)
    return 0.35 * _smoothstep(0.0, 0.04, ratio) + 0.45 * np.sqrt(ratio)


def _lung(x: np.ndarray, y: np.ndarray, side: int, rng: np.random.Generator) -> _Lung:
    medial = 0.05 + rng.uniform(-0.01, 0.01)
    width = 0.36 + rng.uniform(-0.02, 0.02)
    apex = -0.39 + rng.uniform(-0.02, 0.02)
    height = 0.6 + rng.uniform(-0.04, 0.04) - (0.03 if side < 0 else 0.0)
    u = (side * x - medial) / width
    v = (y - apex) / height
    lateral_edge = 1.0 - 0.55 * (1.0 - np.clip(v, 0.0, 1.0)) ** 2.5
    apex_edge = 1.2 * (u - 0.45) ** 2
    dome = 1.0 - 0.16 * (1.0 - ((u - 0.55) / 0.6) ** 2) + 0.1 * np.clip(u - 0.85, 0.0, None)
    soft = 0.025
    mask = (_smoothstep(0.0, soft, u) * _smoothstep(-soft, 0.0, lateral_edge - u)
            * _smoothstep(0.0, soft * 2, v - apex_edge) * _smoothstep(-soft, 0.0, dome - v))
    depth = (_smoothstep(0.0, 0.3, u) * _smoothstep(0.0, 0.25, lateral_edge - u)
             * _smoothstep(0.0, 0.3, v - apex_edge) * _smoothstep(0.0, 0.2, dome - v))
    return _Lung(u=u, v=v, mask=mask * (0.6 + 0.4 * depth))


def _heart(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    cx, cy = 0.05 + rng.uniform(-0.015, 0.015), 0.06 + rng.uniform(-0.02, 0.02)
    rx, ry = (0.17 + rng.uniform(-0.015, 0.015)) * scale, 0.12 * (1.0 + 0.4 * (scale - 1.0))
    tilt = math.radians(rng.uniform(15.0, 30.0))
    xr = (x - cx - 0.4 * (scale - 1.0) * rx) * math.cos(tilt) + (y - cy) * math.sin(tilt)
    yr = -(x - cx) * math.sin(tilt) + (y - cy) * math.cos(tilt)
    radius = np.sqrt((xr / rx) ** 2 + (yr / ry) ** 2)
    return 1.0 - _smoothstep(0.9, 1.05, radius)


def _mediastinum(x: np.ndarray, y: np.ndarray, heart: np.ndarray) -> np.ndarray:
    """Mediastinum, spine, aortic knob and hila; the trachea is an air column."""
    mediastinum = _band(x - 0.01, 0.05, 0.025) * _smoothstep(-0.45, -0.3, y)
    spine = _band(x, 0.035, 0.01) * (0.7 + 0.3 * np.cos(y * 2 * math.pi / 0.05) ** 2)
    aortic_knob = 1.0 - _smoothstep(0.025, 0.045, np.hypot(x - 0.075, y + 0.17))
    hila = sum(1.0 - _smoothstep(0.0, 0.07, np.hypot(x - side * 0.1, y + 0.03)) for side in (-1, 1))
    trachea = _band(x, 0.014, 0.006) * (1.0 - _smoothstep(-0.22, -0.15, y))
    return 0.1 * mediastinum + 0.07 * spine + 0.1 * aortic_knob + 0.1 * hila + 0.06 * heart - 0.08 * trachea


def _bones(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Clavicles and the posterior and anterior rib arcs of both sides."""
    t = (np.abs(x) - 0.04) / 0.38
    inside = _smoothstep(-0.05, 0.02, t) * (1.0 - _smoothstep(0.98, 1.1, t))
    clavicle_line = -0.35 + rng.uniform(-0.02, 0.02) - 0.05 * t + 0.025 * np.sin(math.pi * t)
    clavicles = _band(y - clavicle_line, 0.014, 0.008) * _smoothstep(0.0, 0.04, t) * (1.0 - _smoothstep(0.95, 1.05, t))

    first_rib = -0.4 + rng.uniform(-0.015, 0.015)
    spacing = 0.058 + rng.uniform(-0.004, 0.004)
    posterior = (y - (first_rib - 0.06 * t + 0.2 * t * t)) / spacing
    posterior = posterior + 0.06 * posterior ** 2
    anterior = (y - (first_rib + 0.12 + 0.16 * (1.0 - t) - 0.05 * t * t)) / (spacing * 1.25)
    ribs = (_rib_profile(posterior, 10) + 0.35 * _rib_profile(anterior, 6)) * inside
    return 0.2 * clavicles + 0.07 * ribs


def _rib_profile(phase: np.ndarray, count: int) -> np.ndarray:
    """Periodic rib bands with brighter cortical edges, `count` of them from phase 0."""
    frac = phase - np.floor(phase)
    rib = _band(frac - 0.3, 0.16, 0.05) * (0.8 + 0.35 * _band(np.abs(frac - 0.3) - 0.15, 0.0, 0.04))
    return rib * _smoothstep(-0.2, 0.0, phase) * (1.0 - _smoothstep(count - 0.2, count, phase))


def _vascular_markings(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Branching-looking streaks radiating from each hilum and tapering to the periphery."""
    markings = np.zeros_like(x)
    for side in (-1, 1):
        dx, dy = x - side * 0.1, y + 0.04
        radius = np.hypot(dx, dy)
        angle = np.arctan2(dy, side * dx) + 0.6 * radius
        bins = 48
        profile = rng.random(bins + 1).astype(np.float32) ** 3
        position = (angle / (2 * math.pi) + 0.5) * bins
        index = np.clip(position.astype(np.int32), 0, bins - 1)
        weight = position - index
        streaks = profile[index] * (1.0 - weight) + profile[index + 1] * weight
        markings += streaks * np.exp(-radius / 0.16) * _smoothstep(0.02, 0.06, radius)
    return np.clip(markings, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, work: int, cells: int) -> np.ndarray:
    """Smooth random field in [0, 1] with features about work/cells pixels across."""
    coarse = rng.random((cells, cells), dtype=np.float32)
    return _resize(coarse, work)


def _blob(lung: _Lung, rng: np.random.Generator, centre: tuple[float, float],
          radius: tuple[float, float], irregularity: float, softness: float) -> np.ndarray:
    """A rounded patch in one lung's (u, v) coordinates with an irregular border."""
    distance = np.sqrt(((lung.u - centre[0]) / radius[0]) ** 2 + ((lung.v - centre[1]) / radius[1]) ** 2)
    border = irregularity * (_smooth_noise(rng, lung.u.shape[0], cells=10) - 0.5)
    return 1.0 - _smoothstep(1.0 - softness, 1.0, distance + border)


def _consolidations(lungs: tuple[_Lung, _Lung], rng: np.random.Generator, count: int,
                    work: int) -> tuple[np.ndarray, tuple[tuple[float, float, float, float], ...]]:
    """Dense lobar consolidations, sharp only at a fissure: the first large, the others
    smaller, each in its own lobe."""
    opacity = np.zeros_like(lungs[0].u)
    texture = 0.8 + 0.2 * _smooth_noise(rng, work, cells=32)
    boxes = []
    for index, lobe in enumerate(rng.permutation(len(_LOBES))[:count]):
        side, top, bottom = _LOBES[lobe]
        lung = lungs[0] if side < 0 else lungs[1]
        lobe_mask = _smoothstep(top - 0.01, top + 0.01, lung.v) * (1.0 - _smoothstep(bottom - 0.08, bottom, lung.v))
        size = rng.uniform(0.9, 1.25) if index == 0 else rng.uniform(0.5, 0.75)
        centre = (rng.uniform(0.35, 0.7), rng.uniform(top + 0.1, min(bottom, 0.95) - 0.1))
        radius = (0.32 * size, 0.5 * (bottom - top) * size + 0.06)
        patch = _blob(lung, rng, centre, radius, irregularity=0.6, softness=0.6) * lobe_mask
        opacity = np.maximum(opacity, np.minimum(1.4 * patch, 1.0) * rng.uniform(0.8, 0.95))
        boxes.extend(_bounding_box(patch * lung.mask))
    return opacity * texture, tuple(boxes)


def _ground_glass(lungs: tuple[_Lung, _Lung], rng: np.random.Generator,
                  work: int) -> tuple[np.ndarray, tuple[tuple[float, float, float, float], ...]]:
    """Hazy, patchy opacities in both lungs, peripheral and predominantly basal."""
    opacity = np.zeros_like(lungs[0].u)
    texture = 0.55 + 0.45 * _smooth_noise(rng, work, cells=28)
    boxes = []
    sides = [0, 1] + list(rng.integers(0, 2, size=rng.integers(1, 5)))
    for side in sides:
        lung = lungs[side]
        upper_zone = rng.random() < 0.2
        centre = (rng.uniform(0.7, 0.95), rng.uniform(0.4, 0.6) if upper_zone else rng.uniform(0.62, 0.92))
        radius = (rng.uniform(0.18, 0.3), rng.uniform(0.14, 0.24))
        patch = _blob(lung, rng, centre, radius, irregularity=0.6, softness=0.7) * lung.mask
        opacity = np.maximum(opacity, patch * rng.uniform(0.55, 0.75))
        boxes.extend(_bounding_box(patch))
    return opacity * texture, tuple(boxes)


def _non_opacity_finding(x: np.ndarray, y: np.ndarray, lungs: tuple[_Lung, _Lung],
                         rng: np.random.Generator) -> np.ndarray:
    """A nodule, a small effusion or a pacemaker (cardiomegaly is drawn with the heart).

    Values above 1 mean denser than tissue: metal, or a calcified nodule.
    """
    finding = rng.integers(0, 3)
    lung = lungs[rng.integers(0, 2)]
    if finding == 0:
        centre = (rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.75))
        radius = rng.uniform(0.05, 0.08)
        nodule = 1.0 - _smoothstep(0.5, 1.0, np.hypot(lung.u - centre[0], (lung.v - centre[1]) * 0.6) / radius)
        return nodule * rng.uniform(0.85, 1.1)
    if finding == 1:
        meniscus = rng.uniform(0.82, 0.9) - 0.25 * np.clip(lung.u, 0.0, 1.0) ** 2
        return _smoothstep(meniscus - 0.02, meniscus + 0.04, lung.v)
    side = rng.choice((-1, 1))
    cx, cy = side * rng.uniform(0.22, 0.3), rng.uniform(-0.33, -0.27)
    generator = 1.0 - _smoothstep(0.9, 1.0, np.maximum(np.abs(x - cx) / 0.04, np.abs(y - cy) / 0.03))
    lead = _band(_distance_to_segment(x, y, (cx, cy), (0.0, 0.05)), 0.003, 0.003)
    return 2.2 * np.maximum(generator, lead)


def _distance_to_segment(x: np.ndarray, y: np.ndarray, start: tuple[float, float],
                         end: tuple[float, float]) -> np.ndarray:
    (x0, y0), (x1, y1) = start, end
    along = np.clip(((x - x0) * (x1 - x0) + (y - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2), 0.0, 1.0)
    return np.hypot(x - x0 - along * (x1 - x0), y - y0 - along * (y1 - y0))


def _bounding_box(patch: np.ndarray) -> list[tuple[float, float, float, float]]:
    rows, cols = np.nonzero(patch > 0.3)
    if rows.size == 0:
        return []
    return [(float(cols.min()), float(rows.min()),
             float(cols.max() - cols.min() + 1), float(rows.max() - rows.min() + 1))]


def _expose(tissue: np.ndarray, metal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Auto-ranges on the tissue's own percentiles, then applies a random tone curve.

    Metal is left out of the percentiles, as CR processing leaves it out of its
    histogram, so a pacemaker does not darken the whole image.
    """
    low, high = np.percentile(tissue, (1.0, 99.5))
    normalised = (tissue + metal - low) / max(high - low, 1e-6)
    gamma = rng.uniform(0.8, 1.25)
    contrast = rng.uniform(0.8, 0.95)
    offset = rng.uniform(0.0, 0.08)
    return np.clip(normalised, 0.0, 1.1) ** gamma * contrast + offset


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resampling of a square float image to `size`² (Pillow's single-threaded
    resampler, which is faster here than matrix products competing for BLAS threads)."""
    resized = Image.fromarray(image.astype(np.float32)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized)


def _add_noise_and_quantise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Adds detector noise and scales to uint16.

    The noise is triangular (the sum of two uniform bytes), three times cheaper to draw
    than Gaussian noise and indistinguishable from it here. Its level makes a 1024² JPEG
    Baseline DICOM about as large as an RSNA one (~155 KB at quality 90).
    """
    size = image.shape[0]
    uniform_bytes = np.frombuffer(rng.bytes(2 * size * size), dtype=np.uint8).reshape(2, size, size)
    noisy = uniform_bytes[0].astype(np.float32)  # updated in place: 1024² temporaries cost page faults
    noisy += uniform_bytes[1]
    noisy -= 255.0
    noisy *= np.float32(rng.uniform(0.008, 0.013) / _TRIANGULAR_NOISE_STD)
    noisy += image
    np.clip(noisy, 0.0, 1.0, out=noisy)
    noisy *= 65535.0
    noisy += 0.5
    return noisy.astype(np.uint16)
