"""The preprocess job over a mixed set of bad inputs, in both local running modes.

The worker-thread run is read by most tests; the worker-process run (slow) by those that
compare the two modes or check what worker processes print.

Patient ids, file names and folder names below the source roots are distinctive strings,
so that any of them reaching an output file or a log line is caught. Every input must
be used or rejected (`listed = used + rejected`), and the records must not depend on
whether the workers are threads or processes.
"""

import contextlib
import glob
import gzip
import io
import json
import logging
import os
import shutil
import struct
import sys
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image

from beam_pipelines import preprocess, sources
from cxr_core import contract
from synthetic import dicom_writer, phantom

PATIENT_KEY = "bad-inputs-test-key-0123456789"
IMAGE_SIZE = 32
SOURCE_SIDE = 64
RSNA_PATIENTS = [f"Quokka{index:02d}Marlowe" for index in range(14)]
COVID_FOLDER = "Ward7-Okonkwo-Adaeze"
OWN_FOLDER = "Clinic-Featherstonehaugh-Imogen"
DISTINCTIVE = ["Quokka", "Marlowe", "Okonkwo", "Adaeze", "Featherstonehaugh", "Imogen", "Bartholomew",
               "Persephone", "Zebedee"]
EXPECTED_KINDS = {
    "label/wrong_field_count", "label/missing_patient_id", "label/missing_detailed_class", "label/unknown_label",
    "select/view_not_allowed", "select/not_xray", "select/excluded_not_normal",
    "read/missing_file", "decode/truncated_file", "decode/image_too_large", "decode/not_an_image",
    "dedupe/duplicate", "dedupe/duplicate_conflict",
}


