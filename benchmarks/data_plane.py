"""Data-plane benchmark: the Beam preprocess job against a bare single-process loop.

Both do the same per-image work on the same synthetic 1024² JPEG Baseline DICOMs
(read, decode, resize, split, augment, PNG + tf.Example encode, TFRecord write); the
ratio of their images/s is the parallel speed-up of the Beam job on local workers.
Per-stage costs are timed on one core, next to the codec's own limits.
"""

import argparse
import csv
import glob
import io
import os
import platform
import shutil
import statistics
import time

import numpy as np
import pydicom
import pydicom.encaps
import tensorflow as tf
from PIL import Image

from beam_pipelines import augmentation, example_codec, imaging, preprocess, schema, splitting, synthesize

MULTIPLIERS = augmentation.parse_multipliers(augmentation.DEFAULT_MULTIPLIERS)
FRACTIONS = splitting.parse_split("0.8,0.1,0.1")
KEY = preprocess.DEFAULT_PATIENT_KEY
BEAM_RUNS = 3


def prepare_inputs(work_dir: str, num_images: int, source_size: int) -> list[dict]:
    """Synthesises RSNA DICOMs (reused when present) and lists the JPEG Baseline ones."""
    raw_dir = os.path.abspath(os.path.join(work_dir, f"raw-{num_images}-{source_size}"))
    if not os.path.exists(os.path.join(raw_dir, "rsna", "stage_2_train_labels.csv")):
        synthesize.run([f"--output_dir={raw_dir}", f"--num_rsna={num_images}", "--num_covid=0",
                        f"--image_size={source_size}", "--seed=2026",
                        "--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    labels = {}
    with open(os.path.join(raw_dir, "rsna", "stage_2_train_labels.csv")) as handle:
        for row in csv.DictReader(handle):
            labels[row["patientId"]] = "pneumonia" if row["Target"] == "1" else "normal"
    rows = []
    for path in sorted(glob.glob(os.path.join(raw_dir, "rsna", "stage_2_train_images", "*.dcm"))):
        meta = pydicom.dcmread(path, stop_before_pixels=True)
        if meta.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit and meta.BitsAllocated == 8:
            patient = os.path.basename(path)[:-4]
            rows.append({"image_uri": path, "label": labels[patient], "patient_id": patient})
    return rows


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image_uri", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)


def single_process_loop(rows: list[dict], image_size: int, output_dir: str) -> float:
    """The same per-image work as the job, in one process; returns seconds."""
    os.makedirs(output_dir, exist_ok=True)
    writers = {split: tf.io.TFRecordWriter(os.path.join(output_dir, f"{split}.tfrecord.gz"), options="GZIP")
               for split in schema.SPLITS}
    start = time.perf_counter()
    for row in rows:
        with open(row["image_uri"], "rb") as handle:
            pixels = imaging.preprocess_image(handle.read(), image_size, row["image_uri"]).pixels
        patient = splitting.pseudonymous_patient_id(KEY, "csv", row["patient_id"])
        image_id = splitting.pseudonymous_image_id(KEY, "csv", row["image_uri"])
        split = splitting.assign_split(patient, FRACTIONS)
        copies = MULTIPLIERS[row["label"]] if split == "train" else 1
        for copy_index in range(copies):
            image = pixels if copy_index == 0 else augmentation.augment(pixels, 42, image_id, copy_index)
            fields = example_codec.ExampleFields(row["label"], image_id, "csv", "", patient, copy_index)
            writers[split].write(example_codec.serialize_example(image, fields))
    for writer in writers.values():
        writer.close()
    return time.perf_counter() - start


def beam_job(csv_path: str, image_size: int, output_dir: str, workers: int, expected_images: int) -> float:
    shutil.rmtree(output_dir, ignore_errors=True)
    start = time.perf_counter()
    manifest = preprocess.run([f"--csv={csv_path}", f"--output_dir={output_dir}", f"--image_size={image_size}",
                               f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"])
    seconds = time.perf_counter() - start
    if manifest["inputs"]["used"] != expected_images:
        raise RuntimeError(f"the job used {manifest['inputs']['used']} of {expected_images} images: "
                           f"{manifest['rejected']}; the timing would be meaningless")
    return seconds


def _median_ms(function, inputs, repeats: int = 1) -> float:
    times = []
    for item in inputs:
        for _ in range(repeats):
            start = time.perf_counter()
            function(item)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def stage_costs(rows: list[dict], image_size: int, samples: int = 60) -> dict[str, float]:
    """Median milliseconds per image of each stage, and of the codecs themselves."""
    files = []
    for row in rows[:samples]:
        with open(row["image_uri"], "rb") as handle:
            files.append(handle.read())
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    frames = [pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1) for ds in datasets]

    def pydicom_pixels(plugin):
        def decode(data):
            dataset = pydicom.dcmread(io.BytesIO(data))
            dataset.pixel_array_options(decoding_plugin=plugin)
            return dataset.pixel_array
        return decode

    def pillow_full(frame):
        return np.asarray(Image.open(io.BytesIO(frame)).convert("L"))

    def pillow_draft(frame):
        image = Image.open(io.BytesIO(frame))
        image.draft("L", (image_size, image_size))
        return np.asarray(image.convert("L"))

    full_size = [pillow_full(frame) for frame in frames[:10]]
    prepared = [imaging.preprocess_image(data, image_size).pixels for data in files]
    fields = example_codec.ExampleFields("normal", "csv-x", "csv", "PA", "ab" * 32)
    return {
        "pydicom pixel_array, pylibjpeg plugin (full 1024²)": _median_ms(pydicom_pixels("pylibjpeg"), files),
        "pydicom pixel_array, Pillow plugin (full 1024²)": _median_ms(pydicom_pixels("pillow"), files),
        "Pillow JPEG decode of the frame, full size (codec limit)": _median_ms(pillow_full, frames),
        "Pillow JPEG decode with DCT scaling to ≥ image size (codec limit)": _median_ms(pillow_draft, frames),
        "dcmread header parse + frame extraction": _median_ms(
            lambda data: pydicom.encaps.get_frame(pydicom.dcmread(io.BytesIO(data)).PixelData, 0,
                                                  number_of_frames=1), files),
        "our decode + normalise + resize (preprocess_image)": _median_ms(
            lambda data: imaging.preprocess_image(data, image_size), files),
        "resize alone, full 1024² → image size (slow path)": _median_ms(
            lambda pixels: imaging.fit_square(pixels, image_size), full_size),
        "augment one copy": _median_ms(lambda pixels: augmentation.augment(pixels, 1, "id", 1), prepared),
        "PNG encode + tf.Example serialize": _median_ms(
            lambda pixels: example_codec.serialize_example(pixels, fields), prepared),
    }


def report(num_images: int, mean_file_kb: float, image_size: int, loop_seconds: float,
           beam_seconds: list[float], workers: int, costs: dict[str, float]) -> str:
    loop_rate = num_images / loop_seconds
    median_seconds = statistics.median(beam_seconds)
    beam_rate = num_images / median_seconds
    lines = [
        "## Data plane: preprocess job",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}; {num_images} synthetic "
        f"1024² 8-bit JPEG Baseline DICOMs (mean {mean_file_kb:.0f} KB), output {image_size}², "
        f"default multipliers (normal ×2, pneumonia ×2 on train).",
        "",
        "| run | wall time (s) | source images/s |",
        "|---|---:|---:|",
        f"| bare single-process loop, same per-image work | {loop_seconds:.1f} | {loop_rate:.1f} |",
        f"| Beam job, FnApiRunner, {workers} workers (multi_processing), whole job incl. start-up, "
        f"median of {len(beam_seconds)} runs ({', '.join(f'{run:.1f}' for run in beam_seconds)} s) | "
        f"{median_seconds:.1f} | {beam_rate:.1f} |",
        "",
        f"Beam job over the loop: **{beam_rate / loop_rate:.2f}×** "
        f"(target ≥ 1.5× on {workers} cores, i.e. ≥ 75% parallel efficiency: "
        f"{100 * beam_rate / loop_rate / workers:.0f}% measured).",
        "",
        "Per-image cost on one core (median ms):",
        "",
        "| stage | ms |",
        "|---|---:|",
        *(f"| {name} | {value:.2f} |" for name, value in costs.items()),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default="bench_output")
    parser.add_argument("--num_images", type=int, default=2250,
                        help="DICOMs to synthesise; 9 in 10 are JPEG Baseline, the ones benchmarked.")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    rows = prepare_inputs(args.work_dir, args.num_images, 1024)
    mean_file_kb = statistics.mean(os.path.getsize(row["image_uri"]) for row in rows) / 1024
    csv_path = os.path.join(args.work_dir, "jpeg_baseline.csv")
    write_csv(rows, csv_path)
    costs = stage_costs(rows, args.image_size)
    loop_seconds = single_process_loop(rows, args.image_size, os.path.join(args.work_dir, "loop_out"))
    beam_seconds = [beam_job(csv_path, args.image_size, os.path.join(args.work_dir, "beam_out"), args.workers,
                             len(rows)) for _ in range(BEAM_RUNS)]
    return report(len(rows), mean_file_kb, args.image_size, loop_seconds, beam_seconds, args.workers, costs)

if __name__ == "__main__":
    print(main())
