"""cxr-node against a real PACS: Orthanc, started here as a child process on 127.0.0.1.

One untrained ResNet50 at 64² (the smallest size whose Grad-CAM block is more than one
position, as in tests/test_serving.py) serves every test, with a decision rule so the
report's operating point is a real one. The tests check plumbing, references and
agreement with the exported model, not accuracy. Studies are the synthetic RSNA-style
DICOMs of `synthetic.dicom_writer`, whose fake names, ids, accession numbers and dates
let the tests check that none reaches the audit log.

A missing Orthanc fails the tests that need it, with the command that installs it; they
never skip.
"""

import io
import json
import os
import signal
import subprocess
import sys
import time

import highdicom as hd
import keras
import numpy as np
import pydicom
import pytest
import requests
import tensorflow as tf
from pynetdicom import AE

from cxr_core import contract, imaging
from cxr_core.decision_rule import DecisionRule
from infra.orthanc import server as orthanc_server
from serving import audit, delivery, dicom_node, dicom_results, export, gradcam, model_store, pacs, study_analysis
from serving import study_inbox
from synthetic import dicom_writer, phantom
from trainer import model as model_lib

IMAGE_SIZE = 64
KEY = "dicom-node-test-patient-key-0123456789"
RULE = DecisionRule(spec="argmax", train_prior=(0.4, 0.3, 0.3), target_prior=(0.6, 0.3, 0.1))
ANSWER_TIMEOUT_SECONDS = 90.0
IDENTIFYING_KEYWORDS = ("PatientName", "PatientID", "AccessionNumber", "StudyDate", "StudyTime", "PatientBirthDate",
                        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "InstitutionName",
                        "ReferringPhysicianName", "StudyID")
SENDER_AET = "TEST_SENDER"


# Fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def job_dir(tmp_path_factory) -> str:
    """A trainer job dir as the trainer leaves it: export/ (with a decision rule) and model.keras."""
    job_dir = str(tmp_path_factory.mktemp("job"))
    keras.utils.set_random_seed(5)
    model = model_lib.build_model(IMAGE_SIZE, weights=None)
    export.export_saved_model(model, os.path.join(job_dir, "export"), model_store.ModelContract(
        IMAGE_SIZE, contract.CLASS_NAMES, contract.PREPROCESSING_VERSION, {"batch_size": 4}, RULE))
    model.save(os.path.join(job_dir, gradcam.KERAS_MODEL_FILE))
    return job_dir


@pytest.fixture(scope="module")
def study_model(job_dir) -> study_analysis.StudyModel:
    return study_analysis.StudyModel(job_dir)


@pytest.fixture(scope="module")
def predict_png(job_dir):
    return model_store.load(job_dir).signatures[contract.SERVING_PNG_SIGNATURE]


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("key") / "patient_key"
    path.write_text(KEY + "\n")
    return str(path)


@pytest.fixture(scope="module")
def pacs_server(tmp_path_factory):
    """Orthanc with the DICOMweb plugin, StableAge 1 s, on free ports; stopped after the module."""
    try:
        orthanc_server.orthanc_binary()
        orthanc_server.dicomweb_plugin()
    except orthanc_server.OrthancMissing as error:
        pytest.fail(f"these tests need a real PACS. {error}", pytrace=False)
    with orthanc_server.running(str(tmp_path_factory.mktemp("orthanc")), stable_age=1) as server:
        yield server


@pytest.fixture
def start_node(study_model, pacs_server, tmp_path):
    """Starts in-process nodes (one model for all) and stops them after the test."""
    nodes = []

    def start(destination: str | None = None, **changes) -> dicom_node.Node:
        fields = {"state_dir": str(tmp_path / f"node-{len(nodes)}"), "port": orthanc_server.free_port(),
                  "quiet_seconds": 0.5, "retry": delivery.RetryPolicy(attempts=3, first_delay=0.05, max_delay=0.2),
                  **changes}
        os.makedirs(fields["state_dir"], exist_ok=True)
        settings = dicom_node.NodeSettings(**fields)
        node = dicom_node.Node(settings, study_model,
                               pacs.destination_for(destination or pacs_server.dicom_peer, settings.ae_title),
                               audit.AuditLog(settings.path(dicom_node.AUDIT_FILE)), KEY)
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


# Synthetic studies and how to send them -----------------------------------------------------------