def dicom(seed: int, label: str, **header) -> bytes:
    data = dicom_writer.dicom_bytes(phantom.render_chest(seed, label, SOURCE_SIDE), patient_id=f"Zebedee{seed}",
                                    view="PA", sex="F", age=50, uid_seed=str(seed), transfer_syntax="explicit_le",
                                    bits_stored=12)
    if not header:
        return data
    dataset = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in header.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def png(seed: int, label: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((phantom.render_chest(seed, label, SOURCE_SIDE) >> 8).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def png_claiming_100_megapixels() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10_000, 10_000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def write(path: str, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


def build_rsna(root: str) -> None:
    """14 patients: 7 usable, the others each wrong in one way."""
    p = RSNA_PATIENTS
    images = f"{root}/{sources.RSNA_IMAGES_DIR}"
    for index, patient in enumerate(p[:6]):
        write(f"{images}/{patient}.dcm", dicom(index, "pneumonia" if index % 2 else "normal"))
    write(f"{images}/{p[6]}.dcm", dicom(6, "normal", WindowCenter=100, WindowWidth=0))  # used, with a note
    write(f"{images}/{p[7]}.dcm", dicom(7, "normal")[:3000])  # truncated
    write(f"{images}/{p[8]}.dcm", dicom(8, "normal", ViewPosition="LL"))  # a lateral
    write(f"{images}/{p[9]}.dcm", dicom(9, "normal", Modality="CT"))  # not a radiograph
    write(f"{images}/{p[10]}.dcm", dicom(10, "normal", Rows=30_000, Columns=30_000))  # claims 900 MP
    # p[11]: Target=0, absent from the class info; p[12]: not normal (excluded); p[13]: no file.
    write(f"{images}/{p[11]}.dcm", dicom(11, "normal"))
    write(f"{images}/{p[12]}.dcm", dicom(12, "normal"))
    targets = {patient: "1" if index % 2 else "0" for index, patient in enumerate(p)}
    targets.update({p[11]: "0", p[12]: "0", p[13]: "1"})
    rows = [f"{patient},,,,,{targets[patient]}" for patient in p]
    rows += [f"{p[1]},1,2,3,4", "nan,,,,,1"]  # a row without Target, a placeholder patient id
    write(f"{root}/{sources.RSNA_LABELS_FILE}", "patientId,x,y,width,height,Target\n" + "\n".join(rows) + "\n")
    classes = [f"{patient},{'Lung Opacity' if targets[patient] == '1' else 'Normal'}" for patient in p
               if patient not in (p[11], p[12])] + [f"{p[12]},No Lung Opacity / Not Normal"]
    write(f"{root}/{sources.RSNA_CLASS_INFO_FILE}", "patientId,class\n" + "\n".join(classes) + "\n")


def build_covid(root: str) -> None:
    header = "patientid,finding,view,modality,folder,filename,clinical_notes"
    rows = []
    for index in range(6):
        name = f"Bartholomew-{index}.png"
        write(f"{root}/{COVID_FOLDER}/{name}", png(100 + index, "covid19"))
        rows.append(f"Bartholomew{index},Pneumonia/Viral/COVID-19,PA,X-ray,{COVID_FOLDER},{name},")
    write(f"{root}/{COVID_FOLDER}/Bartholomew-lateral.png", png(110, "covid19"))
    write(f"{root}/{COVID_FOLDER}/Bartholomew-nobody.png", png(111, "covid19"))
    write(f"{root}/{COVID_FOLDER}/Bartholomew-broken.png", b"\x89PNG\r\n\x1a\n broken")
    rows += [f"Bartholomew6,Pneumonia/Viral/COVID-19,L,X-ray,{COVID_FOLDER},Bartholomew-lateral.png,",
             f",Pneumonia/Viral/COVID-19,PA,X-ray,{COVID_FOLDER},Bartholomew-nobody.png,",
             f"Bartholomew7,Pneumonia/Viral/COVID-19,AP,X-ray,{COVID_FOLDER},Bartholomew-broken.png,"
             '"cough, fever\nday 3: worse"']
    write(f"{root}/{sources.COVID_METADATA_FILE}", header + "\n" + "\n".join(rows) + "\n")


def build_own(raw: str) -> None:
    """The user's CSV: good PNGs, duplicates of an RSNA and a covid image, and bad rows (13 in all)."""
    folder = f"{raw}/own/{OWN_FOLDER}"
    rows = []
    for index in range(5):
        write(f"{folder}/Persephone-{index}.png", png(200 + index, "normal"))
        rows.append(f"{OWN_FOLDER}/Persephone-{index}.png,normal,Persephone{index},PA")
    # Line 7: the bytes of a covid image under another name, label and patient: both listings conflict.
    shutil.copy(f"{raw}/covid/{COVID_FOLDER}/Bartholomew-0.png", f"{folder}/Persephone-copy.png")
    rows.append(f"{OWN_FOLDER}/Persephone-copy.png,normal,Persephone9,")
    # Line 8: an RSNA image listed again, same patient and label: used once.
    rows.append(f"{raw}/rsna/{sources.RSNA_IMAGES_DIR}/{RSNA_PATIENTS[0]}.dcm,normal,{RSNA_PATIENTS[0]},")
    write(f"{folder}/Persephone-bomb.png", png_claiming_100_megapixels())
    rows += [f"{OWN_FOLDER}/Persephone-bomb.png,normal,Persephone5,",
             f"{OWN_FOLDER}/Persephone-missing.png,normal,Persephone6,",
             f"{OWN_FOLDER}/Persephone-0.png,normal",  # two fields
             f"{OWN_FOLDER}/Persephone-1.png,effusion,Persephone1,",
             f"{OWN_FOLDER}/Persephone-2.png,normal,null,",
             f"{OWN_FOLDER}/Persephone-3.png,normal,Persephone3,LL"]
    write(f"{raw}/own/labels.csv", "image_uri,label,patient_id,view\n" + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> str:
    raw = str(tmp_path_factory.mktemp("raw"))
    build_rsna(f"{raw}/rsna")
    build_covid(f"{raw}/covid")
    build_own(raw)
    return raw


def run_job(raw: str, output_dir: str, *beam_flags: str) -> dict:
    return preprocess.run([f"--rsna_dir={raw}/rsna", f"--covid_dir={raw}/covid", f"--csv={raw}/own/labels.csv",
                           f"--output_dir={output_dir}", f"--image_size={IMAGE_SIZE}", f"--patient_key={PATIENT_KEY}",
                           "--augment=normal=1,pneumonia=1,covid19=2", *beam_flags])


@contextlib.contextmanager
def everything_printed_and_logged(sink_path: str):
    """Sends stdout, stderr (also of worker processes) and every log record of level INFO up to a file."""
    root, beam_logger = logging.getLogger(), logging.getLogger("apache_beam")
    levels = root.level, beam_logger.level
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(sink_path, "w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        root.addHandler(handler)
        root.setLevel(logging.INFO)  # as the job's own configure_logging() sets it
        beam_logger.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(io.TextIOWrapper(os.fdopen(os.dup(1), "wb"), write_through=True)), \
                    contextlib.redirect_stderr(io.TextIOWrapper(os.fdopen(os.dup(2), "wb"), write_through=True)):
                yield
        finally:
            root.removeHandler(handler)
            root.setLevel(levels[0])
            beam_logger.setLevel(levels[1])
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    with open(sink_path, "a") as sink:
        sink.write(handler.stream.getvalue())


def logged_run(raw: str, tmp_path_factory, mode: str, *beam_flags: str) -> tuple[str, dict, str]:
    """One job: its output folder, its manifest and everything it printed or logged."""
    output_dir = str(tmp_path_factory.mktemp(mode))
    log_path = str(tmp_path_factory.mktemp(f"{mode}_log") / "job.log")
    with everything_printed_and_logged(log_path):
        manifest = run_job(raw, output_dir, *beam_flags)
    with open(log_path, errors="replace") as handle:
        return output_dir, manifest, handle.read()


@pytest.fixture(scope="module")
def threads_run(raw, tmp_path_factory) -> tuple[str, dict, str]:
    return logged_run(raw, tmp_path_factory, "threads", "--direct_num_workers=8",
                      "--direct_running_mode=multi_threading")


@pytest.fixture(scope="module")
def processes_run(raw, tmp_path_factory) -> tuple[str, dict, str]:
    return logged_run(raw, tmp_path_factory, "processes", "--direct_num_workers=2",
                      "--direct_running_mode=multi_processing")


def read_rejected(output_dir: str) -> list[dict]:
    [path] = glob.glob(f"{output_dir}/rejected-*.jsonl")
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_every_input_is_used_or_rejected_with_its_kind(threads_run):
    output_dir, manifest, _ = threads_run
    rejected = read_rejected(output_dir)
    inputs = manifest["inputs"]
    assert inputs["listed"] == inputs["used"] + inputs["rejected"] == 16 + 9 + 13
    assert inputs["rejected"] == len(rejected)
    assert set(manifest["rejected"]) == EXPECTED_KINDS
    assert manifest["notes"] == {"invalid_voi_window": 1}
    conflicts = [row for row in rejected if row["kind"] == "duplicate_conflict"]
    assert {(row["source"], row["listing"]) for row in conflicts} == {("covid", "metadata.csv"), ("csv", "--csv")}
    assert "labels ['covid19', 'normal'] and 2 different patients" in conflicts[0]["reason"]
    [duplicate] = [row for row in rejected if row["kind"] == "duplicate"]
    assert duplicate["source"] == "rsna" and "csv line 8 of --csv" in duplicate["reason"]
    assert all(row["listing"] and row["line"] > 1 for row in rejected)


def output_texts(output_dir: str) -> dict[str, bytes]:
    """Every output file's bytes, shards decompressed."""
    texts = {}
    for path in glob.glob(f"{output_dir}/*"):
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as handle:
            texts[os.path.basename(path)] = handle.read()
    return texts


@pytest.mark.parametrize("mode", ["threads", pytest.param("processes", marks=pytest.mark.slow)])
def test_no_patient_id_or_path_below_the_roots_reaches_an_output_or_a_log(mode, request):
    output_dir, _, log = request.getfixturevalue(f"{mode}_run")
    texts = output_texts(output_dir)
    assert {"manifest.json", "rejected-00000-of-00001.jsonl"} <= set(texts)
    for name, data in texts.items():
        assert not [word for word in DISTINCTIVE if word.encode() in data], name
    assert "inputs listed 38" in log and "DATASET WARNING" in log, "the capture works"
    assert not [word for word in DISTINCTIVE if word in log]


@pytest.mark.slow
def test_threads_and_processes_give_identical_records(threads_run, processes_run):
    threads, processes = (output_texts(run[0]) for run in (threads_run, processes_run))
    shards = sorted(name for name in threads if name.endswith(contract.TFRECORD_SUFFIX))
    assert shards and shards == sorted(name for name in processes if name.endswith(contract.TFRECORD_SUFFIX))
    for name in shards:
        assert threads[name] == processes[name], name
    assert sorted(threads["rejected-00000-of-00001.jsonl"].splitlines()) == sorted(
        processes["rejected-00000-of-00001.jsonl"].splitlines())


def test_a_persistent_io_error_fails_the_job_naming_the_row_not_the_path(raw, tmp_path):
    """A directory listed as an image stands for any I/O error other than not-found."""
    os.makedirs(tmp_path / OWN_FOLDER / "Persephone-folder.png")
    listing = tmp_path / "labels.csv"
    listing.write_text(f"image_uri,label,patient_id\n{raw}/own/{OWN_FOLDER}/Persephone-0.png,normal,Persephone0\n"
                       f"{OWN_FOLDER}/Persephone-folder.png,normal,Persephone7\n")
    with pytest.raises(Exception) as raised:
        preprocess.run([f"--csv={listing}", f"--output_dir={tmp_path / 'out'}", f"--patient_key={PATIENT_KEY}",
                        f"--image_size={IMAGE_SIZE}"])
    message = str(raised.value)
    assert "IsADirectoryError" in message and "the image listed at line 3 of --csv (csv-" in message
    assert not [word for word in DISTINCTIVE if word in message]
    assert not glob.glob(f"{tmp_path}/out/{contract.MANIFEST_FILE}"), "a failed job writes no manifest"
