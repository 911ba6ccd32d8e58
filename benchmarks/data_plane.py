"""Data-plane benchmark: the preprocess job at the real RSNA size against a one-core codec-limit loop.

Input: the RSNA stage-2 training set's shape (`rsna_layout`): 26,684 patients, 30,227
label rows, one 1024² 8-bit JPEG Baseline DICOM per patient; the job uses the 14,863
normal and pneumonia patients. Reference: one process on one core doing only what the
codecs must do per image (read the file, parse the DICOM header, decode the JPEG frame
with DCT scaling, resize, PNG-encode). The job is the real command line, run from start
to manifest on local workers while its process tree is sampled (`process_tree`): wall
time, CPU per process and the peak of the summed resident memory. Then where the time
goes: each stage of the job's own per-image code timed in one process, a per-thread
CPU profile of the job's driver and workers (`thread_profiler`), the same job with its codec
work replaced by a constant image (`codec_stub`: what the runner costs by itself), and the
start-up taken apart.
"""

import argparse
import contextlib
import csv
import dataclasses
import functools
import glob
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import time
from collections.abc import Iterator

import apache_beam as beam
import pydicom
import pydicom.encaps
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from PIL import Image, ImageFile

from beam_pipelines import example_codec, preprocess, reading, sources, splitting
from beam_pipelines.options import build_pipeline_options
from beam_pipelines.tfrecord_shards import COMPRESSION
from benchmarks import machine, process_tree, rsna_layout
from cxr_core import augmentation, contract, imaging, pseudonyms

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILER_PATH = os.path.join(REPOSITORY, "benchmarks", "thread_profiler")
CODEC_STUB_PATH = os.path.join(REPOSITORY, "benchmarks", "codec_stub")
PATIENT_KEY = "data-plane-benchmark-key"
SEED = 42
NO_AUGMENTATION = "normal=1,pneumonia=1,covid19=1"
NO_AUGMENTATION_LABEL = "no augmentation"
AUGMENT_SETTINGS = ((NO_AUGMENTATION, NO_AUGMENTATION_LABEL),
                    (augmentation.DEFAULT_MULTIPLIERS, "default multipliers 2/2/30"))
SMALL_FILES = 3000
START_UP_FILES = 20
STAGE_FILES = 1000
DECODER_FILES = 60
RUNNING_MODES = ("multi_processing", "multi_threading")
FULL_TARGET, SMALL_TARGET = 1.5, 1.0
RSS_TARGET_BYTES = 2 * 1024**3
MB = 1024**2
# Stages of the job's own per-image code, in order; CODEC_STAGES are the loop's work too.
STAGE_NAMES = ("read file", "DICOM header parse", "JPEG decode (DCT-scaled)", "intensity scaling",
               "framing (trim uniform borders, centre square)", "decode: frame extraction, LUTs, checks, resize",
               "augmentation", "PNG encode", "Example build", "TFRecord write (GZIP)",
               "ids, split, serialization, loop")
CODEC_STAGES = ("read file", "DICOM header parse", "JPEG decode (DCT-scaled)", "PNG encode")
IDLE_FUNCTIONS = ("acquire", "wait", "channel_spin", "_serve", "waitpid", "select", "poll", "sleep")