def radiograph(patient: str, label: str = "pneumonia", view: str = "PA", seed: str = "", **changes) -> bytes:
    """A synthetic CR DICOM of `patient`'s study; `changes` set header attributes (ViewPosition, Modality...)."""
    index = sum(map(ord, patient + seed))
    pixels = phantom.render_chest(index, label, 144)[:, 8:136]  # Not square: framing is part of the path.
    data = dicom_writer.dicom_bytes(np.ascontiguousarray(pixels), patient_id=patient, view=view, sex="F", age=61,
                                    uid_seed=seed)
    return with_changes(data, **changes) if changes else data


def with_changes(data: bytes, **attributes) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def second_instance(first: bytes, seed: str, **changes) -> bytes:
    """Another image of the same study (same patient and StudyInstanceUID, its own series and instance)."""
    header = pydicom.dcmread(io.BytesIO(first), stop_before_pixels=True)
    other = radiograph(str(header.PatientID), seed=seed)
    copied = {keyword: header.get(keyword) for keyword in ("StudyInstanceUID", "PatientName", "PatientBirthDate",
                                                           "StudyDate", "StudyTime", "AccessionNumber", "StudyID")}
    return with_changes(other, **copied, **changes)


def header(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def c_store(port: int, files: list[bytes], ae_title: str = "CXR_NODE") -> list[int]:
    """Sends files straight to the node, as a modality would; the statuses it answered."""
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    sender = AE(ae_title=SENDER_AET)
    for sop_class in {str(dataset.SOPClassUID) for dataset in datasets}:
        sender.add_requested_context(sop_class, [str(dataset.file_meta.TransferSyntaxUID) for dataset in datasets])
    association = sender.associate("127.0.0.1", port, ae_title=ae_title)
    assert association.is_established
    statuses = [association.send_c_store(dataset).Status for dataset in datasets]
    association.release()
    return statuses


def study_records(node_or_path, study_uid: str) -> list[dict]:
    path = node_or_path if isinstance(node_or_path, str) else node_or_path.audit.path
    study = audit.pseudonym(KEY, study_uid)
    return [record for record in audit.read(path) if record["event"] == "study" and record["study"] == study]


def wait_for(node_or_path, study_uid: str, outcome: str | None = None) -> dict:
    """The study's audit record (with `outcome`, when given), once the node has written it."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        records = [record for record in study_records(node_or_path, study_uid)
                   if outcome is None or record["outcome"] == outcome]
        if records:
            return records[-1]
        time.sleep(0.2)
    raise AssertionError(f"no audit record {outcome or ''} for the study within {ANSWER_TIMEOUT_SECONDS:g} s")


def orthanc_study_id(server: orthanc_server.OrthancServer, study_uid: str) -> str:
    [study_id] = [match["ID"] for match in orthanc_lookup(server, study_uid) if match["Type"] == "Study"]
    return study_id


def orthanc_lookup(server: orthanc_server.OrthancServer, uid: str) -> list[dict]:
    """Orthanc's resources with this DICOM UID (`POST /tools/lookup`)."""
    response = requests.post(f"{server.http_url}/tools/lookup", data=uid, timeout=30)
    response.raise_for_status()
    return response.json()


def node_objects(server: orthanc_server.OrthancServer, study_uid: str) -> dict[str, list[pydicom.Dataset]]:
    """The study's objects in Orthanc by modality, read back from their files."""
    objects: dict[str, list[pydicom.Dataset]] = {}
    for series in server.get(f"/studies/{orthanc_study_id(server, study_uid)}/series"):
        for instance_id in series["Instances"]:
            dataset = pydicom.dcmread(io.BytesIO(server.get(f"/instances/{instance_id}/file")))
            objects.setdefault(series["MainDicomTags"]["Modality"], []).append(dataset)
    return objects


def expected_probabilities(predict_png, data: bytes) -> np.ndarray:
    """What the exported model says of the file, through the training preprocessing."""
    pixels = imaging.preprocess_image(data, IMAGE_SIZE).pixels
    outputs = predict_png(**{contract.PNG_INPUT: tf.constant([imaging.encode_png(pixels)])})
    return outputs[contract.PROBABILITIES_OUTPUT].numpy()[0]


# What the node wrote --------------------------------------------------------------------------

def check_answer(server: orthanc_server.OrthancServer, source: bytes, other_sources: list[bytes], predict_png,
                 identity: dicom_results.ModelIdentity) -> None:
    """The study holds exactly one SR and one heat map of the node, right in every reference, UID and value."""
    source_header = header(source)
    objects = node_objects(server, source_header.StudyInstanceUID)
    [report], [heat_map] = objects["SR"], objects["OT"]
    source_uids = {str(header(data).SOPInstanceUID) for data in [source, *other_sources]} | {
        str(header(data).SeriesInstanceUID) for data in [source, *other_sources]}
    for dataset in (report, heat_map):
        assert dataset.StudyInstanceUID == source_header.StudyInstanceUID
        assert dataset.PatientID == source_header.PatientID and dataset.PatientName == source_header.PatientName
        assert dataset.Manufacturer == dicom_results.MANUFACTURER
        assert {str(dataset.SOPInstanceUID), str(dataset.SeriesInstanceUID)}.isdisjoint(source_uids)
    assert report.SeriesInstanceUID != heat_map.SeriesInstanceUID

    assert report.SOPClassUID == pydicom.uid.EnhancedSRStorage
    assert report.VerificationFlag == "UNVERIFIED" and report.CompletionFlag == "COMPLETE"
    assert "research use only" in report.SeriesDescription.lower()
    assert dicom_results.referenced_instances(report) == {str(source_header.SOPInstanceUID)}
    sr = hd.sr.EnhancedSR.from_dataset(report)
    [group] = sr.content.get_image_measurement_groups()
    assert [image.referenced_sop_instance_uid for image in group.source_images] == [source_header.SOPInstanceUID]
    probabilities = {measurement.name.meaning: measurement.value for measurement in group.get_measurements()}
    expected = expected_probabilities(predict_png, source)
    assert list(probabilities) == [f"Probability of {name}" for name in contract.CLASS_NAMES]
    np.testing.assert_allclose(list(probabilities.values()), expected, rtol=0, atol=1e-6)
    [decision] = group.get_qualitative_evaluations()
    assert decision.value == dicom_results.CLASS_CODES[contract.CLASS_NAMES[int(RULE.apply(expected[None])[0])]]
    texts = {item.name.meaning: item.value for item in hd.sr.utils.find_content_items(
        group[0], value_type=hd.sr.ValueTypeValues.TEXT, recursive=True)}
    assert texts["Algorithm Name"] == identity.name and texts["Algorithm Version"] == identity.version
    assert RULE.describe() in identity.operating_point

    assert heat_map.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert heat_map.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSIS" in heat_map.SeriesDescription
    pixels = heat_map.pixel_array
    assert pixels.shape == (512, 512, 3)
    band = max(12, round(512 * dicom_results.TEXT_HEIGHT_FRACTION))
    for rows in (pixels[:band], pixels[-band:]):  # Black bands with white text.
        assert (rows == 255).all(axis=-1).sum() > 100 and (rows == 0).all(axis=-1).mean() > 0.5
    assert pixels[band:-band].std() > 0


def assert_no_identifier(audit_path: str, sources: list[bytes]) -> None:
    """No name, id, accession number, date or UID of any source study, in any format, in the audit log."""
    text = open(audit_path, encoding="utf-8").read()
    assert text.strip()
    for data in sources:
        source = header(data)
        for keyword in IDENTIFYING_KEYWORDS:
            value = str(source.get(keyword, "") or "")
            assert value and value not in text, f"{keyword} in the audit log"
        for date in (source.StudyDate, source.PatientBirthDate):
            assert f"{date[:4]}-{date[4:6]}-{date[6:]}" not in text
        for part in str(source.PatientName).split("^"):
            assert part not in text.upper()


# Round trips --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_studies_routed_by_the_pacs_come_back_with_a_report_and_a_heat_map(start_node, pacs_server, predict_png,
                                                                           study_model):
    node = start_node()
    single = radiograph("PID-ROUND-1", label="covid19")
    frontal = radiograph("PID-ROUND-2", label="normal")
    lateral = second_instance(frontal, seed="lateral", ViewPosition="LL")
    studies = [pacs_server.upload(data)["ParentStudy"] for data in (single, frontal, lateral)]
    pacs_server.add_modality("cxr-node", node.settings.ae_title, "127.0.0.1", node.scp_port)
    pacs_server.send_to_modality("cxr-node", sorted(set(studies)))

    for source, others in ((single, []), (frontal, [lateral])):
        record = wait_for(node, header(source).StudyInstanceUID)
        assert record["outcome"] == dicom_node.ANSWERED and record["via"] == "c-store from ORTHANC"
        assert [image["view"] for image in record["selected"]] == ["PA"]
        assert [object_["object"] for object_ in record["sent"]] == ["report", "heat_map"]
        assert record["timings"]["last_received_to_stored_s"] > 0
        check_answer(pacs_server, source, others, predict_png, study_model.identity)
    [rejection] = wait_for(node, header(frontal).StudyInstanceUID)["rejected"]
    assert (rejection["stage"], rejection["kind"]) == ("select", "view_not_allowed")
    assert rejection["instance"] == audit.pseudonym(KEY, str(header(lateral).SOPInstanceUID))
    node.stop()
    assert node.counters.snapshot()["studies/answered"] == 2
    assert_no_identifier(node.audit.path, [single, frontal, lateral])


