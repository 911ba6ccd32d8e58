"""The preprocess job on real radiographs: a fixed sample of real-cxr, read as a CSV and as an image folder.

real-cxr (its README.md says what it is) lies next to the repository, at
`<repo>/../shared/real-cxr`, and is never copied into it. Its normal and pneumonia images
all come from NIH ChestX-ray8 and its covid19 images from ieee8023: the job must use every
sampled image and say loudly that each class comes from one source.
"""

import csv
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from beam_pipelines import preprocess
from benchmarks import framing_sheet
from cxr_core import contract, imaging

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_CXR = os.path.normpath(os.path.join(REPOSITORY, "..", "shared", "real-cxr"))
PER_CLASS = 24  # the first images of each class in sorted order: a fixed sample
FLAGS = ["--image_size=32", "--augment=normal=1,pneumonia=1,covid19=1", "--min_shards=1",
         "--patient_key=real-cxr-test-key-0123456789"]
# Ozturk et al.'s folder names, as their release ships them.
OZTURK_FOLDERS = {"normal": "No_findings", "pneumonia": "Pneumonia", "covid19": "Covid-19"}


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    """PER_CLASS rows of each class of real-cxr's labels.csv, with absolute image uris."""
    labels = os.path.join(REAL_CXR, "labels.csv")
    if not os.path.exists(labels):
        pytest.fail(f"the real chest X-rays are missing: {labels} does not exist. They are expected next to the "
                    "repository, at <repo>/../shared/real-cxr (labels.csv and images/), and are never copied into it")
    with open(labels, newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: row["image_uri"])
    chosen = [row for name in contract.CLASS_NAMES if name in OZTURK_FOLDERS
              for row in [row for row in rows if row["label"] == name][:PER_CLASS]]
    return [dict(row, image_uri=os.path.join(REAL_CXR, row["image_uri"])) for row in chosen]


def records(output_dir: str) -> list[tf.train.Example]:
    files = sorted(glob.glob(os.path.join(output_dir, "*" + contract.TFRECORD_SUFFIX)))
    return [tf.train.Example.FromString(raw.numpy())
            for raw in tf.data.TFRecordDataset(files, compression_type=contract.TFRECORD_COMPRESSION)]


def feature_values(examples: list[tf.train.Example], key: str) -> set[bytes]:
    return {example.features.feature[key].bytes_list.value[0] for example in examples}