READING = """Reading. The loop is the reference: per image it parses a DICOM header, decodes a JPEG with DCT
scaling and encodes a PNG, nothing else. On top of that the job spends, per image, its own work
beyond the codec (intensity scaling, header checks and LUTs, the Example, the GZIP TFRecord
write: the stage table), its start-up (every process imports Beam, and the runner turns the
graph into about two dozen fused stages, each a bundle per worker) and the runner's own cost.
With `multi_processing` the driver and two workers each import Beam, and every record crosses
the runner's gRPC data plane through the driver, a third process on the same two cores; the
driver also holds every record of the shard shuffle in its GroupByKey buffer and copies it
again to hand the groups to the workers, which is most of its memory at full size. With
`multi_threading` there is one process, whose worker threads still exchange every record with
the runner over gRPC on loopback, and pydicom's header parse, our Python glue and Beam's
bookkeeping hold the GIL, so only the codecs (Pillow's decode, the PNG encode, zlib) run in
parallel.

Removed: no process of the job imports TensorFlow any more (about 2 s of CPU and 740 MB per
process, three processes in a local job). The Example is built by protobuf from TensorFlow's
schema and the shards are framed by Beam's TFRecord coder, byte-identical records
(tests/test_example_codec.py, tests/test_tfrecord_shards.py). Paired runs against the code
before that change, minutes apart on the shared machine (multi_processing, no augmentation,
measured once): 3,000 files 27.2 → 18.8 s of CPU and 2.98 → 1.26 GB peak; 14,863 files 68.8 →
60.9 s of CPU and 3.76 → 2.01 GB peak. tfx-bsl's C++ `RecordBatchToExamplesEncoder` was
measured as the alternative and rejected: it orders the feature map differently on every call
(200 distinct serializations of one record in 200 calls), which would break same seed, same
bytes.

Lean graph (issue 23): the decode step encodes its image's examples itself and emits a small
summary beside them (ids, split, label, content hash, notes); duplicates are found and every
count of the manifest taken from the summaries (one combine), and the duplicates' examples are
withheld at the shard-count barrier, where every example waits anyway; the rejected records are
written by one DoFn. Decoded pixels no longer cross a stage, so an image's data crosses the
runner's data plane four times (to and from the shard-count barrier, to and from the shard
shuffle) instead of six, in 18 fused stages instead of 29; the records are byte-identical
(tests/test_preprocess_records.py). Paired runs against the code before, interleaved, 3 each,
multi_processing, on a machine whose 1-minute load stayed between 4 and 6 (a training job had
the cores; these ran at nice 19, so wall times say little and CPU times are inflated alike),
medians: 2,000 files, CPU 27.2 → 25.7 s without augmentation, 30.8 → 29.2 s with the default
multipliers, 15.1 → 13.2 s with the codec stubbed; peak RSS 1,341 → 1,247, 1,423 → 1,357 and
1,313 → 1,242 MB; the 20-file job 9.9 → 9.5 s of CPU. The alternative, a hash-only pass over the
files before decoding, was measured as a Beam job over the same files: 0.4 to 0.6 s more CPU
and 1.2 to 1.5 s more wall than listing them alone (reading and hashing a file again is 0.125
ms of CPU), a barrier before the first decode, and a second read of every file (a second GET on
Cloud Storage); it would also judge listings whose files then fail to decode, where the
duplicate rules look only at decoded, accepted images. A lookup table for the intensity scaling
of 8-bit frames was tried and dropped: at 128² it was slower than scaling every pixel (0.21
against 0.19 ms; the percentiles are most of that stage).

What remains and why: the floor table. With the codec taken out, the job still lists and reads
every file, hashes it, pickles each record between stages, moves them through the
driver's gRPC data plane and the shard shuffle, and frames the GZIP shards; that cost per image
alone is more than the 1.5× target leaves beside the codec's own work, so no change to the
job's decode can reach it (the decode's extras beyond the codec, intensity scaling, framing and
header checks, are about 0.5 ms: the stage table). The peak memory is the runner's too: the
floor run holds as much as the real job, because the local runner keeps every image and record
that crosses from one stage to the next in its buffers until the job ends (apache-beam 2.77's
`fn_api_runner/execution.py` never clears a data buffer), and a GroupByKey's twice. Start-up is
one interpreter per process importing Beam, the graph's translation and the runner starting and
stopping its worker processes: longer by itself than the slack the 3,000-file target leaves.
What would move these is outside the job's code: a runner whose workers exchange records
without a driver in the path (Dataflow's, where a large job runs at about the steady rate per
vCPU: docs/cloud.md), or fewer copies of each record between stages, which the manifest's exact
accounting and exact shard sizing each cost (below).

Tried and measured once while writing this benchmark (2026-11-26, not re-measured by each run):
PNG `compress_level=6` is about a third of the codec work, but another level changes the
records' bytes. An exact shortcut for the percentile scaling of 8-bit frames (a histogram)
would save about 0.1 ms but must reproduce NumPy's interpolation bit for bit. GZIP level 1
instead of 6 saves under 0.02 ms per record (the PNGs are already deflated). Fixing the shard
counts before encoding, so that shard assignment fuses with encoding, took the full-size job
with default multipliers from 2.79 to 2.33 GB peak and from 94 to 92 s of CPU, but it would
size shards by an estimate rather than by their bytes, a contract decision left open. Beam's
type checks while the graph is built cost 0.25 s of start-up; they stay on. The label files are
parsed twice (the driver checks them before any work, one worker lists them): one line-break
search per row instead of per field took a parse of the full RSNA label files from 0.29 to 0.23
s.

Data loss found and fixed while measuring: the local runner flushed its data streams from a
timer thread that drops what is written during the flush (`beam_pipelines/options.py`,
tests/test_local_runner.py). Before the fix every one of 6 `multi_threading` runs of 3,000
images lost 1 to 3 records on the way to the shards, and a full-size `multi_processing` run
lost 8 in about one run of 13; the job's accounting now checks every encoded example against
the shards, so a loss fails the job instead of passing unnoticed. The fix costs nothing
measurable: three paired `multi_threading` runs of 3,000 images took 9.7, 8.9 and 9.0 s with
the timed flush (each losing records) and 9.2, 8.9 and 8.7 s without. Figures for
`multi_threading` before 2026-11-26 12:00 came from runs that dropped records."""


