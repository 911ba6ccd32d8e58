"""Where a run writes, and the JSON files it keeps current while it trains.

Only the chief writes any of them. Every path goes through tf.io.gfile, so a job dir on
gs:// (or ram://) works like a local one.
"""

import dataclasses
import json
import os

import tensorflow as tf

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    """Where a run writes; only the chief writes anything (other workers' checkpoints are temporary)."""

    job_dir: str
    checkpoint_dir: str
    tensorboard_dir: str

    @property
    def config_file(self) -> str:
        return os.path.join(self.job_dir, CONFIG_FILE)

    @property
    def history_file(self) -> str:
        return os.path.join(self.job_dir, HISTORY_FILE)

    @property
    def eval_dir(self) -> str:
        return os.path.join(self.job_dir, "eval")

    @property
    def export_dir(self) -> str:
        return os.path.join(self.job_dir, "export")

    @property
    def keras_file(self) -> str:
        return os.path.join(self.job_dir, "model.keras")


class EpochHistory:
    """Keeps history.json current after every epoch, across stages and restarts.

    A resumed run appends to the file it finds; an epoch run again after a crash
    replaces its earlier entry.
    """

    def __init__(self, path: str):
        self.path = path
        self.epochs: list[dict] = []
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as existing:
                self.epochs = json.load(existing)["epochs"]

    def record(self, entry: dict) -> None:
        self.epochs = sorted([e for e in self.epochs if e["epoch"] != entry["epoch"]] + [entry],
                             key=lambda e: e["epoch"])
        write_json_atomically(self.path, {"epochs": self.epochs})


def write_json_atomically(path: str, content: dict) -> None:
    """Written aside and renamed, so a job killed mid-write leaves the previous file intact."""
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(f"{path}.partial", "w") as output:
        json.dump(content, output, indent=2)
    tf.io.gfile.rename(f"{path}.partial", path, overwrite=True)