def test_a_multi_source_csv_of_real_images_is_used_whole_and_its_single_source_classes_flagged(
        sample, tmp_path, capsys):
    listing = tmp_path / "labels.csv"
    with open(listing, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image_uri", "label", "patient_id", "view", "source"])
        writer.writeheader()
        writer.writerows(sample)
    manifest = preprocess.run([f"--csv={listing}", f"--output_dir={tmp_path / 'out'}", *FLAGS])

    assert manifest["inputs"] == {"listed": 3 * PER_CLASS, "used": 3 * PER_CLASS, "rejected": 0}
    assert manifest["originals_by_source"] == {
        "ieee8023-covid": {"normal": 0, "pneumonia": 0, "covid19": PER_CLASS},
        "nih-chestxray8": {"normal": PER_CLASS, "pneumonia": PER_CLASS, "covid19": 0}}
    flag = ("covid19 comes only from ieee8023-covid, which holds no other class: covid19 vs the rest can be learnt "
            "from the source; only within-source figures show what the model reads")
    assert flag in manifest["warnings"]
    # normal vs pneumonia is within NIH: the source gives nothing away there.
    assert not [warning for warning in manifest["warnings"] if warning.startswith(("normal", "pneumonia"))]
    summary = capsys.readouterr().out.splitlines()
    assert f"WARNING: {flag}" in summary[:summary.index(next(line for line in summary if line.startswith("split")))]
    examples = records(str(tmp_path / "out"))
    assert len(examples) == 3 * PER_CLASS
    assert feature_values(examples, contract.SOURCE) == {b"nih-chestxray8", b"ieee8023-covid"}
    for example in examples:
        feature = example.features.feature
        assert feature[contract.IMAGE_ID].bytes_list.value[0].startswith(feature[contract.SOURCE].bytes_list.value[0]
                                                                         + b"-"), "ids are named after the source"
    assert feature_values(examples, contract.PATIENT_SEX) == feature_values(examples, contract.PATIENT_AGE_BAND) == {
        b"unknown"}


def test_a_release_in_class_folders_is_read_as_an_image_folder(sample, tmp_path, capsys):
    folder = tmp_path / "X-Ray Image DataSet"
    for row in sample:
        link = folder / OZTURK_FOLDERS[row["label"]] / os.path.basename(row["image_uri"])
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(row["image_uri"])
    manifest = preprocess.run([f"--image_folder={folder}", f"--output_dir={tmp_path / 'out'}", *FLAGS])

    assert manifest["inputs"] == {"listed": 3 * PER_CLASS, "used": 3 * PER_CLASS, "rejected": 0}
    assert manifest["originals_by_source"] == {
        "x-ray-image-dataset": {"normal": PER_CLASS, "pneumonia": PER_CLASS, "covid19": PER_CLASS}}
    assert len([warning for warning in manifest["warnings"] if "split by image" in warning]) == 1
    assert not [warning for warning in manifest["warnings"] if "comes only from" in warning], "one source only"
    assert capsys.readouterr().out.splitlines()[0].startswith("WARNING: --image_folder has no --patient_id_regex")
    assert feature_values(records(str(tmp_path / "out")), contract.SOURCE) == {b"x-ray-image-dataset"}


def is_uniform(line: np.ndarray) -> bool:
    """A margin line as the framing defines one: nearly all its pixels within the tolerance of its median."""
    close = np.abs(line.astype(np.int16) - int(np.median(line))) <= imaging.BORDER_TOLERANCE_LEVELS
    return close.mean() >= imaging.BORDER_COVERAGE


def test_framing_keeps_nih_films_nearly_whole_and_removes_the_margins_of_paper_figures(sample):
    kept_share, trimmed_figures = [], 0
    for row in sample:
        gray = np.asarray(Image.open(row["image_uri"]).convert("L"))
        top, bottom, left, right = imaging.body_box(gray)
        _, _, side = imaging.body_square(gray)
        if row["source"] == "nih-chestxray8":
            kept_share.append(side * side / gray.size)
            continue
        body = gray[top:bottom, left:right]
        assert not any(is_uniform(line) for line in (body[0], body[-1], body[:, 0], body[:, -1])), row["image_uri"]
        trimmed_figures += (top, bottom, left, right) != (0, gray.shape[0], 0, gray.shape[1])
    # NIH films are square; some carry black collimation bands or a saturated flat band, which are trimmed
    # too (docs/real_framing.png shows the most trimmed of the whole set, lungs kept).
    assert len(kept_share) == 2 * PER_CLASS
    assert np.median(kept_share) >= 0.9 and np.mean(np.array(kept_share) >= 0.9) >= 0.8, sorted(kept_share)[:10]
    assert min(kept_share) >= 0.5
    assert trimmed_figures >= 1, "the sample holds a paper figure with a margin: the check above must see one trimmed"


def test_the_framing_sheet_pairs_each_class_s_most_trimmed_and_typical_images(sample, tmp_path):
    shares = {row["image_uri"]: framing_sheet.kept_share(np.asarray(Image.open(row["image_uri"]).convert("L")))
              for row in sample}
    chosen = framing_sheet.choose(sample, shares, cells=12)
    assert [row["label"] for row in chosen] == ["covid19"] * 4 + ["normal"] * 4 + ["pneumonia"] * 4
    assert len({row["image_uri"] for row in chosen}) == 12
    normal = [row for row in sample if row["label"] == "normal"]
    assert chosen[4]["image_uri"] == min(normal, key=lambda row: shares[row["image_uri"]])["image_uri"]
    listing = tmp_path / "labels.csv"
    with open(listing, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image_uri", "label", "patient_id", "view", "source"])
        writer.writeheader()
        writer.writerows(sample)
    sheet = framing_sheet.contact_sheet(str(listing), {"nih-chestxray8"}, cells=12)
    tile_width, tile_height = 2 * framing_sheet.THUMBNAIL + 2, framing_sheet.THUMBNAIL + framing_sheet.CAPTION
    assert sheet.size == (framing_sheet.COLUMNS * (tile_width + framing_sheet.GAP) - framing_sheet.GAP,
                          2 * (tile_height + framing_sheet.GAP) - framing_sheet.GAP)