def write_csv(rows: list[dict], path: str) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image_uri", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def codec_limit_loop(rows: list[dict], image_size: int, checkpoints: list[int]) -> dict[int, tuple[float, float]]:
    """(wall, CPU) seconds after each checkpoint's number of images, one process, one core."""
    times = {}
    wall, cpu = time.perf_counter(), time.process_time()
    for count, row in enumerate(rows, start=1):
        with open(row["image_uri"], "rb") as handle:
            dataset = pydicom.dcmread(io.BytesIO(handle.read()))
        frame = pydicom.encaps.get_frame(dataset.PixelData, 0, number_of_frames=1)
        with Image.open(io.BytesIO(frame)) as image:
            image.draft("L", (image_size, image_size))
            gray = image.convert("L")
        if gray.size != (image_size, image_size):
            gray = gray.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        gray.save(io.BytesIO(), format="PNG", compress_level=6)
        if count in checkpoints:
            times[count] = (time.perf_counter() - wall, time.process_time() - cpu)
    return times


@contextlib.contextmanager
def timed_calls(targets: list[tuple[str, object, str]]) -> Iterator[dict[str, float]]:
    """Adds the CPU time of every call of `owner.name` to its stage while the block runs."""
    totals = {stage: 0.0 for stage, _, _ in targets}
    originals = []
    for stage, owner, name in targets:
        original = getattr(owner, name)
        originals.append((owner, name, original))

        def timed(*args, _original=original, _stage=stage, **kwargs):
            start = time.process_time()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_stage] += time.process_time() - start
        setattr(owner, name, functools.wraps(original)(timed))
    try:
        yield totals
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def listing_ms_per_patient(rsna_dir: str) -> float:
    """CPU milliseconds per listed patient to parse the RSNA label files (one worker does it)."""
    start = time.process_time()
    parser = sources.ParseRsnaLabelsFn("exclude", splitting.PatientKey(value=PATIENT_KEY))
    parser.setup()
    list(parser.process(rsna_dir))
    return 1000 * (time.process_time() - start) / rsna_layout.layout_counts()["patients"]


def stage_costs(rows: list[dict], image_size: int, augment: str, work_dir: str) -> dict[str, float]:
    """CPU milliseconds per input image of each stage of the job's own per-image code, one core.

    The loop is the job's fused decode-and-encode step without Beam: read, decode,
    split, copies, records, GZIP TFRecord write. Stage functions are timed where the
    job calls them; the last stage is what the loop spent outside them.
    """
    multipliers = augmentation.parse_multipliers(augment)
    fractions = splitting.parse_split("0.8,0.1,0.1")
    targets = [("read file", reading, "read_file"), ("DICOM header parse", pydicom, "dcmread"),
               ("JPEG decode (DCT-scaled)", ImageFile.ImageFile, "load"),
               ("intensity scaling", imaging, "scale_to_uint8"),
               ("framing (trim uniform borders, centre square)", imaging, "frame_body"),
               ("decode total", imaging, "preprocess_image"),
               ("augmentation", augmentation, "augment"), ("PNG encode", imaging, "encode_png"),
               ("Example build", example_codec, "encode_example")]
    writers = {split: FileSystems.create(os.path.join(work_dir, f"stages-{split}{contract.TFRECORD_SUFFIX}"),
                                         compression_type=COMPRESSION) for split in contract.SPLITS}
    write = 0.0
    with timed_calls(targets) as totals:
        start = time.process_time()
        for row in rows:
            pixels = reading.read_and_preprocess(row["image_uri"], image_size).pixels
            patient = pseudonyms.pseudonymous_patient_id(PATIENT_KEY, sources.CSV, row["patient_id"])
            split = splitting.assign_split(patient, fractions)
            fields = example_codec.ExampleFields(
                row["label"], pseudonyms.pseudonymous_image_id(PATIENT_KEY, sources.CSV, row["image_uri"]),
                sources.CSV, "", patient)
            copies = multipliers[row["label"]] if split == "train" else 1
            for _, serialized in example_codec.serialize_with_copies(pixels, fields, copies, SEED):
                write_start = time.process_time()
                _TFRecordUtil.write_record(writers[split], serialized)
                write += time.process_time() - write_start
        for writer in writers.values():
            writer.close()
        total = time.process_time() - start
    costs = {name: totals[name] for name in STAGE_NAMES[:5]}
    costs[STAGE_NAMES[5]] = totals["decode total"] - sum(totals[name] for name in STAGE_NAMES[1:5])
    costs.update({name: totals[name] for name in STAGE_NAMES[6:9]})
    costs[STAGE_NAMES[9]] = write
    costs[STAGE_NAMES[10]] = total - sum(costs.values())
    return {name: 1000 * seconds / len(rows) for name, seconds in costs.items()}


