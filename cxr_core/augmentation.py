"""Every augmentation parameter, and the class-balanced, deterministic copies of training images.

The training set is augmented twice, with the ranges of `PARAMETERS`: offline, the
preprocess job writes a class's extra copies of each image (`augment`, here, with numpy
and Pillow); online, the trainer transforms every batch anew (`trainer.augment`, with
TensorFlow, which this package may not import). A class's multiplier is the total number
of examples per source image, the original included. Each extra copy gets a random
rotation, zoom and brightness factor, derived from (seed, image id, copy index) only, so
a copy has the same bytes on any runner, worker or retry.
"""

import dataclasses
import hashlib
import math

import numpy as np
from PIL import Image

from cxr_core import contract


@dataclasses.dataclass(frozen=True)
class AugmentationParameters:
    """The random ranges of the offline copies and of the online batches, in one place."""

    # Patients lie or stand a little tilted on the detector. ±15° is the seed project's setting;
    # REFLECT_MARGIN below assumes at most 45°. Offline and online.
    max_rotation_degrees: float = 15.0
    # Body size and distance to the detector vary; > 1 zooms in. The seed project's ±10%;
    # REFLECT_MARGIN below assumes a smallest zoom of 0.9. Offline and online.
    zoom_range: tuple[float, float] = (0.9, 1.1)
    # Exposure varies between films: the copies' gray levels are multiplied by a factor in this
    # range, the seed project's setting. Offline only.
    offline_brightness_factor_range: tuple[float, float] = (0.8, 1.2)
    # Framing already centres the body, so only a small offset remains to vary: up to this
    # fraction of the side on each axis. Online only.
    online_max_shift_fraction: float = 0.05
    # Exposure again, per batch: an added shift of up to this fraction of the 8-bit range,
    # on top of the copies' factor. Online only.
    online_max_brightness_delta: float = 0.1
    # Detectors and windowing differ in contrast: a factor around each image's own mean,
    # as wide as the copies' brightness factor. Online only.
    online_contrast_range: tuple[float, float] = (0.8, 1.2)


PARAMETERS = AugmentationParameters()
# A corner of the output maps at most (1/√2)/min zoom ≈ 0.79 of a side from the centre
# (at 45°; 15° needs less), so a reflected margin of 0.3 of a side covers every copy.
REFLECT_MARGIN = 0.3
AUTO = "auto"
DEFAULT_MULTIPLIERS = "normal=2,pneumonia=2,covid19=30"


def parse_multipliers(text: str) -> dict[str, int] | None:
    """`"normal=2,pneumonia=2,covid19=30"` → dict; `"auto"` → None (decided from counts)."""
    if text.strip().lower() == AUTO:
        return None
    multipliers = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in contract.CLASS_IDS or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(
                f"--augment must be 'auto' or class=N pairs with N ≥ 1 for classes "
                f"{', '.join(contract.CLASS_NAMES)}; got {text!r}")
        multipliers[name] = int(value)
    missing = set(contract.CLASS_NAMES) - multipliers.keys()
    if missing:
        raise ValueError(f"--augment lacks a multiplier for {sorted(missing)}")
    return multipliers


def balanced_multipliers(train_originals: dict[str, int]) -> dict[str, int]:
    """Multipliers that bring every class near the largest one's original count."""
    largest = max(train_originals.values(), default=0)
    return {name: max(1, round(largest / train_originals[name])) if train_originals.get(name) else 1
            for name in contract.CLASS_NAMES}


def _rng(seed: int, image_id: str, copy_index: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\x1f{image_id}\x1f{copy_index}".encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def augment(pixels: np.ndarray, seed: int, image_id: str, copy_index: int) -> np.ndarray:
    """One augmented copy of a uint8 grayscale square image; same inputs, same output."""
    rng = _rng(seed, image_id, copy_index)
    angle = math.radians(rng.uniform(-PARAMETERS.max_rotation_degrees, PARAMETERS.max_rotation_degrees))
    zoom = rng.uniform(*PARAMETERS.zoom_range)
    brightness = rng.uniform(*PARAMETERS.offline_brightness_factor_range)
    height, width = pixels.shape
    # Corners uncovered by the rotation are filled by reflecting the image, not with black:
    # black corners on most copies of the most-multiplied class would be a cue of its own.
    margin_y, margin_x = math.ceil(height * REFLECT_MARGIN), math.ceil(width * REFLECT_MARGIN)
    padded = np.pad(pixels, ((margin_y, margin_y), (margin_x, margin_x)), mode="reflect")
    center_x, center_y = margin_x + width / 2.0, margin_y + height / 2.0
    # Pillow maps each output pixel back to its input position: the inverse transform,
    # here from the output's own grid into the padded image.
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    inverse = (cos, sin, center_x - cos * width / 2.0 - sin * height / 2.0,
               -sin, cos, center_y + sin * width / 2.0 - cos * height / 2.0)
    transformed = Image.fromarray(padded, mode="L").transform(
        (width, height), Image.Transform.AFFINE, inverse, resample=Image.Resampling.BILINEAR)
    brightened = np.asarray(transformed, dtype=np.float32) * brightness
    return np.clip(np.rint(brightened), 0, 255).astype(np.uint8)
