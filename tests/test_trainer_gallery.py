"""The failure gallery: the most confident errors of each class, on one PNG of the expected size."""

import numpy as np
from PIL import Image

from trainer.evaluation import gallery

# True class, predicted class, probability of the predicted class.
CASES = [
    (0, 0, 0.99),  # right: never chosen, however confident
    (0, 1, 0.60),
    (0, 2, 0.95),
    (0, 1, 0.70),
    (0, 2, 0.40),
    (0, 1, 0.90),
    (0, 2, 0.50),
    (1, 0, 0.80),
    (1, 1, 0.30),
    (2, 2, 0.97),
]


def cases() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.array([case[0] for case in CASES])
    predicted = np.array([case[1] for case in CASES])
    probabilities = np.full((len(CASES), 3), 0.0)
    for index, (_, guess, probability) in enumerate(CASES):
        probabilities[index] = (1 - probability) / 2
        probabilities[index, guess] = probability
    return labels, predicted, probabilities


def test_the_chosen_errors_are_the_most_confident_of_each_class():
    chosen = gallery.most_confident_errors(*cases(), per_class=4)
    assert {name: indices.tolist() for name, indices in chosen.items()} == {
        "normal": [2, 5, 3, 1],  # 0.95, 0.90, 0.70, 0.60; 0.50 and 0.40 do not fit
        "pneumonia": [7],
        "covid19": [],
    }


def test_the_sheet_is_a_png_with_a_row_per_class_and_a_tile_per_error(tmp_path):
    labels, predicted, probabilities = cases()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (len(CASES), 64, 64), dtype=np.uint8)
    heat_maps = rng.random((len(CASES), 64, 64))
    path = tmp_path / "errors.png"
    chosen = gallery.write_gallery(str(path), "test: most confident errors", pixels, heat_maps, labels, predicted,
                                   probabilities, per_class=3)
    assert [len(indices) for indices in chosen.values()] == [3, 1, 0]
    image = Image.open(path)
    assert image.format == "PNG"
    tile = 2 * gallery.IMAGE_SIDE + gallery.GAP
    row = gallery.IMAGE_SIDE + gallery.CAPTION_HEIGHT + gallery.GAP
    assert image.size == (gallery.ROW_LABEL_WIDTH + 3 * (tile + gallery.GAP), gallery.TITLE_HEIGHT + 3 * row)
    # The first tile of the first row is the most confident error's image, enlarged.
    first = np.asarray(image)[gallery.TITLE_HEIGHT:gallery.TITLE_HEIGHT + gallery.IMAGE_SIDE,
                              gallery.ROW_LABEL_WIDTH:gallery.ROW_LABEL_WIDTH + gallery.IMAGE_SIDE, 0]
    expected = np.asarray(Image.fromarray(pixels[2]).resize((gallery.IMAGE_SIDE,) * 2, Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(first, expected)