def decoder_alternatives(rows: list[dict], image_size: int) -> dict[str, float]:
    """Median CPU ms per 1024² JPEG Baseline frame of the ways to decode it (why the job uses DCT scaling)."""
    datasets = [pydicom.dcmread(row["image_uri"]) for row in rows]
    frames = [pydicom.encaps.get_frame(dataset.PixelData, 0, number_of_frames=1) for dataset in datasets]

    def pydicom_pylibjpeg(dataset):
        dataset.pixel_array_options(decoding_plugin="pylibjpeg")
        return dataset.pixel_array

    def pillow(frame, reduced: bool):
        with Image.open(io.BytesIO(frame)) as image:
            if reduced:
                image.draft("L", (image_size, image_size))
            return image.convert("L")

    def median_ms(function, items) -> float:
        times = []
        for item in items:
            start = time.process_time()
            function(item)
            times.append(1000 * (time.process_time() - start))
        return statistics.median(times)

    return {"pydicom `pixel_array`, pylibjpeg plugin, full size": median_ms(pydicom_pylibjpeg, datasets),
            "Pillow, full size": median_ms(functools.partial(pillow, reduced=False), frames),
            f"Pillow with DCT scaling to ≥ {image_size}² (the job's fast path)": median_ms(
                functools.partial(pillow, reduced=True), frames)}


@dataclasses.dataclass
class JobRuns:
    """The runs of one job configuration: whole jobs on `images` files, and on START_UP_FILES."""

    name: str
    mode: str
    augment: str
    images: int
    runs: list[process_tree.TreeUsage]
    start_up_runs: list[process_tree.TreeUsage]

    @property
    def wall(self) -> float:
        return statistics.median(run.wall_seconds for run in self.runs)

    @property
    def start_up(self) -> float:
        return statistics.median(run.wall_seconds for run in self.start_up_runs)

    @property
    def steady_rate(self) -> float:
        return (self.images - START_UP_FILES) / (self.wall - self.start_up)

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000 * statistics.median(run.total_cpu_seconds for run in self.runs) / self.images

    def cpu_split(self) -> str:
        run = self.runs[0]
        return " / ".join(f"{run.cpu_seconds.get(role, 0.0):.1f}" for role in ("driver", "workers"))

    @property
    def peak_rss(self) -> int:
        return max(run.peak_rss_bytes for run in self.runs)

    def rss_split(self) -> str:
        run = max(self.runs, key=lambda item: item.peak_rss_bytes)
        return " / ".join(f"{run.peak_rss_by_role.get(role, 0) / MB:.0f}" for role in ("driver", "workers"))


class JobRunner:
    """Runs `python -m beam_pipelines.preprocess` as a user would, and checks what it used."""

    def __init__(self, work_dir: str, image_size: int, workers: int):
        self._work_dir = work_dir
        self._image_size = image_size
        self._workers = workers

    def run(self, source_flag: str, expected_used: int, mode: str, augment: str,
            extra_env: dict[str, str] | None = None) -> process_tree.TreeUsage:
        output_dir = os.path.join(self._work_dir, "job_output")
        shutil.rmtree(output_dir, ignore_errors=True)
        command = [sys.executable, "-m", "beam_pipelines.preprocess", source_flag, f"--output_dir={output_dir}",
                   f"--image_size={self._image_size}", f"--augment={augment}", f"--patient_key={PATIENT_KEY}",
                   f"--direct_num_workers={self._workers}", f"--direct_running_mode={mode}"]
        python_path = os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": python_path, **(extra_env or {})}
        log_path = os.path.join(self._work_dir, "job.log")
        # `python -m` puts the working directory first on sys.path: run from this checkout.
        usage = process_tree.run(command, env=env, log_path=log_path, cwd=REPOSITORY)
        if usage.returncode:
            raise RuntimeError(f"the preprocess job failed (exit {usage.returncode}); see {log_path}")
        with open(os.path.join(output_dir, contract.MANIFEST_FILE)) as handle:
            manifest = json.load(handle)
        unexpected = {key: count for key, count in manifest["rejected"].items() if not key.startswith("select/")}
        if manifest["inputs"]["used"] != expected_used or unexpected:
            raise RuntimeError(f"the job used {manifest['inputs']['used']} of {expected_used} images and rejected "
                               f"{unexpected}; its timing would be meaningless")
        return usage


def profile_summary(directory: str) -> dict[str, dict[str, float]]:
    """Profiled CPU seconds per role and category, from the thread profiler's stats files."""
    categories = {
        "imports (start-up)": ("<frozen importlib._bootstrap>", "_find_and_load"),
        "listing the label files": ("beam_pipelines/sources.py", "process"),
        "decode (DICOM, JPEG, scaling, framing)": ("beam_pipelines/reading.py", "preprocess_bytes"),
        "augmentation": ("beam_pipelines/augmentation.py", "augment"),
        "PNG encode + Example build": ("beam_pipelines/example_codec.py", "serialize_example"),
        "TFRecord write (GZIP)": ("beam_pipelines/tfrecord_shards.py", "process"),
        "graph construction (driver)": ("beam_pipelines/preprocess.py", "build_pipeline"),
    }
    summary = {}
    for role in ("driver", "worker"):
        paths = glob.glob(os.path.join(directory, f"{role}-*.prof"))
        if not paths:
            continue
        stats = pstats.Stats(*paths).stats
        busy = sum(tottime for (_, _, name), (_, _, tottime, _, _) in stats.items()
                   if not any(idle in name for idle in IDLE_FUNCTIONS))
        seconds = {category: sum(cumulative for (path, _, name), (_, _, _, cumulative, _) in stats.items()
                                 if path.endswith(suffix) and name == function)
                   for category, (suffix, function) in categories.items()}
        seconds["Beam runner, data plane, coders (the rest)"] = busy - sum(seconds.values())
        summary[role] = seconds
    return summary


