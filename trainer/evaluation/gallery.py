"""The failure gallery: the most confident errors of each class on one PNG contact sheet.

A row per true class holds its misclassified images, the most confident first (the
highest probability of the wrongly predicted class), each as the image beside its Grad-CAM
overlay for the predicted class (`serving.gradcam.overlay`), captioned with the true and the
predicted class and that probability. Confident errors are where a shortcut shows itself
(a marker, a border, a figure caption) and where a reader learns what the model cannot do.
The sheet carries no identifier: no file name, image id or patient id.
"""

import io
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from cxr_core import contract
from serving import gradcam
from trainer.evaluation.plots import BACKGROUND, INK

ERRORS_PER_CLASS = 4
IMAGE_SIDE = 128  # Each image and overlay is drawn at this side, whatever the model's input size.
CAPTION_HEIGHT = 36
ROW_LABEL_WIDTH = 110
GAP = 8
TITLE_HEIGHT = 30


def most_confident_errors(labels: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray,
                          per_class: int = ERRORS_PER_CLASS) -> dict[str, np.ndarray]:
    """{true class: indices of up to `per_class` of its misclassified images}, most confident first.

    Confidence is the probability of the (wrongly) predicted class.

    Ties keep the images' order.
    """
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    confidence = np.asarray(probabilities)[np.arange(len(predicted)), predicted]
    chosen = {}
    for index, name in enumerate(contract.CLASS_NAMES):
        errors = np.flatnonzero((labels == index) & (predicted != index))
        chosen[name] = errors[np.argsort(-confidence[errors], kind="stable")][:per_class]
    return chosen


def contact_sheet(title: str, pixels: np.ndarray, heat_maps: np.ndarray, predicted: np.ndarray,
                  probabilities: np.ndarray, chosen: Mapping[str, np.ndarray]) -> bytes:
    """The sheet as PNG bytes: a row per class of `chosen` (from `most_confident_errors`).

    `pixels` [N, H, W] uint8 and `heat_maps` [N, H, W], each image's Grad-CAM map of its predicted class.
    """
    columns = max([len(indices) for indices in chosen.values()] + [1])
    tile_width = 2 * IMAGE_SIDE + GAP
    width = ROW_LABEL_WIDTH + columns * (tile_width + GAP)
    row_height = IMAGE_SIDE + CAPTION_HEIGHT + GAP
    sheet = Image.new("RGB", (width, TITLE_HEIGHT + len(chosen) * row_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, TITLE_HEIGHT // 2), title, fill=INK, font=_font(15), anchor="lm")
    for row, (name, indices) in enumerate(chosen.items()):
        top = TITLE_HEIGHT + row * row_height
        draw.text((GAP, top + IMAGE_SIDE // 2), f"true\n{name}", fill=INK, font=_font(14), anchor="lm")
        if not len(indices):
            draw.text((ROW_LABEL_WIDTH, top + IMAGE_SIDE // 2), "no errors", fill=INK, font=_font(13), anchor="lm")
        for column, index in enumerate(indices):
            left = ROW_LABEL_WIDTH + column * (tile_width + GAP)
            image = pixels[index]
            sheet.paste(_enlarged(np.repeat(image[..., np.newaxis], 3, axis=-1)), (left, top))
            sheet.paste(_enlarged(gradcam.overlay(image, heat_maps[index])), (left + IMAGE_SIDE + GAP, top))
            predicted_name = contract.CLASS_NAMES[predicted[index]]
            draw.text((left, top + IMAGE_SIDE + 4),
                      f"predicted {predicted_name}\np({predicted_name}) {probabilities[index, predicted[index]]:.2f}",
                      fill=INK, font=_font(12))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def write_gallery(path: str, title: str, pixels: np.ndarray, heat_maps: np.ndarray, labels: np.ndarray,
                  predicted: np.ndarray, probabilities: np.ndarray,
                  per_class: int = ERRORS_PER_CLASS) -> dict[str, np.ndarray]:
    """Chooses the errors, draws the sheet and writes it to `path` (local or gs://); returns the choice."""
    chosen = most_confident_errors(labels, predicted, probabilities, per_class)
    with tf.io.gfile.GFile(path, "wb") as output:
        output.write(contact_sheet(title, pixels, heat_maps, predicted, probabilities, chosen))
    return chosen


def _enlarged(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(rgb.astype(np.uint8), mode="RGB").resize((IMAGE_SIDE, IMAGE_SIDE),
                                                                    Image.Resampling.BILINEAR)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)
