"""Data-plane benchmark: the Beam preprocess job against a bare single-process loop.

Both do the same per-image work on the same synthetic 1024² JPEG Baseline DICOMs
(read, decode, resize, split, augment, PNG + tf.Example encode, TFRecord write); the
ratio of their images/s is the parallel speed-up of the Beam job on local workers.
Per-stage costs are timed on one core, next to the codec's own limits.
"""

import argparse
import csv
import dataclasses
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

from beam_pipelines import (
    augmentation,
    contract,
    example_codec,
    imaging,
    preprocess,
    splitting,
)
from beam_pipelines.synthesize import pipeline as synthesize

MULTIPLIERS = augmentation.parse_multipliers(augmentation.DEFAULT_MULTIPLIERS)
FRACTIONS = splitting.parse_split("0.8,0.1,0.1")
KEY = "benchmark-patient-key-not-a-secret"
SEED = preprocess.DEFAULT_SEED
BEAM_RUNS = 3
SMALL_JOB_IMAGES = 20
RUNNING_MODES = ("multi_processing", "multi_threading")
READING = """Reading: the per-image work is cheap and already at the codec's limit (the DCT-scaled
JPEG decode is most of our decode), so fixed and per-element costs of the local runner
decide the ratio. With `multi_processing` each worker is a new Python process that
imports Beam, pydicom and TensorFlow (the Example proto and TFRecord writer) before its
first element, and every element crosses the runner's gRPC data plane through the
driver, a third process competing for the same two cores. With `multi_threading` start-up
is almost nothing, but Beam's per-element bookkeeping, pydicom's header parse and the
protobuf encode hold the GIL, so only Pillow's decode and PNG encode run in parallel.
On Dataflow the driver is not in the data path and workers start once per VM, so a
30,000-image job runs at the steady rate per vCPU. The steady rate is a difference of two
medians and moved by about ±5% between two runs of this benchmark on the same day. The
benchmark refuses to time a job that rejected any input, so a broken input list cannot
pass for speed."""


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
    writers = {split: tf.io.TFRecordWriter(os.path.join(output_dir, f"{split}{contract.TFRECORD_SUFFIX}"),
                                           options=contract.TFRECORD_COMPRESSION)
               for split in contract.SPLITS}
    start = time.perf_counter()
    for row in rows:
        with open(row["image_uri"], "rb") as handle:
            pixels = imaging.preprocess_image(handle.read(), image_size, row["image_uri"]).pixels
        patient = splitting.pseudonymous_patient_id(KEY, "csv", row["patient_id"])
        image_id = splitting.pseudonymous_image_id(KEY, "csv", row["image_uri"])
        split = splitting.assign_split(patient, FRACTIONS)
        copies = MULTIPLIERS[row["label"]] if split == "train" else 1
        fields = example_codec.ExampleFields(row["label"], image_id, "csv", "", patient)
        for _, serialized in example_codec.serialize_with_copies(pixels, fields, copies, SEED):
            writers[split].write(serialized)
    for writer in writers.values():
        writer.close()
    return time.perf_counter() - start


def beam_job(csv_path: str, image_size: int, output_dir: str, workers: int, mode: str,
             expected_images: int) -> float:
    """Seconds for the whole preprocess job, start-up included, on `workers` local workers."""
    shutil.rmtree(output_dir, ignore_errors=True)
    start = time.perf_counter()
    manifest = preprocess.run([f"--csv={csv_path}", f"--output_dir={output_dir}", f"--image_size={image_size}",
                               f"--patient_key={KEY}", f"--direct_num_workers={workers}",
                               f"--direct_running_mode={mode}"])
    seconds = time.perf_counter() - start
    if manifest["inputs"]["used"] != expected_images:
        raise RuntimeError(f"the job used {manifest['inputs']['used']} of {expected_images} images: "
                           f"{manifest['rejected']}; the timing would be meaningless")
    return seconds


@dataclasses.dataclass
class ModeTiming:
    """Whole-job times of one running mode on all images and on a handful of them."""

    mode: str
    full_seconds: list[float]
    small_seconds: list[float]

    @property
    def full(self) -> float:
        return statistics.median(self.full_seconds)

    @property
    def start_up(self) -> float:
        return statistics.median(self.small_seconds)

    def steady_rate(self, num_images: int, small_images: int) -> float:
        """Images/s once running: the extra images over the extra time, start-up cancelled out."""
        return (num_images - small_images) / (self.full - self.start_up)