@pytest.mark.slow
def test_a_node_following_orthanc_answers_stable_studies_once_by_stow(start_node, pacs_server, predict_png,
                                                                      study_model):
    node = start_node(destination=pacs_server.dicomweb_url, receive=dicom_node.RECEIVE_ORTHANC,
                      orthanc_url=pacs_server.http_url, orthanc_poll_seconds=0.3)
    source = radiograph("PID-FOLLOW-1", label="pneumonia")
    ct = radiograph("PID-FOLLOW-2", Modality="CT")
    for data in (source, ct):
        pacs_server.upload(data)

    record = wait_for(node, header(source).StudyInstanceUID, dicom_node.ANSWERED)
    assert record["via"] == "orthanc" and record["destination"].startswith("STOW-RS to ")
    check_answer(pacs_server, source, [], predict_png, study_model.identity)
    ct_record = wait_for(node, header(ct).StudyInstanceUID)
    assert ct_record["outcome"] == dicom_node.NO_FRONTAL_RADIOGRAPH
    assert [(rejection["stage"], rejection["kind"]) for rejection in ct_record["rejected"]] == [("select", "not_xray")]
    # The node's own report and heat map make the study stable again: seen, and not answered twice.
    again = wait_for(node, header(source).StudyInstanceUID, dicom_node.ALREADY_ANSWERED)
    assert again["received"] == {"instances": 1, "own_objects": 1} and "sent" not in again
    check_answer(pacs_server, source, [], predict_png, study_model.identity)
    node.stop()
    assert_no_identifier(node.audit.path, [source, ct])


