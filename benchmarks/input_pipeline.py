"""Input-pipeline benchmark: can tf.data feed the trainer faster than the model trains?

Measured on this machine, on the trainer's own code (`trainer.input_pipeline`,
`trainer.model`):
1. tf.data throughput in images/s (list, interleaved GZIP reads, parse, PNG decode,
   ResNet50 preprocessing, batching; no model), on all cores and on one core;
2. training steps/s of the real model (ResNet50 + head, random weights, no download)
   fed by that pipeline, against the same steps fed one batch held in memory. A
   ratio ≥ 0.95 means the input is not the bottleneck. On a CPU the pipeline and the
   model share the same cores, which is the hard case.
Then, on paper: the images/s 8 GPUs consume for ResNet50 at 128², and the CPU cores
the input pipeline needs for them at the measured per-core rate.

Without --data_dir it writes its own phantom TFRecords (`synthetic.records`).
"""

import argparse
import datetime
import os
import time
from collections.abc import Iterator

import keras
import tensorflow as tf

from benchmarks import machine
from cxr_core import contract
from synthetic import records as synthetic_records
from trainer import input_pipeline, model

SYNTHETIC_PER_CLASS = 400
SYNTHETIC_SHARDS = 8
THROUGHPUT_BATCH = 64
THROUGHPUT_IMAGES = 4096
TIMED_ROUNDS = 4
WARM_UP_STEPS = 3

# NVIDIA DeepLearningExamples, TensorFlow ResNet-50 v1.5 README, training throughput at
# 224², mixed precision + XLA, batch 256 per GPU: DGX A100 (A100 40GB) and DGX-1 (V100 16GB).
PUBLISHED_IMAGES_PER_SECOND_224 = {"A100 40GB": 2375, "V100 16GB": 1270}
GPUS = 8
A2_HIGHGPU_8G_CORES = 48  # Google Cloud's 8×A100 machine type: 96 vCPUs = 48 physical cores.


def train_split(data_dir: str | None, work_dir: str, image_size: int) -> input_pipeline.SplitData:
    """The train shards of --data_dir, or freshly written phantom ones."""
    if data_dir is None:
        data_dir = os.path.join(work_dir, f"records-{image_size}")
        if not input_pipeline.list_shards(data_dir, "train"):
            synthetic_records.write_split(data_dir, "train", SYNTHETIC_PER_CLASS, image_size,
                                          SYNTHETIC_SHARDS, seed=2026)
    shards = input_pipeline.list_shards(data_dir, "train")
    if not shards:
        raise SystemExit(f"no train shards in {data_dir}")
    return input_pipeline.SplitData("train", tuple(shards), (0,) * contract.NUM_CLASSES)


def pipeline_images_per_second(split: input_pipeline.SplitData, image_size: int, threads: int | None,
                               cache: bool = False, warm_up_batches: int = 4) -> float:
    """Images/s through the training pipeline; `threads=1` confines tf.data to one core.

    With `cache`, `warm_up_batches` should cover the first pass, which decodes and fills the cache.
    """
    dataset = input_pipeline.train_dataset(split, image_size, THROUGHPUT_BATCH, seed=0, cache=cache)
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
        dataset = dataset.with_options(options)
    batches = THROUGHPUT_IMAGES // THROUGHPUT_BATCH
    iterator = iter(dataset)
    for _ in range(warm_up_batches):  # Fill the shuffle buffer (and the cache) and start the threads.
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * THROUGHPUT_BATCH / (time.perf_counter() - start)


def interleaved_steps_per_second(network: keras.Model, sources: dict[str, Iterator], steps: int,
                                 rounds: int = TIMED_ROUNDS) -> dict[str, float]:
    """{source: steps/s} of the fastest of `rounds` timed runs, the sources taking turns.

    Taking turns exposes every source to the same background noise of a shared
    machine; every step pulls its batch in Python and trains on it the same way, so
    the sources differ only in where the batch comes from.
    """
    for iterator in sources.values():  # Warm-up: trace the step, fill the prefetch buffers.
        for _ in range(WARM_UP_STEPS):
            network.train_on_batch(*next(iterator))
    best = dict.fromkeys(sources, 0.0)
    for _ in range(rounds):
        for name, iterator in sources.items():
            start = time.perf_counter()
            for _ in range(steps):
                network.train_on_batch(*next(iterator))
            best[name] = max(best[name], steps / (time.perf_counter() - start))
    return best


def feed_ratios(split: input_pipeline.SplitData, image_size: int, batch_size: int,
                steps: int) -> dict[int, tuple[float, float]]:
    """{stage: (steps/s fed by tf.data, steps/s fed from memory)} for both training stages."""
    pipeline = input_pipeline.train_dataset(split, image_size, batch_size, seed=0)
    sources = {"pipeline": iter(pipeline),
               "memory": iter(tf.data.Dataset.from_tensors(next(iter(pipeline))).repeat())}
    network = model.build_model(image_size, weights=None)
    rates = {}
    for stage in (1, 2):
        model.set_stage(network, stage, pretrained=False)
        network.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")
        best = interleaved_steps_per_second(network, sources, steps)
        rates[stage] = (best["pipeline"], best["memory"])
    return rates


