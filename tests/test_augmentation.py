"""Augmentation: deterministic, bounded, and only as strong as the seed project's."""

import numpy as np
import pytest

from cxr_core import augmentation


@pytest.fixture
def chest():
    yy, xx = np.mgrid[0:64, 0:64]
    return (96 + 64 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.uint8)


def test_same_seed_image_and_copy_give_identical_bytes(chest):
    first = augmentation.augment(chest, 7, "rsna-abc", 3)
    assert first.tobytes() == augmentation.augment(chest.copy(), 7, "rsna-abc", 3).tobytes()
    assert first.dtype == np.uint8 and first.shape == chest.shape


def test_copies_differ_by_index_seed_and_image(chest):
    base = augmentation.augment(chest, 7, "rsna-abc", 3)
    for other in (augmentation.augment(chest, 7, "rsna-abc", 4), augmentation.augment(chest, 8, "rsna-abc", 3),
                  augmentation.augment(chest, 7, "rsna-abd", 3)):
        assert not np.array_equal(base, other)


def test_brightness_stays_within_the_configured_range():
    flat = np.full((32, 32), 100, dtype=np.uint8)
    centres = [int(augmentation.augment(flat, 1, "img", copy)[16, 16]) for copy in range(1, 200)]
    assert 80 <= min(centres) < 88 and 112 < max(centres) <= 120


def test_rotation_and_zoom_keep_the_centre_and_move_the_edges(chest):
    copies = [augmentation.augment(chest, 1, "img", copy) for copy in range(1, 20)]
    ratios = [float(copy[30:34, 30:34].mean()) / float(chest[30:34, 30:34].mean()) for copy in copies]
    assert all(0.75 <= ratio <= 1.25 for ratio in ratios)
    assert any(np.abs(copy[:8].astype(int) - chest[:8]).mean() > 10 for copy in copies)


def test_multiplier_flag_parsing():
    assert augmentation.parse_multipliers("normal=2,pneumonia=2,covid19=30") == {
        "normal": 2, "pneumonia": 2, "covid19": 30}
    assert augmentation.parse_multipliers("auto") is None
    for bad in ("normal=2,pneumonia=2", "normal=0,pneumonia=1,covid19=1", "cat=2", "normal=x"):
        with pytest.raises(ValueError, match="--augment"):
            augmentation.parse_multipliers(bad)


def test_auto_multipliers_balance_to_the_largest_class():
    assert augmentation.balanced_multipliers({"normal": 6000, "pneumonia": 4800, "covid19": 120}) == {
        "normal": 1, "pneumonia": 1, "covid19": 50}
    assert augmentation.balanced_multipliers({"normal": 10}) == {"normal": 1, "pneumonia": 1, "covid19": 1}


def test_copies_have_no_black_corners():
    """Rotated copies are filled by reflection: black corners would mark the most-copied class."""
    flat = np.full((32, 32), 200, dtype=np.uint8)
    darkest = min(int(augmentation.augment(flat, 1, "img", copy).min()) for copy in range(1, 50))
    assert darkest >= int(200 * augmentation.PARAMETERS.offline_brightness_factor_range[0]) - 1
