"""Small training-ready datasets rendered from the chest phantom, without the Beam job.

Tests, the input-pipeline benchmark and trainer smoke runs need records in seconds.
They are built with the preprocess job's own pieces (`phantom`, `imaging`,
`augmentation`, `example_codec`) and written with its shard naming, so the trainer
cannot tell them apart from the job's output; only the manifest is missing.
Classes are balanced; train can carry augmented copies (augmentation index > 0).
"""

import hashlib

import numpy as np
import tensorflow as tf

from beam_pipelines import example_codec
from cxr_core import contract, imaging
from synthetic import phantom

SOURCE = "synthetic"
VIEW = "PA"


def render_pixels(label: str, image_size: int, image_seed: int) -> np.ndarray:
    """A uint8 grayscale phantom radiograph of class `label`."""
    return imaging.scale_to_uint8(phantom.render_chest(image_seed, label, image_size))


def write_split(output_dir: str, split: str, per_class: int, image_size: int, num_shards: int = 1,
                augmented_copies: int = 0, seed: int = 0) -> list[str]:
    """Writes `per_class` originals of every class (+ copies) as GZIP shards; returns the paths."""
    examples = []
    for label in contract.CLASS_NAMES:
        for index in range(per_class):
            image_id = f"{split}-{label}-{index}"
            image_seed = int.from_bytes(hashlib.sha256(f"{seed}/{image_id}".encode()).digest()[:8], "big")
            fields = example_codec.ExampleFields(label=label, image_id=image_id, source=SOURCE, view=VIEW,
                                                 patient_id=hashlib.sha256(image_id.encode()).hexdigest()[:16])
            examples.extend(serialized for _, serialized in example_codec.serialize_with_copies(
                render_pixels(label, image_size, image_seed), fields, 1 + augmented_copies, seed))
    order = np.random.default_rng(seed).permutation(len(examples))
    tf.io.gfile.makedirs(output_dir)
    paths = []
    for shard in range(num_shards):
        path = f"{output_dir.rstrip('/')}/{contract.shard_name(split, shard, num_shards)}"
        with tf.io.TFRecordWriter(path, options=contract.TFRECORD_COMPRESSION) as writer:
            for position in order[shard::num_shards]:
                writer.write(examples[position])
        paths.append(path)
    return paths


def write_dataset(output_dir: str, image_size: int, per_class: dict[str, int],
                  num_shards: dict[str, int] | None = None, augmented_copies: int = 0, seed: int = 0) -> str:
    """Writes train/val/test; augmented copies go to train only, as in the preprocess job."""
    for split in contract.SPLITS:
        write_split(output_dir, split, per_class[split], image_size, (num_shards or {}).get(split, 1),
                    augmented_copies if split == "train" else 0, seed)
    return output_dir
