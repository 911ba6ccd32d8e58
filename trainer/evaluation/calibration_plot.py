"""Reliability diagrams drawn with Pillow, in the panel layout of `trainer.evaluation.plots`.

One panel per set of predictions (a split, before or after temperature scaling), each
with one curve per class: the observed rate of the class against the mean predicted
probability in each bin (`trainer.evaluation.calibration`). A calibrated model's curves
lie on the diagonal; below it the model is overconfident. Returned as PNG bytes.
"""

import io
from collections.abc import Mapping

from PIL import Image, ImageDraw, ImageFont

from trainer.evaluation import plots
from trainer.evaluation.calibration import ReliabilityCurve

LEFT, TOP = 80, 56
DOT_RADIUS = 3


def reliability_diagrams(panels: Mapping[str, tuple[Mapping[str, ReliabilityCurve], str]]) -> bytes:
    """{panel title: ({class: curve}, caption)} side by side; the caption (e.g. the ECE) goes under the title."""
    figure = Image.new("RGB", (plots.PANEL_SIZE * max(len(panels), 1), plots.PANEL_SIZE), plots.BACKGROUND)
    for index, (title, (curves, caption)) in enumerate(panels.items()):
        figure.paste(_panel(title, curves, caption), (index * plots.PANEL_SIZE, 0))
    buffer = io.BytesIO()
    figure.save(buffer, format="PNG")
    return buffer.getvalue()


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _panel(title: str, curves: Mapping[str, ReliabilityCurve], caption: str) -> Image.Image:
    panel = Image.new("RGB", (plots.PANEL_SIZE, plots.PANEL_SIZE), plots.BACKGROUND)
    draw = ImageDraw.Draw(panel)
    right, bottom = LEFT + plots.PLOT_SIZE, TOP + plots.PLOT_SIZE

    def to_pixels(predicted: float, observed: float) -> tuple[float, float]:
        return LEFT + predicted * plots.PLOT_SIZE, bottom - observed * plots.PLOT_SIZE

    draw.text((plots.PANEL_SIZE // 2, 14), f"{title}: reliability", fill=plots.INK, font=_font(16), anchor="mm")
    draw.text((plots.PANEL_SIZE // 2, 34), caption, fill=plots.INK, font=_font(12), anchor="mm")
    draw.rectangle((LEFT, TOP, right, bottom), outline=plots.INK)
    for tick in (0.0, 0.5, 1.0):
        x, y = to_pixels(tick, tick)
        draw.line((x, bottom, x, bottom + 5), fill=plots.INK)
        draw.text((x, bottom + 16), f"{tick:.1f}", fill=plots.INK, font=_font(12), anchor="mm")
        draw.line((LEFT - 5, y, LEFT, y), fill=plots.INK)
        draw.text((LEFT - 10, y), f"{tick:.1f}", fill=plots.INK, font=_font(12), anchor="rm")
    draw.text(((LEFT + right) // 2, bottom + 36), "mean predicted probability (bin)", fill=plots.INK,
              font=_font(12), anchor="mm")
    draw.text((LEFT, TOP - 6), "observed rate of the class", fill=plots.INK, font=_font(12), anchor="ls")
    for start in [step / 50 for step in range(0, 50, 2)]:
        draw.line((*to_pixels(start, start), *to_pixels(start + 0.02, start + 0.02)), fill=plots.GRID)
    for index, (name, curve) in enumerate(curves.items()):
        colour = plots.CURVE_COLOURS[index % len(plots.CURVE_COLOURS)]
        points = [to_pixels(predicted, observed)
                  for predicted, observed in zip(curve.mean_predicted, curve.observed_rate)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - DOT_RADIUS, y - DOT_RADIUS, x + DOT_RADIUS, y + DOT_RADIUS), fill=colour)
        legend_y = TOP + 14 + 20 * index
        error = "n/a" if curve.calibration_error is None else f"{curve.calibration_error:.3f}"
        draw.line((LEFT + 10, legend_y, LEFT + 30, legend_y), fill=colour, width=3)
        draw.text((LEFT + 35, legend_y), f"{name} (error {error})", fill=plots.INK, font=_font(12), anchor="lm")
    return panel