def time_mode(rows: list[dict], csv_path: str, small_csv_path: str, image_size: int, output_dir: str,
              workers: int, mode: str) -> ModeTiming:
    def runs(path: str, expected: int) -> list[float]:
        return [beam_job(path, image_size, output_dir, workers, mode, expected) for _ in range(BEAM_RUNS)]
    return ModeTiming(mode, runs(csv_path, len(rows)), runs(small_csv_path, SMALL_JOB_IMAGES))


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
    decoded = [pillow_draft(frame) for frame in frames]
    letterboxed = [np.pad(pixels, ((0, 0), (288, 288))) for pixels in full_size]  # A 1024×1600 paper figure.
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
        "framing (frame_body: trim uniform borders, centre square) of the decoded image": _median_ms(
            imaging.frame_body, decoded),
        "framing of a full-size 1024×1600 letterboxed figure": _median_ms(imaging.frame_body, letterboxed),
        "resize alone, full 1024² → image size (slow path)": _median_ms(
            lambda pixels: imaging.resize_square(pixels, image_size), full_size),
        "augment one copy": _median_ms(lambda pixels: augmentation.augment(pixels, 1, "id", 1), prepared),
        "PNG encode + tf.Example serialize": _median_ms(
            lambda pixels: example_codec.serialize_example(pixels, fields), prepared),
    }


def report(num_images: int, mean_file_kb: float, image_size: int, loop_seconds: float,
           timings: list[ModeTiming], workers: int, costs: dict[str, float]) -> str:
    loop_rate = num_images / loop_seconds

    def ratio(rate: float) -> str:
        return f"{rate / loop_rate:.2f}× ({100 * rate / loop_rate / workers:.0f}% efficiency)"

    rows, whole_rates, steady_rates = [], [], []
    for timing in timings:
        whole, steady = num_images / timing.full, timing.steady_rate(num_images, SMALL_JOB_IMAGES)
        whole_rates.append(whole)
        steady_rates.append(steady)
        rows.append(f"| Beam job, FnApiRunner, {workers} workers, {timing.mode} | "
                    f"{', '.join(f'{run:.1f}' for run in timing.full_seconds)} | {timing.full:.1f} | "
                    f"{whole:.1f} | {ratio(whole)} | {timing.start_up:.1f} | {steady:.1f} | {ratio(steady)} |")
    best_whole, best_steady = max(whole_rates), max(steady_rates)
    per_image_ms = 1000 * loop_seconds / num_images
    lines = [
        "## Data plane: preprocess job",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}; {num_images} synthetic "
        f"1024² 8-bit JPEG Baseline DICOMs (mean {mean_file_kb:.0f} KB), output {image_size}², "
        f"default multipliers (normal ×2, pneumonia ×2 on train). Each Beam time is a whole job from "
        f"`preprocess.run` to the manifest, worker start-up included, run {BEAM_RUNS} times; start-up is "
        f"the median whole-job time on {SMALL_JOB_IMAGES} images, and the steady rate is the "
        f"{num_images - SMALL_JOB_IMAGES} extra images over the extra time.",
        "",
        "| run | wall times (s) | median (s) | images/s | over the loop | start-up (s) "
        "| steady images/s | steady over the loop |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        f"| bare single-process loop, same per-image work | {loop_seconds:.1f} | {loop_seconds:.1f} | "
        f"{loop_rate:.1f} | 1.00× | – | {loop_rate:.1f} | 1.00× |",
        *rows,
        "",
        f"Target: ≥ 1.5× the loop on {workers} cores (≥ 75% parallel efficiency). Best whole job: "
        f"**{best_whole / loop_rate:.2f}×**; best steady rate: **{best_steady / loop_rate:.2f}×**. "
        f"The loop spends {per_image_ms:.1f} ms per image, so at this size a whole job meets the target "
        f"only if start-up stays under {num_images / (1.5 * loop_rate) - num_images / (workers * loop_rate):.1f} s "
        f"even at perfect scaling.",
        "",
        "Per-image cost on one core (median ms):",
        "",
        "| stage | ms |",
        "|---|---:|",
        *(f"| {name} | {value:.2f} |" for name, value in costs.items()),
        "",
        READING,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default="bench_output")
    parser.add_argument("--num_images", type=int, default=2250,
                        help="DICOMs to synthesise; 9 in 10 are JPEG Baseline, the ones benchmarked.")
    parser.add_argument("--image_size", type=int, default=contract.DEFAULT_IMAGE_SIZE)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    rows = prepare_inputs(args.work_dir, args.num_images, 1024)
    mean_file_kb = statistics.mean(os.path.getsize(row["image_uri"]) for row in rows) / 1024
    csv_path = os.path.join(args.work_dir, "jpeg_baseline.csv")
    small_csv_path = os.path.join(args.work_dir, f"jpeg_baseline_{SMALL_JOB_IMAGES}.csv")
    write_csv(rows, csv_path)
    write_csv(rows[:SMALL_JOB_IMAGES], small_csv_path)
    costs = stage_costs(rows, args.image_size)
    loop_seconds = single_process_loop(rows, args.image_size, os.path.join(args.work_dir, "loop_out"))
    timings = [time_mode(rows, csv_path, small_csv_path, args.image_size, os.path.join(args.work_dir, "beam_out"),
                         args.workers, mode) for mode in RUNNING_MODES]
    return report(len(rows), mean_file_kb, args.image_size, loop_seconds, timings, args.workers, costs)


if __name__ == "__main__":
    print(main())
