"""The image-folder source through the preprocess job: its flags, its patients and its accounting."""

import glob
import os

import pytest
import tensorflow as tf

from beam_pipelines import preprocess
from cxr_core import contract, imaging, pseudonyms
from synthetic import phantom

PATIENT_KEY = "image-folder-test-key-0123456789"
FLAGS = ["--image_size=32", "--augment=normal=1,pneumonia=1,covid19=1", "--min_shards=1",
         f"--patient_key={PATIENT_KEY}"]
# Kermany et al.'s layout: NORMAL/ and PNEUMONIA/, the patient in the pneumonia file names.
KERMANY_FILES = {"NORMAL/IM-0115-0001.png": "normal", "PNEUMONIA/person1_bacteria_1.png": "pneumonia",
                 "PNEUMONIA/person1_virus_6.png": "pneumonia", "PNEUMONIA/person22_bacteria_77.png": "pneumonia"}


@pytest.fixture
def kermany(tmp_path) -> str:
    root = tmp_path / "chest_xray"
    for seed, (name, label) in enumerate(sorted(KERMANY_FILES.items())):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(imaging.encode_png(imaging.scale_to_uint8(phantom.render_chest(seed, label, 64))))
    return str(root)


def test_patients_come_from_the_file_names_and_every_file_is_accounted_for(kermany, tmp_path):
    output_dir = str(tmp_path / "out")
    manifest = preprocess.run([f"--image_folder={kermany}", f"--output_dir={output_dir}",
                               "--patient_id_regex=person(\\d+)_", "--image_folder_source=kermany", *FLAGS])
    assert manifest["inputs"] == {"listed": 4, "used": 3, "rejected": 1}
    assert manifest["rejected"] == {"label/missing_patient_id": 1}, "IM-0115-0001 names no person"
    assert manifest["originals_by_source"] == {"kermany": {"normal": 0, "pneumonia": 3, "covid19": 0}}
    assert not [warning for warning in manifest["warnings"] if "split by image" in warning]
    files = sorted(glob.glob(os.path.join(output_dir, "*" + contract.TFRECORD_SUFFIX)))
    patients = [tf.train.Example.FromString(raw.numpy()).features.feature[contract.PATIENT_ID].bytes_list.value[0]
                for raw in tf.data.TFRecordDataset(files, compression_type=contract.TFRECORD_COMPRESSION)]
    expected = {pseudonyms.pseudonymous_patient_id(PATIENT_KEY, "kermany", person).encode() for person in ("1", "22")}
    assert sorted(patients) == sorted([*expected, pseudonyms.pseudonymous_patient_id(
        PATIENT_KEY, "kermany", "1").encode()]), "person1's two images are one patient"


@pytest.mark.parametrize("flags, message", [
    (["--patient_id_regex=person\\d+_"], "--patient_id_regex must have exactly one group"),
    (["--patient_id_regex=person(\\d+"], "--patient_id_regex is not a regular expression"),
    (["--image_folder_source=Site A"], "--image_folder_source: a source name must be lowercase letters, digits"),
    (["--folder_classes=Lung_Opacity=flu"], "--folder_classes must be FOLDER=CLASS pairs"),
])
def test_image_folder_flags_are_checked_before_launch(kermany, tmp_path, capsys, flags, message):
    output_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        preprocess.run([f"--image_folder={kermany}", f"--output_dir={output_dir}", *flags, *FLAGS])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not output_dir.exists()


def test_a_folder_without_class_folders_stops_the_job_before_launch(tmp_path, capsys):
    with pytest.raises(SystemExit):
        preprocess.run([f"--image_folder={tmp_path / 'nowhere'}", f"--output_dir={tmp_path / 'out'}", *FLAGS])
    assert "input problem: " in capsys.readouterr().err
