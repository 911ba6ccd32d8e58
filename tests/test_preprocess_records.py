"""The preprocess job's records, byte for byte, against those of the job before the lean graph.

A fixed synthetic input set (RSNA DICOMs, covid bitmaps, and a CSV whose rows list one
image twice, one image under two labels and one image under two file names) is run
through the job with fixed multipliers and with `--augment=auto`. For every shard the
digest of its decompressed content (the TFRecord stream: framing and serialized
Examples) must equal the reference, as must the rejected records and the manifest's
counts. The reference file was written by the job as it was at commit 382d0d2, before
the graph change (see `tests/data/preprocess_reference.json`, "made_by"):

    git archive 382d0d2 | tar -x -C OLD
    cd OLD && PYTHONPATH=OLD python NEW/tests/test_preprocess_records.py NEW/tests/data/preprocess_reference.json

The inputs' own digest is in the reference too: if it differs, the synthesizer (or the
numpy and Pillow builds it renders with) changed, not the job.
"""

import glob
import gzip
import hashlib
import json
import os
import sys
import tempfile

import pytest

from beam_pipelines import preprocess
from cxr_core import contract, imaging
from synthetic import phantom
from synthetic import pipeline as synthesize

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "preprocess_reference.json")
PATIENT_KEY = "records-reference-key-0123456789"
IMAGE_SIZE = 32
RUNS = {"fixed multipliers": "normal=2,pneumonia=3,covid19=5", "auto multipliers": "auto"}
MANIFEST_COUNTS = ("augmentation_multipliers", "inputs", "patients", "originals", "originals_by_source", "examples",
                   "rejected", "notes", "shards", "warnings")


def write_inputs(root: str) -> None:
    """The synthetic sources plus `own.csv`, whose rows exercise every duplicate rule."""
    synthesize.run([f"--output_dir={root}", "--num_rsna=40", "--num_covid=16", "--image_size=96", "--seed=23"])
    own = os.path.join(root, "own")
    os.makedirs(own)
    for name, seed, label in (("a.png", 1, "normal"), ("b.png", 2, "pneumonia"), ("c.png", 3, "covid19"),
                              ("d.png", 4, "normal"), ("e.png", 5, "covid19")):
        with open(os.path.join(own, name), "wb") as handle:
            handle.write(imaging.encode_png(imaging.scale_to_uint8(phantom.render_chest(seed, label, 64))))
    with open(os.path.join(own, "c.png"), "rb") as source, open(os.path.join(own, "c-copy.png"), "wb") as copy:
        copy.write(source.read())
    with open(os.path.join(root, "own.csv"), "w") as handle:
        handle.write("image_uri,label,patient_id,view\n"
                     "own/a.png,normal,own-1,PA\n"       # listed twice alike: one is a duplicate
                     "own/a.png,normal,own-1,PA\n"
                     "own/b.png,pneumonia,own-2,PA\n"    # two labels: both conflict
                     "own/b.png,normal,own-2,PA\n"
                     "own/c.png,covid19,own-3,AP\n"      # the same bytes under two names
                     "own/c-copy.png,covid19,own-3,AP\n"
                     "own/d.png,normal,own-4,PA\n"
                     "own/e.png,covid19,own-5,PA\n"
                     "own/missing.png,normal,own-6,PA\n")


def inputs_digest(root: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(glob.glob(f"{root}/**/*", recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                digest.update(f"{os.path.relpath(path, root)}\0".encode() + hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()


def run_digests(root: str, output_dir: str, augment: str) -> dict:
    """What the job wrote, reduced to digests (shards, rejected records) and the manifest's counts."""
    manifest = preprocess.run([
        f"--rsna_dir={root}/rsna", f"--covid_dir={root}/covid", f"--csv={root}/own.csv",
        f"--output_dir={output_dir}", f"--image_size={IMAGE_SIZE}", f"--augment={augment}", "--seed=7",
        "--target_shard_mb=0.01", "--min_shards=3", f"--patient_key={PATIENT_KEY}"])
    shards = {}
    for path in sorted(glob.glob(os.path.join(output_dir, "*" + contract.TFRECORD_SUFFIX))):
        with gzip.open(path, "rb") as handle:
            shards[os.path.basename(path)] = hashlib.sha256(handle.read()).hexdigest()
    rejected = []
    for path in glob.glob(os.path.join(output_dir, "rejected-*.jsonl")):
        with open(path) as handle:
            rejected.extend(line.strip() for line in handle if line.strip())
    return {"shards": shards,
            "rejected": hashlib.sha256("\n".join(sorted(rejected)).encode()).hexdigest(),
            "manifest": {key: manifest[key] for key in MANIFEST_COUNTS}}


def job_digests() -> dict:
    with tempfile.TemporaryDirectory() as work_dir:
        root = os.path.join(work_dir, "raw")
        write_inputs(root)
        digests = {"inputs": inputs_digest(root)}
        for name, augment in RUNS.items():
            digests[name] = run_digests(root, os.path.join(work_dir, name.replace(" ", "_")), augment)
        return digests


@pytest.fixture(scope="module")
def reference() -> dict:
    with open(REFERENCE) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def digests() -> dict:
    return job_digests()


def test_the_inputs_are_those_the_reference_was_made_from(reference, digests):
    assert digests["inputs"] == reference["inputs"], "the synthetic inputs changed; the comparison below is void"


@pytest.mark.parametrize("run", RUNS)
def test_records_are_byte_identical_to_the_reference(reference, digests, run):
    assert digests[run]["shards"] == reference[run]["shards"]
    assert len(digests[run]["shards"]) >= 5


@pytest.mark.parametrize("run", RUNS)
def test_rejections_and_counts_are_those_of_the_reference(reference, digests, run):
    assert digests[run]["manifest"] == reference[run]["manifest"]
    assert digests[run]["rejected"] == reference[run]["rejected"]
    assert {"dedupe/duplicate", "dedupe/duplicate_conflict"} <= set(digests[run]["manifest"]["rejected"])


if __name__ == "__main__":
    result = job_digests()
    result["made_by"] = ("tests/test_preprocess_records.py's job_digests(), run from a checkout of commit "
                         + (sys.argv[2] if len(sys.argv) > 2 else "(unknown)") + " on PYTHONPATH")
    with open(sys.argv[1], "w") as out:
        json.dump(result, out, indent=1, sort_keys=True)
        out.write("\n")
