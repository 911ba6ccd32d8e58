"""The thumbnail baseline: what it sees, and that it learns a layout and nothing from noise."""

import numpy as np

from cxr_core import contract
from trainer.evaluation import pixel_baseline

SIZE = 64


def layout_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """Noise images whose class is where a bright band lies (left, middle, right third)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(40, 120, (len(labels), SIZE, SIZE), dtype=np.uint8)
    third = SIZE // 3
    for image, label in zip(images, labels):
        image[:, label * third:(label + 1) * third] += 80
    return images


def test_thumbnails_are_small_standardised_and_blind_to_windowing():
    images = np.random.default_rng(0).integers(0, 100, (3, SIZE, SIZE, 1), dtype=np.uint8)
    rows = pixel_baseline.thumbnails(images)
    assert rows.shape == (3, pixel_baseline.THUMBNAIL_SIZE ** 2) and rows.dtype == np.float32
    np.testing.assert_allclose(rows.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(rows.std(axis=1), 1, atol=1e-4)
    # Another window of the same image (gain and offset) gives the same thumbnail.
    np.testing.assert_allclose(pixel_baseline.thumbnails(images * 2 + 10), rows, atol=1e-4)


def test_thumbnails_of_batches_equal_thumbnails_of_the_whole():
    images = np.random.default_rng(1).integers(0, 256, (5, SIZE, SIZE), dtype=np.uint8)
    np.testing.assert_array_equal(pixel_baseline.thumbnails_of_batches([images[:2], images[2:]]),
                                  pixel_baseline.thumbnails(images))


def test_the_baseline_learns_a_layout():
    train_labels = np.tile(np.arange(3), 40)
    val_labels = np.tile(np.arange(3), 10)
    train = pixel_baseline.thumbnails(layout_images(train_labels, 1))
    val = pixel_baseline.thumbnails(layout_images(val_labels, 2))
    baseline = pixel_baseline.fit(train, train_labels, val, val_labels)
    assert baseline.regularisation in pixel_baseline.REGULARISATION_GRID
    probabilities = baseline.probabilities(val)
    assert probabilities.shape == (len(val_labels), contract.NUM_CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-6)
    assert pixel_baseline.macro_roc_auc(val_labels, probabilities) > 0.99


def test_the_baseline_learns_nothing_from_noise():
    rng = np.random.default_rng(3)
    train_labels, val_labels = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    train = pixel_baseline.thumbnails(rng.integers(0, 256, (300, SIZE, SIZE), dtype=np.uint8))
    val = pixel_baseline.thumbnails(rng.integers(0, 256, (300, SIZE, SIZE), dtype=np.uint8))
    baseline = pixel_baseline.fit(train, train_labels, val, val_labels)
    assert abs(pixel_baseline.macro_roc_auc(val_labels, baseline.probabilities(val)) - 0.5) < 0.1


def test_a_class_missing_from_train_gets_probability_zero():
    labels = np.tile(np.arange(2), 30)  # no covid19
    features = pixel_baseline.thumbnails(layout_images(labels, 4))
    probabilities = pixel_baseline.fit(features, labels, features, labels).probabilities(features)
    assert np.all(probabilities[:, contract.CLASS_IDS["covid19"]] == 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-6)