# Bad input ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_bad_studies_get_a_reason_and_a_counter_and_do_not_stop_the_node(start_node, pacs_server, predict_png,
                                                                         study_model):
    node = start_node()
    ct = radiograph("PID-BAD-CT", Modality="CT")
    lateral_only = radiograph("PID-BAD-LAT", ViewPosition="LL")
    good = radiograph("PID-BAD-GOOD")
    truncated = radiograph("PID-BAD-TRUNC")
    dataset = pydicom.dcmread(io.BytesIO(truncated))
    dataset.PixelData = dataset.PixelData[:len(dataset.PixelData) // 2 + 1]  # Cut inside its JPEG fragment.
    oversized = with_changes(radiograph("PID-BAD-BIG"), Rows=9000, Columns=9000)  # 81 megapixels claimed.
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    truncated = buffer.getvalue()
    statuses = c_store(node.scp_port, [ct, lateral_only, truncated, oversized, good])
    assert statuses == [dicom_node.STATUS_SUCCESS] * 5

    expected = {ct: ("select", "not_xray"), lateral_only: ("select", "view_not_allowed"),
                truncated: ("decode", "truncated_file"), oversized: ("decode", "image_too_large")}
    for data, (stage, kind) in expected.items():
        record = wait_for(node, header(data).StudyInstanceUID)
        assert record["outcome"] == dicom_node.NO_FRONTAL_RADIOGRAPH
        [rejection] = record["rejected"]
        assert (rejection["stage"], rejection["kind"]) == (stage, kind) and rejection["reason"]
        assert orthanc_lookup(pacs_server, str(header(data).StudyInstanceUID)) == []  # Nothing written back.
    assert wait_for(node, header(good).StudyInstanceUID)["outcome"] == dicom_node.ANSWERED
    counters = node.counters.snapshot()
    assert counters["studies/no_frontal_radiograph"] == 4 and counters["studies/answered"] == 1
    for stage, kind in expected.values():
        assert counters[f"instances/rejected/{stage}/{kind}"] == 1
    node.stop()
    assert_no_identifier(node.audit.path, [ct, lateral_only, truncated, oversized, good])


@pytest.mark.slow
def test_a_node_only_accepts_the_allowed_calling_ae_titles(start_node):
    node = start_node(allowed_calling_aets=("PACS",))
    refused = AE(ae_title=SENDER_AET)
    refused.add_requested_context(pydicom.uid.SecondaryCaptureImageStorage)
    association = refused.associate("127.0.0.1", node.scp_port, ae_title=node.settings.ae_title)
    assert association.is_rejected


@pytest.mark.slow
def test_results_the_destination_cannot_take_wait_in_a_dead_letter_folder_until_resent(start_node, pacs_server,
                                                                                       predict_png, study_model):
    closed = orthanc_server.free_port()
    node = start_node(destination=f"NOWHERE@127.0.0.1:{closed}")
    source = radiograph("PID-DEAD-1")
    c_store(node.scp_port, [source])
    record = wait_for(node, header(source).StudyInstanceUID)
    assert record["outcome"] == dicom_node.DEAD_LETTERED and record["attempts"] == 3 and "refused" in record["error"]
    folder = os.path.join(node.settings.path(dicom_node.DEAD_LETTER_DIR), record["dead_letter"])
    assert sorted(os.listdir(folder)) == ["000.dcm", "001.dcm", delivery.DELIVERY_FILE]
    with open(os.path.join(folder, delivery.DELIVERY_FILE)) as handle:
        assert json.load(handle)["attempts"] == 3
    assert node.counters.snapshot()["deliveries/attempts"] == 3
    node.stop()

    with pytest.raises(SystemExit) as exit_status:
        dicom_node.main(["--resend_dead_letters", f"--state_dir={node.settings.state_dir}",
                         f"--destination={pacs_server.dicom_peer}"])
    assert exit_status.value.code == 0
    assert not os.path.exists(folder)
    check_answer(pacs_server, source, [], predict_png, study_model.identity)
    assert audit.read(node.audit.path)[-1]["sent"] == [record["dead_letter"]]


def test_a_study_that_keeps_growing_is_answered_at_its_maximum_wait(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(study_inbox.time, "monotonic", lambda: clock[0])
    inbox = study_inbox.StudyInbox(str(tmp_path), quiet_seconds=2.0, max_wait_seconds=5.0, max_instances=50)
    first = radiograph("PID-GROW")
    for number in range(5):  # One instance a second: never quiet for 2 s.
        data = first if number == 0 else second_instance(first, seed=f"grow-{number}")
        inbox.add(str(header(data).StudyInstanceUID), str(header(data).SOPInstanceUID), data, SENDER_AET)
        assert inbox.due() == []
        clock[0] += 1.0
    [batch] = inbox.due()
    assert batch.handed_out_because == study_inbox.MAX_WAIT and len(batch.files()) == 5
    assert batch.study_uid == header(first).StudyInstanceUID
    late = second_instance(first, seed="late")
    inbox.add(batch.study_uid, str(header(late).SOPInstanceUID), late, SENDER_AET)
    clock[0] += 2.0
    [next_batch] = inbox.due()  # A new batch of the same study.
    assert next_batch.handed_out_because == study_inbox.QUIET and len(next_batch.files()) == 1
    assert next_batch.folder != batch.folder


def test_a_study_reaching_the_instance_limit_is_answered_at_once(tmp_path):
    inbox = study_inbox.StudyInbox(str(tmp_path), quiet_seconds=60.0, max_wait_seconds=600.0, max_instances=2)
    first = radiograph("PID-MANY")
    for data in (first, second_instance(first, seed="many")):
        inbox.add(str(header(data).StudyInstanceUID), str(header(data).SOPInstanceUID), data, SENDER_AET)
    [batch] = inbox.due()
    assert batch.handed_out_because == study_inbox.MAX_INSTANCES and len(batch.files()) == 2


# The command ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_finishes_the_study_in_hand_and_a_restart_answers_the_rest(job_dir, key_file, pacs_server, tmp_path,
                                                                          start_node):
    state_dir = tmp_path / "state"
    port = orthanc_server.free_port()
    command = [sys.executable, "-m", "serving.dicom_node", f"--model_dir={job_dir}", f"--patient_key_file={key_file}",
               f"--state_dir={state_dir}", f"--destination={pacs_server.dicom_peer}", f"--port={port}",
               "--quiet_seconds=2"]
    process = subprocess.Popen(command, cwd=os.path.dirname(os.path.dirname(__file__)), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        in_hand, waiting = radiograph("PID-TERM-1"), radiograph("PID-TERM-2")
        deadline = time.monotonic() + ANSWER_TIMEOUT_SECONDS
        while not (state_dir / "audit.jsonl").exists() or "node_started" not in (state_dir / "audit.jsonl").read_text():
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.2)
        time.sleep(0.5)  # node_started is written just before the SCP listens.
        c_store(port, [in_hand])
        work = state_dir / dicom_node.SPOOL_DIR / study_inbox.WORK
        while not (work.exists() and os.listdir(work)):  # Handed out after 2 quiet seconds.
            assert time.monotonic() < deadline
            time.sleep(0.05)
        c_store(port, [waiting])
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=ANSWER_TIMEOUT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    records = audit.read(str(state_dir / "audit.jsonl"))
    assert [record["event"] for record in records] == ["node_started", "study", "node_stopped"]
    assert records[1]["outcome"] == dicom_node.ANSWERED
    assert records[1]["study"] == audit.pseudonym(KEY, str(header(in_hand).StudyInstanceUID))
    assert records[2]["studies_still_receiving"] == 1

    restarted = start_node(state_dir=str(state_dir), port=port)
    assert wait_for(restarted, header(waiting).StudyInstanceUID)["outcome"] == dicom_node.ANSWERED
    restarted.stop()
    assert_no_identifier(restarted.audit.path, [in_hand, waiting])


def test_a_model_that_cannot_serve_stops_the_start_with_one_line(key_file, tmp_path):
    state_dir = tmp_path / "state"
    with pytest.raises(SystemExit) as exit_status:
        dicom_node.main([f"--model_dir={tmp_path}", f"--patient_key_file={key_file}", f"--state_dir={state_dir}",
                         "--destination=PACS@127.0.0.1:104"])
    assert str(exit_status.value).startswith("cxr-node: ") and "holds no SavedModel" in str(exit_status.value)
    [record] = audit.read(str(state_dir / dicom_node.AUDIT_FILE))
    assert record["event"] == "node_not_started"


@pytest.mark.parametrize("flags, message", [
    (["--receive=orthanc"], "--receive orthanc needs --orthanc_url"),
    (["--destination=PACS@127.0.0.1"], "AET@HOST:PORT"),
    (["--quiet_seconds=0"], "--quiet_seconds must be positive"),
    (["--allowed_views= , "], "--allowed_views must name at least one view"),
])
def test_bad_flags_fail_before_anything_starts(flags, message, key_file, tmp_path, capsys):
    base = [f"--model_dir={tmp_path}", f"--patient_key_file={key_file}", f"--state_dir={tmp_path}/state",
            "--destination=PACS@127.0.0.1:104"]
    with pytest.raises(SystemExit) as exit_status:
        dicom_node.main(base + flags)
    assert exit_status.value.code == 2 and message in capsys.readouterr().err


def test_a_short_patient_key_is_refused(tmp_path):
    path = tmp_path / "key"
    path.write_text("short\n")
    with pytest.raises(audit.AuditKeyError, match="at least 16"):
        audit.load_key(str(path))


def test_destinations_are_parsed_from_one_flag():
    assert str(pacs.destination_for("PACS@10.0.0.5:104", "CXR_NODE")) == "C-STORE to PACS@10.0.0.5:104"
    assert str(pacs.destination_for("http://pacs:8042/dicom-web/", "CXR_NODE")) == "STOW-RS to http://pacs:8042/dicom-web"
    for bad in ("PACS@host", "A_TITLE_LONGER_THAN_16@host:104", "PACS@host:99999"):
        with pytest.raises(ValueError, match="AET@HOST:PORT"):
            pacs.destination_for(bad, "CXR_NODE")