def profile_job(runner: JobRunner, source_flag: str, expected_used: int, profile_dir: str) -> dict:
    shutil.rmtree(profile_dir, ignore_errors=True)
    os.makedirs(profile_dir)
    python_path = os.pathsep.join(filter(None, [PROFILER_PATH, REPOSITORY, os.environ.get("PYTHONPATH")]))
    runner.run(source_flag, expected_used, "multi_processing", NO_AUGMENTATION,
               {"PYTHONPATH": python_path, "CXR_PROFILE_DIR": profile_dir})
    return profile_summary(profile_dir)


def codec_free_job(runner: JobRunner, source_flag: str, expected_used: int, stub_image: str) -> JobRuns:
    """The job with decode and PNG encode replaced by one precomputed image (`codec_stub`): the runner's floor."""
    mode = "multi_processing"
    python_path = os.pathsep.join(filter(None, [CODEC_STUB_PATH, REPOSITORY, os.environ.get("PYTHONPATH")]))
    run = runner.run(source_flag, expected_used, mode, NO_AUGMENTATION,
                     {"PYTHONPATH": python_path, "CXR_CODEC_STUB_IMAGE": stub_image})
    return JobRuns(f"job, {mode}, {NO_AUGMENTATION_LABEL}, codec replaced by a constant image", mode,
                   NO_AUGMENTATION, expected_used, [run], [])


MINIMAL_JOB = """
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
options = PipelineOptions(direct_num_workers={workers}, direct_running_mode="multi_processing")
with beam.Pipeline(options=options) as pipeline:
    _ = pipeline | beam.Create(range(2)) | beam.Map(str)
"""


RUNNER_FLOOR_RECORDS = 15_000
RUNNER_FLOOR_RECORD_BYTES = 12 * 1024
# The local runner's own cost per record: records of about an encoded example's size through a
# Reshuffle and a GroupByKey (the job's fan-out and shard shuffle) on the job's runner options, with
# stub work in between, so that what it spends is the runner's, the data plane's and the coders'.
RUNNER_FLOOR_JOB = """
import apache_beam as beam
from beam_pipelines.options import build_pipeline_options
options = build_pipeline_options(["--direct_num_workers={workers}", "--direct_running_mode=multi_processing"])
with beam.Pipeline(options=options) as pipeline:
    _ = (pipeline
         | "Indices" >> beam.Create(range({records}))
         | "StubRecords" >> beam.Map(lambda index: (index, bytes({record_bytes})))
         | "Reshuffle" >> beam.Reshuffle()
         | "StubKeys" >> beam.MapTuple(lambda index, record: (index % 64, record))
         | "GroupByKey" >> beam.GroupByKey()
         | "StubWork" >> beam.MapTuple(lambda key, records: sum(len(record) for record in records)))
"""


def runner_floor_job(workers: int, repeats: int) -> JobRuns:
    """The minimal Beam job's runs, on RUNNER_FLOOR_RECORDS records and, for its start-up, on START_UP_FILES."""

    def run(records: int) -> process_tree.TreeUsage:
        script = RUNNER_FLOOR_JOB.format(workers=workers, records=records, record_bytes=RUNNER_FLOOR_RECORD_BYTES)
        usage = process_tree.run([sys.executable, "-c", script], cwd=REPOSITORY)
        if usage.returncode:
            raise RuntimeError(f"the minimal Beam job failed (exit {usage.returncode})")
        return usage

    return JobRuns(f"minimal Beam job, multi_processing: {RUNNER_FLOOR_RECORDS:,} records of "
                   f"{RUNNER_FLOOR_RECORD_BYTES // 1024} KB through a Reshuffle and a GroupByKey, stub work",
                   "multi_processing", NO_AUGMENTATION, RUNNER_FLOOR_RECORDS,
                   [run(RUNNER_FLOOR_RECORDS) for _ in range(repeats)], [run(START_UP_FILES) for _ in range(repeats)])


def _median_wall(command: list[str], repeats: int) -> float:
    return statistics.median(process_tree.run(command, cwd=REPOSITORY).wall_seconds for _ in range(repeats))


