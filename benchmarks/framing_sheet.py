"""A contact sheet of real radiographs before and after the framing every source goes through.

Each cell pairs an image as published (the uniform-border box outlined in green, the square the
model sees in red) with what `cxr_core.imaging.preprocess_image` makes of it, and the share of the
published area kept. Per class, half the cells are the images the framing trims most, half the
first in sorted order, so a reader sees both the typical image and the worst case.

    python -m benchmarks.framing_sheet --csv ../shared/real-cxr/labels.csv --output sheet.png \\
        [--sources nih-chestxray8]

docs/real_framing.png is the sheet of real-cxr's NIH images only: they are CC0, while the licences
of the ieee8023 figures (CC BY-NC-SA, CC BY-NC-ND or none given) do not allow copying them into this
repository. `make real-data` writes the sheet of every class next to its outputs.
"""

import argparse
import csv
import io
import os

import numpy as np
from PIL import Image, ImageDraw

from cxr_core import imaging

CELLS = 48
COLUMNS = 6
THUMBNAIL = 88
CAPTION = 14
GAP = 10
BOX_COLOUR = (0, 200, 0)
SQUARE_COLOUR = (230, 0, 0)


def kept_share(gray: np.ndarray) -> float:
    """Share of the published area inside the square the framing keeps."""
    _, _, side = imaging.body_square(gray)
    return side * side / gray.size


def choose(rows: list[dict], shares: dict[str, float], cells: int) -> list[dict]:
    """Per class, the most trimmed half and the first half in sorted order (no image twice)."""
    labels = sorted({row["label"] for row in rows})
    per_class = cells // len(labels)
    chosen = []
    for label in labels:
        of_class = sorted((row for row in rows if row["label"] == label), key=lambda row: row["image_uri"])
        most_trimmed = sorted(of_class, key=lambda row: shares[row["image_uri"]])[:per_class // 2]
        typical = [row for row in of_class if row not in most_trimmed][:per_class - len(most_trimmed)]
        chosen += most_trimmed + typical
    return chosen


def cell(path: str, label: str) -> Image.Image:
    """Before (outlined) and after, side by side, over a caption."""
    with open(path, "rb") as handle:
        data = handle.read()
    gray = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    top, bottom, left, right = imaging.body_box(gray)
    square_top, square_left, side = imaging.body_square(gray)
    before = Image.fromarray(gray).convert("RGB")
    draw = ImageDraw.Draw(before)
    width = max(2, max(gray.shape) // 128)
    draw.rectangle([left, top, right - 1, bottom - 1], outline=BOX_COLOUR, width=width)
    draw.rectangle([square_left, square_top, square_left + side - 1, square_top + side - 1],
                   outline=SQUARE_COLOUR, width=width)
    before.thumbnail((THUMBNAIL, THUMBNAIL))
    after = Image.fromarray(imaging.preprocess_image(data, THUMBNAIL, path).pixels).convert("RGB")
    tile = Image.new("RGB", (2 * THUMBNAIL + 2, THUMBNAIL + CAPTION), "white")
    tile.paste(before, ((THUMBNAIL - before.width) // 2, (THUMBNAIL - before.height) // 2))
    tile.paste(after, (THUMBNAIL + 2, 0))
    ImageDraw.Draw(tile).text((2, THUMBNAIL + 1), f"{label}, {kept_share(gray):.0%} kept", fill="black")
    return tile


def contact_sheet(csv_path: str, sources: set[str] | None = None, cells: int = CELLS) -> Image.Image:
    """The sheet of `cells` images of the CSV (only `sources`, when given)."""
    root = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if not sources or row.get("source") in sources]
    if not rows:
        raise ValueError(f"{csv_path} lists no image of the sources {sorted(sources or [])}")
    paths = {row["image_uri"]: os.path.join(root, row["image_uri"]) for row in rows}
    shares = {uri: kept_share(np.asarray(Image.open(path).convert("L"))) for uri, path in paths.items()}
    tiles = [cell(paths[row["image_uri"]], row["label"]) for row in choose(rows, shares, cells)]
    tile_width, tile_height = tiles[0].size
    rows_of_tiles = -(-len(tiles) // COLUMNS)
    sheet = Image.new("RGB", (COLUMNS * (tile_width + GAP) - GAP, rows_of_tiles * (tile_height + GAP) - GAP), "white")
    for index, tile in enumerate(tiles):
        sheet.paste(tile, ((index % COLUMNS) * (tile_width + GAP), (index // COLUMNS) * (tile_height + GAP)))
    return sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", required=True, help="labels.csv with image_uri (relative to it), label, source")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--sources", default="", help="comma-separated sources to keep (default: all)")
    args = parser.parse_args(argv)
    sources = {name for name in args.sources.split(",") if name} or None
    contact_sheet(args.csv, sources).save(args.output, optimize=True)
    print(f"framing contact sheet: {args.output}")


if __name__ == "__main__":
    main()