def report(image_size: int, batch_size: int, num_records: int, num_shards: int, all_cores: float,
           one_core: float, one_core_cached: float, rates: dict[int, tuple[float, float]], steps: int,
           load: str) -> str:
    cores = os.cpu_count() or 1
    scale = (224 / image_size) ** 2
    lines = [
        "## Trainer input pipeline (tf.data)",
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine.cpu_name()}, {cores} logical CPU(s), "
        f"TensorFlow {tf.__version__}, by `python -m benchmarks.input_pipeline`: {num_records} "
        f"records of {image_size}² PNGs in {num_shards} GZIP shards. Load average before the run: {load} "
        "(other processes may share the machine; a 1-minute figure near or above the core count means they did).",
        "",
        "| measurement | value |",
        "| --- | --- |",
        f"| tf.data read + parse + PNG decode + preprocess + batch, all {cores} cores | "
        f"{all_cores:,.0f} images/s |",
        f"| the same, one core (private thread pool of 1) | {one_core:,.0f} images/s |",
        f"| one core, later passes from the decoded-image cache (`--cache`: no read, parse or PNG decode) | "
        f"{one_core_cached:,.0f} images/s |",
    ]
    stage_names = {1: "stage 1 (head only)", 2: "stage 2 (whole network)"}
    for stage, (from_pipeline, from_memory) in rates.items():
        lines.append(f"| training steps/s, {stage_names[stage]}, batch {batch_size}: tf.data / in memory | "
                     f"{from_pipeline:.3f} / {from_memory:.3f} = **{from_pipeline / from_memory:.2f}** "
                     f"(target ≥ 0.95) |")
    lines += [
        "",
        "Steps fed from memory repeat one batch that is already decoded; the ratio is what the",
        "input pipeline costs the training loop when both share this CPU. The two sources take",
        f"turns, {TIMED_ROUNDS} timed runs of {steps} steps each, and each rate is the best of its runs;",
        "ratios a few percent above 1 are run-to-run noise.",
        "",
        f"### On paper: {GPUS} GPUs training ResNet50 at {image_size}²",
        "",
        "Per-GPU training throughput at 224² from NVIDIA's published DeepLearningExamples figures",
        "(TensorFlow ResNet-50 v1.5, mixed precision + XLA, batch 256), scaled by pixel count",
        f"(224² / {image_size}² = {scale:.2f}×). That scaling is optimistic for small images, which",
        "use a GPU less well, so the core counts are upper bounds.",
        "",
        f"| GPU | images/s per GPU at 224² | at {image_size}² | {GPUS} GPUs | CPU cores for tf.data at "
        f"{one_core:,.0f} images/s per core |",
        "| --- | --- | --- | --- | --- |",
    ]
    for gpu, per_gpu_224 in PUBLISHED_IMAGES_PER_SECOND_224.items():
        per_gpu = per_gpu_224 * scale
        total = per_gpu * GPUS
        lines.append(f"| {gpu} | {per_gpu_224:,} | {per_gpu:,.0f} | {total:,.0f} | {total / one_core:,.0f} |")
    a100_cores = PUBLISHED_IMAGES_PER_SECOND_224["A100 40GB"] * scale * GPUS / one_core
    verdict = ("leaving the rest for the training process" if a100_cores < A2_HIGHGPU_8G_CORES
               else "more than the VM has: decode fewer pixels per image or move decoding off the VM")
    lines += [
        "",
        f"Cores are physical-core equivalents (one tf.data thread each). An 8×A100 `a2-highgpu-8g` VM has "
        f"{A2_HIGHGPU_8G_CORES} cores (96 vCPUs); the pipeline needs {a100_cores:.0f} of them at the A100 rate, "
        f"{verdict}. Once the decoded images are cached (`--cache`, after the first epoch, when the train split "
        f"fits the memory budget) a core serves {one_core_cached:,.0f} images/s and the same rate needs "
        f"{a100_cores * one_core / one_core_cached:.0f} cores.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", help="preprocess output to read (default: write phantom records)")
    parser.add_argument("--work_dir", default=os.path.join("bench_output", "input_pipeline"))
    parser.add_argument("--image_size", type=int, default=contract.DEFAULT_IMAGE_SIZE)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per measurement")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    load = " / ".join(f"{value:.1f}" for value in os.getloadavg())
    split = train_split(args.data_dir, args.work_dir, args.image_size)
    num_records = sum(1 for _ in tf.data.TFRecordDataset(split.shards, compression_type=contract.TFRECORD_COMPRESSION))
    all_cores = pipeline_images_per_second(split, args.image_size, threads=None)
    one_core = pipeline_images_per_second(split, args.image_size, threads=1)
    one_core_cached = pipeline_images_per_second(split, args.image_size, threads=1, cache=True,
                                                 warm_up_batches=-(-num_records // THROUGHPUT_BATCH) + 1)
    rates = feed_ratios(split, args.image_size, args.batch_size, args.steps)
    return report(args.image_size, args.batch_size, num_records, len(split.shards), all_cores, one_core,
                  one_core_cached, rates, args.steps, load)


if __name__ == "__main__":
    print(main())
