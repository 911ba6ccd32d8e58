"""DICOM node benchmark: studies per minute, and the latency from a study's last instance to its report stored.

Measured on this machine against a local Orthanc (started as a child process by
`python -m infra.orthanc.server`, StableAge 1 s), with the node's own code running in
this process (`serving.dicom_node.Node`, one model shared by as many workers as each
`--configurations` pair says). Each configuration first receives a few studies one
at a time (each sent once the previous one was answered: the latency without a queue), then
`--studies` single-image studies back to back (the throughput). The studies are synthetic
RSNA-style 8-bit JPEG Baseline CR DICOMs of `--study_side`² pixels, generated beforehand.

* `scp`: the benchmark sends each study by C-STORE to the node (one association per study,
  as a modality does); the node takes a study as complete after `--quiet_seconds` without
  a new instance and answers by C-STORE to Orthanc;
* `orthanc`: the benchmark uploads each study to Orthanc's REST API; the node follows
  Orthanc's change log (polled every 0.5 s) and answers by STOW-RS to Orthanc's DICOMweb
  plugin once Orthanc calls the study stable.

Throughput is studies / (the last report stored − the first study sent). A study's latency
runs from the moment its instance was stored (the C-STORE or upload returned) to the node's
audit line for it, written once Orthanc acknowledged the report and heat map. It includes
the quiet time (scp) or StableAge plus polling (orthanc), which dominate a lone study's.
One study is answered before timing starts, so TensorFlow's tracing is not counted.
"""

import argparse
import datetime
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import keras
import pydicom
import requests
import tensorflow as tf
from pynetdicom import AE

from benchmarks import machine
from cxr_core import contract
from serving import audit, dicom_node, export, gradcam, model_store, pacs, study_analysis
from synthetic import dicom_writer, phantom
from trainer import model as model_lib

KEY = "benchmark-patient-key-not-a-secret"
SENDER_AET = "BENCH_MODALITY"
ORTHANC_POLL_SECONDS = 0.5
TIMEOUT_SECONDS = 900.0
LONE_STUDIES = 5  # Sent one at a time, each after the previous one was answered: the latency without a queue.
LABELS = contract.CLASS_NAMES


def build_model(job_dir: str, image_size: int) -> None:
    """An untrained ResNet50 job dir (export/ and model.keras): the speed of a trained one, nothing downloaded."""
    keras.utils.set_random_seed(0)
    network = model_lib.build_model(image_size, weights=None)
    export.export_saved_model(network, os.path.join(job_dir, model_store.EXPORT_DIR), model_store.ModelContract(
        image_size, contract.CLASS_NAMES, contract.PREPROCESSING_VERSION, {"benchmark": True}))
    network.save(os.path.join(job_dir, gradcam.KERAS_MODEL_FILE))


