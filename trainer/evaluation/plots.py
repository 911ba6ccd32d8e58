"""Confusion-matrix and ROC figures drawn with Pillow (no plotting library needed).

Each figure has one panel per evaluated split, side by side, and is returned as PNG bytes.
"""

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL_SIZE = 460
CELL_SIZE = 90
MARGIN_LEFT = 110
MARGIN_TOP = 60
PLOT_SIZE = 340
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
GRID = (200, 200, 200)
HEAT = (31, 119, 180)
CURVE_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def confusion_matrices(matrices: dict[str, np.ndarray], class_names: tuple[str, ...],
                       captions: dict[str, str] | None = None) -> bytes:
    """Counts and row percentages (sensitivity on the diagonal), shaded by row fraction.

    `captions` adds lines under each split's matrix (e.g. the accuracy and its interval).
    """
    return _side_by_side([_confusion_panel(split, matrix, class_names, (captions or {}).get(split, ""))
                          for split, matrix in matrices.items()])


def roc_curves(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray, str]]]) -> bytes:
    """One-vs-rest ROC curves: {split: {class: (false positive rates, true positive rates, AUC text)}}.

    The AUC text goes in the legend as given, e.g. `0.87 [0.62–0.96]`.
    """
    return _side_by_side([_roc_panel(split, by_class) for split, by_class in curves.items()])


def _font(size: int = 14) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _confusion_panel(split: str, matrix: np.ndarray, class_names: tuple[str, ...], caption: str) -> Image.Image:
    panel = Image.new("RGB", (PANEL_SIZE, PANEL_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(panel)
    draw.text((PANEL_SIZE // 2, 20), f"{split}: confusion matrix (n={int(matrix.sum())})",
              fill=INK, font=_font(16), anchor="mm")
    row_totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fractions = matrix / row_totals
    for row, name in enumerate(class_names):
        draw.text((MARGIN_LEFT - 8, MARGIN_TOP + row * CELL_SIZE + CELL_SIZE // 2), name,
                  fill=INK, font=_font(), anchor="rm")
        draw.text((MARGIN_LEFT + row * CELL_SIZE + CELL_SIZE // 2, MARGIN_TOP + len(class_names) * CELL_SIZE + 14),
                  name, fill=INK, font=_font(), anchor="mm")
        for column in range(len(class_names)):
            left, top = MARGIN_LEFT + column * CELL_SIZE, MARGIN_TOP + row * CELL_SIZE
            fraction = float(fractions[row, column])
            colour = tuple(round(255 + (channel - 255) * fraction) for channel in HEAT)
            draw.rectangle((left, top, left + CELL_SIZE, top + CELL_SIZE), fill=colour, outline=GRID)
            text_colour = BACKGROUND if fraction > 0.5 else INK
            draw.text((left + CELL_SIZE // 2, top + CELL_SIZE // 2),
                      f"{int(matrix[row, column])}\n{fraction:.0%}", fill=text_colour, font=_font(),
                      anchor="mm", align="center")
    draw.text((PANEL_SIZE // 2, MARGIN_TOP + len(class_names) * CELL_SIZE + 44),
              "rows: true class, columns: predicted class",
              fill=INK, font=_font(12), anchor="mm")
    draw.multiline_text((PANEL_SIZE // 2, MARGIN_TOP + len(class_names) * CELL_SIZE + 66), caption,
                        fill=INK, font=_font(12), anchor="ma", align="center")
    return panel


def _roc_panel(split: str, by_class: dict[str, tuple[np.ndarray, np.ndarray, str]]) -> Image.Image:
    panel = Image.new("RGB", (PANEL_SIZE, PANEL_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(panel)
    left, top = 80, 56
    right, bottom = left + PLOT_SIZE, top + PLOT_SIZE

    def to_pixels(false_positive_rate: float, true_positive_rate: float) -> tuple[float, float]:
        return left + false_positive_rate * PLOT_SIZE, bottom - true_positive_rate * PLOT_SIZE

    draw.text((PANEL_SIZE // 2, 18), f"{split}: one-vs-rest ROC, AUC [95% CI]", fill=INK, font=_font(16),
              anchor="mm")
    draw.rectangle((left, top, right, bottom), outline=INK)
    for tick in (0.0, 0.5, 1.0):
        x, y = to_pixels(tick, tick)
        draw.line((x, bottom, x, bottom + 5), fill=INK)
        draw.text((x, bottom + 16), f"{tick:.1f}", fill=INK, font=_font(12), anchor="mm")
        draw.line((left - 5, y, left, y), fill=INK)
        draw.text((left - 10, y), f"{tick:.1f}", fill=INK, font=_font(12), anchor="rm")
    draw.text(((left + right) // 2, bottom + 36), "false positive rate (1 - specificity)",
              fill=INK, font=_font(12), anchor="mm")
    draw.text((left, top - 8), "true positive rate (sensitivity)", fill=INK, font=_font(12), anchor="ls")
    for start in np.arange(0.0, 1.0, 0.04):
        draw.line((*to_pixels(start, start), *to_pixels(start + 0.02, start + 0.02)), fill=GRID, width=1)
    for index, (name, (false_positive_rates, true_positive_rates, auc_text)) in enumerate(by_class.items()):
        colour = CURVE_COLOURS[index % len(CURVE_COLOURS)]
        points = [to_pixels(fpr, tpr) for fpr, tpr in zip(false_positive_rates, true_positive_rates)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2, joint="curve")
        legend_y = bottom - 20 * (len(by_class) - index)
        draw.line((right - 215, legend_y, right - 195, legend_y), fill=colour, width=3)
        draw.text((right - 190, legend_y), f"{name} {auc_text}", fill=INK, font=_font(12), anchor="lm")
    return panel


def _side_by_side(panels: list[Image.Image]) -> bytes:
    figure = Image.new("RGB", (PANEL_SIZE * max(len(panels), 1), PANEL_SIZE), BACKGROUND)
    for index, panel in enumerate(panels):
        figure.paste(panel, (index * PANEL_SIZE, 0))
    buffer = io.BytesIO()
    figure.save(buffer, format="PNG")
    return buffer.getvalue()