def start_up_parts(start_up_csv: str, workers: int, repeats: int) -> dict[str, float]:
    """Wall seconds of what a local job spends before and after its first image, part by part."""
    imports = _median_wall([sys.executable, "-c", "import beam_pipelines.preprocess"], repeats)
    beam_imports = _median_wall([sys.executable, "-c", "import apache_beam"], repeats)
    minimal = _median_wall([sys.executable, "-c", MINIMAL_JOB.format(workers=workers)], repeats)
    parser = preprocess.build_parser()
    args, beam_args = parser.parse_known_args([f"--csv={start_up_csv}", "--output_dir=unused",
                                               f"--patient_key={PATIENT_KEY}"])
    graph_seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        pipeline = beam.Pipeline(options=build_pipeline_options(beam_args))
        preprocess.build_pipeline(pipeline, args)
        pipeline.to_runner_api()
        graph_seconds.append(time.perf_counter() - started)
    return {"Python start, Beam and the job's modules imported (driver)": imports,
            "graph built and translated (driver)": statistics.median(graph_seconds),
            f"a minimal two-stage Beam job beyond its imports ({workers} worker processes started, "
            "importing Beam, and shut down)": minimal - beam_imports}


def floor_section(loop: dict[int, tuple[float, float]], jobs: list[JobRuns], floor: JobRuns, runner_floor: JobRuns,
                  start_up: dict[str, float], read_ms: float, workers: int) -> list[str]:
    """Why the targets are out of reach: the runner's floor, the job's cost without the codec, its start-up."""
    loop_wall, loop_cpu = loop[floor.images]
    loop_ms = 1000 * loop_cpu / floor.images
    real = next(job for job in jobs if (job.images, job.mode, job.augment) == (floor.images, floor.mode, floor.augment))
    best_ms = floor.cpu_ms_per_image + loop_ms - read_ms
    start_up_job = real.start_up
    parts = {**start_up, f"the rest: the job's own stages on {START_UP_FILES} files": start_up_job - sum(
        start_up.values())}
    small_wall, _ = loop[SMALL_FILES]
    steady_small = (SMALL_FILES - START_UP_FILES) / real.steady_rate
    return [
        f"### The runner's floor: the job with the codec taken out ({floor.images:,} files)",
        "",
        "The same command with `benchmarks/codec_stub` on PYTHONPATH: every decode returns one precomputed "
        "image and every PNG encode its PNG, so the job still lists, reads and hashes every file, splits, "
        "builds the Examples, shuffles and writes the GZIP shards, with records of the real size.",
        "",
        "| run | wall (s) | CPU ms/image or record (driver / workers CPU s) | peak RSS MB (driver / workers) |",
        "|---|---:|---:|---:|",
        *(f"| {job.name} | {job.wall:.1f} | {job.cpu_ms_per_image:.2f} ({job.cpu_split()}) | "
          f"{job.peak_rss / MB:,.0f} ({job.rss_split()}) |" for job in (real, floor, runner_floor)),
        "",
        f"The minimal Beam job is the runner's own floor, side by side with the job's (the codec-free run) and the "
        f"codec's (the loop, {loop_ms:.2f} ms of CPU per image): {runner_floor.wall:.1f} s whole and "
        f"{runner_floor.start_up:.1f} s on {START_UP_FILES} records, so {1000 / runner_floor.steady_rate:.2f} ms of "
        "wall time per record beyond start-up.",
        "",
        f"Even if the job's decode did no more than the loop's codec work ({loop_ms:.2f} ms per image, of which "
        f"{read_ms:.2f} ms reading the file, which the floor run does too), the job would spend "
        f"{floor.cpu_ms_per_image:.2f} + {loop_ms - read_ms:.2f} = **{best_ms:.2f} ms of CPU per image**, so with "
        f"all {workers} cores busy it could be at most **{workers * loop_ms / best_ms:.2f}×** the loop; "
        f"{FULL_TARGET:.1f}× needs {workers * loop_ms / FULL_TARGET:.2f} ms or less. The peak memory without the "
        f"codec ({floor.peak_rss / MB:,.0f} MB) is the real job's ({real.peak_rss / MB:,.0f} MB): it is the "
        "runner holding the records between stages, not the decode.",
        "",
        f"Start-up, part by part (wall seconds, medians; the {START_UP_FILES}-file job in multi_processing):",
        "",
        "| part | s |",
        "|---|---:|",
        *(f"| {name} | {seconds:.2f} |" for name, seconds in parts.items()),
        f"| **the {START_UP_FILES}-file job, whole** | **{start_up_job:.2f}** |",
        "",
        f"At {SMALL_FILES:,} files the loop takes {small_wall:.1f} s; at its steady rate the job needs "
        f"{steady_small:.1f} s for the images alone, "
        + (f"which leaves {small_wall - steady_small:.1f} s for the whole start-up if it is to match the loop"
           if small_wall > steady_small else "already longer than the loop, before any start-up")
        + f", against {start_up[next(iter(start_up))]:.1f} s for starting Python and importing Beam alone.",
        "",
    ]