def make_studies(count: int, side: int, seed: str) -> list[bytes]:
    """Single-image studies; `seed` gives every configuration its own UIDs."""
    return [dicom_writer.dicom_bytes(phantom.render_chest(index, LABELS[index % len(LABELS)], side),
                                     patient_id=f"BENCH-{seed}-{index:04d}", view="PA", sex="F", age=60,
                                     uid_seed=seed)
            for index in range(count)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_orthanc(work_dir: str) -> tuple[subprocess.Popen, dict]:
    """Orthanc through its launcher's command line (the benchmarks may not import infra); its URLs and port."""
    process = subprocess.Popen([sys.executable, "-m", "infra.orthanc.server", f"--storage_dir={work_dir}"],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line:
        raise SystemExit(f"Orthanc did not start (status {process.wait()}); see the message above")
    return process, json.loads(line)


class Sender:
    """Sends one study at a time as a modality or an uploader would; records when each was stored."""

    def __init__(self, mode: str, orthanc: dict, node: dicom_node.Node):
        self._mode, self._orthanc, self._node = mode, orthanc, node

    def send(self, data: bytes) -> float:
        """Sends the study; the wall-clock time it was stored."""
        if self._mode == dicom_node.RECEIVE_ORTHANC:
            requests.post(f"{self._orthanc['http_url']}/instances", data=data, timeout=60).raise_for_status()
            return time.time()
        dataset = pydicom.dcmread(io.BytesIO(data))
        sender = AE(ae_title=SENDER_AET)
        sender.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
        association = sender.associate("127.0.0.1", self._node.scp_port, ae_title=self._node.settings.ae_title)
        status = association.send_c_store(dataset)
        association.release()
        if status.Status != dicom_node.STATUS_SUCCESS:
            raise RuntimeError(f"the node answered C-STORE with status 0x{status.Status:04X}")
        return time.time()


def answered_at(audit_path: str, studies: dict[str, float]) -> dict[str, float]:
    """Wall-clock time of each answered study's audit line, by pseudonym."""
    times = {}
    for record in audit.read(audit_path):
        if record["event"] != "study" or record["study"] not in studies:
            continue
        if record["outcome"] == dicom_node.ANSWERED:
            times[record["study"]] = datetime.datetime.fromisoformat(record["logged_at"]).timestamp()
        elif record["outcome"] != dicom_node.ALREADY_ANSWERED:  # Orthanc's next StableStudy, after the report.
            raise RuntimeError(f"a benchmark study was not answered: {record['outcome']}")
    return times


def study_pseudonym(data: bytes) -> str:
    return audit.pseudonym(KEY, str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID))


def run_configuration(mode: str, concurrency: int, model: study_analysis.StudyModel, orthanc: dict, work_dir: str,
                      studies: list[bytes], lone: list[bytes], quiet_seconds: float) -> dict:
    """Runs one node configuration: `lone` studies one at a time (the first one untimed: TensorFlow traces its
    functions then), then `studies` back to back. Their throughput and latencies."""
    state_dir = os.path.join(work_dir, f"node-{mode}-{concurrency}")
    shutil.rmtree(state_dir, ignore_errors=True)
    os.makedirs(state_dir)
    destination = f"{orthanc['dicom_aet']}@127.0.0.1:{orthanc['dicom_port']}" if mode == dicom_node.RECEIVE_SCP \
        else orthanc["dicomweb_url"]
    settings = dicom_node.NodeSettings(
        state_dir=state_dir, receive=mode, port=free_port(), orthanc_url=orthanc["http_url"],
        orthanc_poll_seconds=ORTHANC_POLL_SECONDS, quiet_seconds=quiet_seconds, max_concurrent_studies=concurrency)
    node = dicom_node.Node(settings, model, pacs.destination_for(destination, settings.ae_title),
                           audit.AuditLog(settings.path(dicom_node.AUDIT_FILE)), KEY)
    node.start()
    sender = Sender(mode, orthanc, node)
    try:
        lone_latencies = []
        for data in lone:
            study = study_pseudonym(data)
            sent_at = sender.send(data)
            lone_latencies.append(wait_for_answers(node.audit.path, {study: sent_at})[study] - sent_at)
        sent = {}
        started = time.time()
        for data in studies:
            sent[study_pseudonym(data)] = sender.send(data)
        stored = wait_for_answers(node.audit.path, sent)
    finally:
        node.stop()
    latencies = sorted(stored[study] - sent[study] for study in sent)
    elapsed = max(stored.values()) - started
    records = [record for record in audit.read(node.audit.path)
               if record["event"] == "study" and record["study"] in sent and record["outcome"] == dicom_node.ANSWERED]
    return {
        "mode": mode, "concurrency": concurrency, "studies": len(studies), "elapsed_s": elapsed,
        "lone_latency_median_s": statistics.median(lone_latencies[1:]),
        "sending_s": max(sent.values()) - started,
        "studies_per_minute": 60.0 * len(studies) / elapsed,
        "latency_median_s": statistics.median(latencies),
        "latency_p90_s": latencies[int(0.9 * (len(latencies) - 1))],
        "latency_max_s": latencies[-1],
        "analysis_median_s": statistics.median(record["timings"]["analysis_s"] for record in records),
        "delivery_median_s": statistics.median(record["timings"]["delivery_s"] for record in records),
    }


def wait_for_answers(audit_path: str, studies: dict[str, float]) -> dict[str, float]:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        stored = answered_at(audit_path, studies)
        if len(stored) == len(studies):
            return stored
        time.sleep(0.1)
    raise RuntimeError(f"{len(studies) - len(answered_at(audit_path, studies))} studies unanswered after "
                       f"{TIMEOUT_SECONDS:g} s")


def report(results: list[dict], args: argparse.Namespace, load: str) -> str:
    lines = [
        "## DICOM node (cxr-node against Orthanc)",
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine.cpu_name()}, {os.cpu_count()} logical "
        f"CPU(s), TensorFlow {tf.__version__}, by `python -m benchmarks.dicom_node`: {args.studies} single-image "
        f"studies per configuration, synthetic 8-bit JPEG Baseline CR DICOMs of {args.study_side}² pixels, an "
        f"untrained ResNet50 at {args.image_size}² (prediction and Grad-CAM cost what a trained one costs), Orthanc "
        f"on the same machine storing every report and heat map. Load average before the run: {load} (other "
        "processes may share the machine).",
        "",
        "| receive | concurrent studies | studies/min | latency of a lone study (median) | latency in the burst "
        "median / p90 / max | analysis per study (median) | sending per study (median) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    receive = {dicom_node.RECEIVE_SCP: f"C-STORE to the node, quiet time {args.quiet_seconds:g} s; results by "
                                       "C-STORE",
               dicom_node.RECEIVE_ORTHANC: "upload to Orthanc, node follows StableStudy (StableAge 1 s); results "
                                           "by STOW-RS"}
    for result in results:
        lines.append(
            f"| {receive[result['mode']]} | {result['concurrency']} | **{result['studies_per_minute']:.0f}** | "
            f"{result['lone_latency_median_s']:.1f} s | {result['latency_median_s']:.1f} / {result['latency_p90_s']:.1f} / {result['latency_max_s']:.1f} s | "
            f"{result['analysis_median_s']:.2f} s | {result['delivery_median_s']:.2f} s |")
    lines += [
        "",
        f"Latency is from a study's instance stored (at the node, or in Orthanc) to the node's audit line for it, "
        f"written once Orthanc acknowledged its report and heat map. A lone study is sent once the previous one "
        f"was answered ({LONE_STUDIES - 1} timed, after one untimed warm-up); the burst sends "
        f"{args.studies} studies back to back, so later ones also wait for the workers. Analysis is selection, "
        "decoding, prediction, Grad-CAM (one sub-model, built once) and building the two DICOM objects.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default=os.path.join("bench_output", "dicom_node"))
    parser.add_argument("--model_dir", help="A trainer job dir (export/ and model.keras); default: an untrained "
                                            "ResNet50 built here at --image_size.")
    parser.add_argument("--image_size", type=int, default=contract.DEFAULT_IMAGE_SIZE)
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--study_side", type=int, default=1024, help="Side of the synthetic DICOMs (RSNA's is 1024).")
    parser.add_argument("--quiet_seconds", type=float, default=1.0)
    parser.add_argument("--configurations", default="scp:1,scp:2,orthanc:2",
                        help="Comma-separated receive:concurrent_studies pairs.")
    args = parser.parse_args(argv)
    load = " / ".join(f"{value:.1f}" for value in os.getloadavg())
    os.makedirs(args.work_dir, exist_ok=True)
    model_dir = args.model_dir
    if model_dir is None:
        model_dir = os.path.join(args.work_dir, f"model-{args.image_size}")
        if not tf.io.gfile.exists(os.path.join(model_dir, gradcam.KERAS_MODEL_FILE)):
            build_model(model_dir, args.image_size)
    model = study_analysis.StudyModel(model_dir)
    args.image_size = model.image_size
    orthanc_dir = tempfile.mkdtemp(prefix="orthanc-", dir=args.work_dir)
    process, orthanc = start_orthanc(orthanc_dir)
    results = []
    try:
        for configuration in args.configurations.split(","):
            mode, concurrency = configuration.split(":")
            studies = make_studies(args.studies + LONE_STUDIES + 1, args.study_side,
                                   seed=f"{configuration}-{time.time_ns()}")
            results.append(run_configuration(mode, int(concurrency), model, orthanc, args.work_dir,
                                             studies[LONE_STUDIES + 1:], studies[:LONE_STUDIES + 1],
                                             args.quiet_seconds))
            print(json.dumps(results[-1]), flush=True)
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(orthanc_dir, ignore_errors=True)
    return report(results, args, load)


if __name__ == "__main__":
    print(main())