def report(conditions: str, loop: dict[int, tuple[float, float]], jobs: list[JobRuns],
           stages: dict[str, dict[str, float]], listing_ms: float, decoders: dict[str, float],
           profile: dict[str, dict[str, float]], workers: int, floor: list[str]) -> str:
    def loop_rate(images: int) -> float:
        return images / loop[images][0]

    def loop_cpu_ms(images: int) -> float:
        return 1000 * loop[images][1] / images

    rows = []
    for job in jobs:
        rate = job.images / job.wall
        ratio = rate / loop_rate(job.images)
        rows.append(f"| {job.name} | {job.images:,} | {job.wall:.1f} | {rate:.0f} | **{ratio:.2f}×** | "
                    f"{job.start_up:.1f} | {job.steady_rate:.0f} | {job.cpu_ms_per_image:.2f} ({job.cpu_split()}) | "
                    f"{workers * loop_cpu_ms(job.images) / job.cpu_ms_per_image:.2f}× | "
                    f"{job.peak_rss / MB:,.0f} ({job.rss_split()}) |")
    loop_rows = [f"| one-core codec-limit loop | {images:,} | {wall:.1f} | {images / wall:.0f} | 1.00× | – | "
                 f"{images / wall:.0f} | {1000 * cpu / images:.2f} | – | – |"
                 for images, (wall, cpu) in sorted(loop.items())]

    def verdict(images: int, target: float) -> str:
        candidates = [job for job in jobs if job.images == images and job.augment == NO_AUGMENTATION]
        best = max(candidates, key=lambda job: job.images / job.wall)
        ratio = best.images / best.wall / loop_rate(images)
        return (f"{images:,} files, ≥ {target:.1f}× the loop: best {ratio:.2f}× ({best.name}) — "
                f"{'met' if ratio >= target else 'not met'}")

    largest = max(loop)
    targets = [verdict(largest, FULL_TARGET)] if largest > SMALL_FILES else []
    targets.append(verdict(SMALL_FILES, SMALL_TARGET))
    peak = max(job.peak_rss for job in jobs)
    targets.append(f"peak RSS of a whole job ≤ {RSS_TARGET_BYTES / MB:,.0f} MB: worst {peak / MB:,.0f} MB — "
                   f"{'met' if peak <= RSS_TARGET_BYTES else 'not met'}")

    own_work = sum(stages[NO_AUGMENTATION_LABEL].values())
    budget_rows = []
    for job in (job for job in jobs if job.images == largest and job.augment == NO_AUGMENTATION):
        start_up = 1000 * statistics.median(run.total_cpu_seconds for run in job.start_up_runs) / job.images
        parts = {"codec work (the loop's CPU per image)": loop_cpu_ms(largest),
                 "the job's own per-image work beyond the codec (stage table)": own_work - loop_cpu_ms(largest),
                 f"start-up: CPU of the {START_UP_FILES}-file job, spread over the images": start_up}
        parts["Beam runner, data plane and process contention (the rest)"] = job.cpu_ms_per_image - sum(parts.values())
        budget_rows.append((job.name, parts, job.cpu_ms_per_image))
    budget = [f"| {name} | " + " | ".join(f"{parts[name]:.2f}" for _, parts, _ in budget_rows) + " |"
              for name in (budget_rows[0][1] if budget_rows else {})]
    budget.append("| **total: the job's CPU per image** | "
                  + " | ".join(f"**{total:.2f}**" for _, _, total in budget_rows) + " |")
    lines = [
        "## Data plane: preprocess job at the real RSNA size",
        "",
        conditions,
        "",
        "| run | images | wall (s) | images/s | over the loop | start-up (s) | steady images/s "
        "| CPU ms/image (driver / workers CPU s) | CPU ceiling | peak RSS MB (driver / workers) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *loop_rows,
        *rows,
        "",
        "Targets (whole-job wall time, start-up included, against the loop on the same files):",
        "",
        *(f"- {line}" for line in targets),
        "",
        f"Start-up is the whole-job wall time on {START_UP_FILES} files in the same mode; the steady rate is the "
        f"extra images over the extra time. CPU is the whole process tree's (user + system, every process "
        f"of the job). The CPU ceiling is {workers} × the loop's CPU per image ÷ the job's: the most the job "
        f"could be over the loop with all {workers} cores busy, whatever else runs on the machine.",
        "",
        f"### Where the job's CPU goes, per image ({largest:,} files, no augmentation)",
        "",
        "| part | " + " | ".join(name for name, _, _ in budget_rows) + " |",
        "|---|" + "---:|" * len(budget_rows),
        *budget,
        "",
        *floor,
        f"### The job's own per-image code, stage by stage (one core, no Beam, {STAGE_FILES:,} files)",
        "",
        "CPU ms per input image; codec stages (also in the loop): " + ", ".join(CODEC_STAGES) + ".",
        "",
        "| stage | " + " | ".join(stages) + " |",
        "|---|" + "---:|" * len(stages),
        *(f"| {name} | " + " | ".join(f"{column[name]:.3f}" for column in stages.values()) + " |"
          for name in STAGE_NAMES),
        "| **all stages** | " + " | ".join(f"**{sum(column.values()):.3f}**" for column in stages.values()) + " |",
        "",
        f"Listing the label files (one worker, before the fan-out): {listing_ms * 1000:.1f} µs CPU per listed "
        f"patient, {listing_ms * rsna_layout.layout_counts()['patients'] / 1000:.2f} s for the full label files.",
        "",
        f"Decoding one frame, median CPU ms over {DECODER_FILES} files: "
        + "; ".join(f"{name} {value:.2f}" for name, value in decoders.items()) + ".",
        "",
        f"### The job's processes, profiled ({SMALL_FILES:,} files, multi_processing, no augmentation)",
        "",
        "Per-thread CPU profiles of the driver and both workers (`benchmarks/thread_profiler`). cProfile "
        "slows Python-heavy code (pydicom, Beam) more than the C codecs: read shares, not absolute costs.",
        "",
        "| category | " + " | ".join(f"{role} CPU s" for role in profile) + " |",
        "|---|" + "---:|" * len(profile),
        *(f"| {category} | " + " | ".join(f"{profile[role][category]:.2f}" for role in profile) + " |"
          for category in next(iter(profile.values()), {})),
        "",
        READING,
    ]
    return "\n".join(lines) + "\n"


def conditions_line(workers: int, image_size: int, mean_file_kb: float, load_before: float, note: str) -> str:
    load_after = os.getloadavg()[0]
    return ((f"**{note}** " if note else "")
            + f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {machine.cpu_name()} ({platform.machine()}), "
            f"{os.cpu_count()} cores, "
            f"CPython {platform.python_version()}, {workers} local workers (FnApiRunner); 1-minute load average "
            f"{load_before:.1f} before and {load_after:.1f} after the runs (above {os.cpu_count()} means other work "
            f"shared the cores and wall times are pessimistic). Files: 1024² 8-bit JPEG Baseline DICOMs, mean "
            f"{mean_file_kb:.0f} KB; output {image_size}².")


def run_benchmark(args: argparse.Namespace) -> str:
    load_before = os.getloadavg()[0]
    work_dir = os.path.abspath(args.work_dir)
    rsna_dir = rsna_layout.write_layout(os.path.join(work_dir, "rsna-stage2"))
    rows = rsna_layout.used_images(rsna_dir)
    small = rows[:SMALL_FILES]
    small_csv = write_csv(small, os.path.join(work_dir, f"rsna-{SMALL_FILES}.csv"))
    start_up_csv = write_csv(small[:START_UP_FILES], os.path.join(work_dir, f"rsna-{START_UP_FILES}.csv"))
    mean_file_kb = statistics.mean(os.path.getsize(row["image_uri"]) for row in small) / 1024
    loop = codec_limit_loop(rows if args.full else small, args.image_size,
                            [SMALL_FILES, len(rows)] if args.full else [SMALL_FILES])
    stages = {label: stage_costs(small[:STAGE_FILES], args.image_size, augment, work_dir)
              for augment, label in AUGMENT_SETTINGS}
    listing_ms = listing_ms_per_patient(rsna_dir)
    decoders = decoder_alternatives(small[:DECODER_FILES], args.image_size)
    runner = JobRunner(work_dir, args.image_size, args.workers)
    configurations = [(f"--csv={small_csv}", len(small), args.repeats)]
    if args.full:
        configurations.insert(0, (f"--rsna_dir={rsna_dir}", len(rows), 1))
    jobs = []
    for mode in RUNNING_MODES:
        start_up = [runner.run(f"--csv={start_up_csv}", START_UP_FILES, mode, NO_AUGMENTATION)
                    for _ in range(args.repeats)]
        for source_flag, used, repeats in configurations:
            for augment, label in AUGMENT_SETTINGS:
                runs = [runner.run(source_flag, used, mode, augment) for _ in range(repeats)]
                jobs.append(JobRuns(f"job, {mode}, {label}", mode, augment, used, runs, start_up))
    profile = profile_job(runner, f"--csv={small_csv}", len(small), os.path.join(work_dir, "profiles"))
    source_flag, used, _ = configurations[0]
    floor = floor_section(loop, jobs, codec_free_job(runner, source_flag, used, rows[0]["image_uri"]),
                          runner_floor_job(args.workers, args.repeats),
                          start_up_parts(start_up_csv, args.workers, args.repeats),
                          stages[NO_AUGMENTATION_LABEL]["read file"], args.workers)
    conditions = conditions_line(args.workers, args.image_size, mean_file_kb, load_before, args.note)
    return report(conditions, loop, jobs, stages, listing_ms, decoders, profile, args.workers, floor)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default="bench_output")
    parser.add_argument("--image_size", type=int, default=contract.DEFAULT_IMAGE_SIZE)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each small job; the median counts.")
    parser.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                        help="Also run the full RSNA size (14,863 used images); --no-full for a quick look.")
    parser.add_argument("--note", default="", help="Printed before the conditions, e.g. that the machine was shared.")
    return run_benchmark(parser.parse_args(argv))

if __name__ == "__main__":
    print(main())
