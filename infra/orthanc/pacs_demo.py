"""`make pacs-demo`: the demo's synthetic studies go into a local Orthanc and come back with a report and a heat map.

    python -m infra.orthanc.pacs_demo [--demo_dir demo_output] [--studies 8] [--receive scp|orthanc]

Needs `make demo` first (its model in DEMO_DIR/model, its DICOMs in DEMO_DIR/raw/rsna)
and Orthanc (`bash infra/orthanc/install.sh`). It starts Orthanc on free ports of
127.0.0.1 (storage in DEMO_DIR/pacs/orthanc), starts `cxr-node` with the demo model
(`python -m serving.dicom_node`, its state and log in DEMO_DIR/pacs/node), uploads the
first `--studies` RSNA DICOMs to Orthanc, and:

* `--receive scp` (default, what a hospital PACS does with a routing rule): asks Orthanc to
  send the studies to the node by C-STORE; the node answers by C-STORE to Orthanc;
* `--receive orthanc`: the node follows Orthanc's change log and answers each stable
  study by STOW-RS to Orthanc's DICOMweb plugin.

It then prints where to open each study in Orthanc Explorer, and keeps everything running
until Ctrl-C, when it stops the node (which finishes what it holds) and Orthanc. The node
and Orthanc run in their own sessions, so Ctrl-C reaches this script only, which stops
them in that order.
"""

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

from infra.orthanc import server as orthanc_server

NODE_AET = "CXR_NODE"
MODALITY_NAME = "cxr-node"
ANSWER_TIMEOUT_SECONDS = 300.0
NODE_START_TIMEOUT_SECONDS = 120.0


def demo_files(demo_dir: str, count: int) -> list[str]:
    files = sorted(glob.glob(os.path.join(demo_dir, "raw", "rsna", "stage_2_train_images", "*.dcm")))[:count]
    if not files:
        raise SystemExit(f"no demo DICOMs under {demo_dir}/raw/rsna/: run `make demo` first")
    return files


def patient_key_file(demo_dir: str, pacs_dir: str) -> str:
    """The demo's patient key (`make demo` writes one), or a fresh one for this demo."""
    path = os.path.join(demo_dir, "patient_key")
    if os.path.exists(path):
        return path
    path = os.path.join(pacs_dir, "patient_key")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(os.urandom(32).hex() + "\n")
    return path


def start_node(args: argparse.Namespace, pacs: orthanc_server.OrthancServer, node_dir: str, key_file: str,
               port: int) -> subprocess.Popen:
    """cxr-node in its own session, its log in node_dir/node.log; returns once it is ready."""
    command = [sys.executable, "-m", "serving.dicom_node", f"--model_dir={args.demo_dir}/model",
               f"--patient_key_file={key_file}", f"--state_dir={node_dir}", f"--receive={args.receive}",
               f"--ae_title={NODE_AET}", f"--port={port}", "--quiet_seconds=2"]
    if args.receive == "scp":
        command.append(f"--destination={pacs.dicom_peer}")
    else:
        command += [f"--destination={pacs.dicomweb_url}", f"--orthanc_url={pacs.http_url}",
                    "--orthanc_start=beginning"]
    log_path = os.path.join(node_dir, "node.log")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.monotonic() + NODE_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"cxr-node stopped (status {process.returncode}); see {log_path}")
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            if "ready;" in handle.read():
                return process
        time.sleep(0.5)
    process.terminate()
    raise SystemExit(f"cxr-node did not start within {NODE_START_TIMEOUT_SECONDS:g} s; see {log_path}")


def answered(pacs: orthanc_server.OrthancServer, study_id: str) -> bool:
    """True once the study holds a report (an SR series) and a heat map (an OT series)."""
    modalities = {series["MainDicomTags"].get("Modality") for series in pacs.get(f"/studies/{study_id}/series")}
    return {"SR", "OT"} <= modalities


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.orthanc.pacs_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--demo_dir", default="demo_output")
    parser.add_argument("--studies", type=int, default=8, help="How many of the demo's RSNA DICOMs to send.")
    parser.add_argument("--receive", choices=("scp", "orthanc"), default="scp")
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.demo_dir, "model", "export")):
        raise SystemExit(f"no demo model in {args.demo_dir}/model/: run `make demo` first")
    files = demo_files(args.demo_dir, args.studies)
    pacs_dir = os.path.join(args.demo_dir, "pacs")
    shutil.rmtree(pacs_dir, ignore_errors=True)
    node_dir = os.path.join(pacs_dir, "node")
    os.makedirs(node_dir)
    os.makedirs(os.path.join(pacs_dir, "orthanc"))
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))

    pacs = orthanc_server.OrthancServer(os.path.join(pacs_dir, "orthanc"), stable_age=1)
    try:
        pacs.start()
    except orthanc_server.OrthancMissing as error:
        raise SystemExit(str(error)) from None
    node = None
    try:
        print(f"==> Orthanc is running: {pacs.http_url}/app/explorer.html (DICOM {pacs.dicom_peer})", flush=True)
        port = orthanc_server.free_port()
        print(f"==> starting cxr-node with the model in {args.demo_dir}/model (log: {node_dir}/node.log)", flush=True)
        node = start_node(args, pacs, node_dir, patient_key_file(args.demo_dir, pacs_dir), port)
        studies = sorted({pacs.upload(open(path, "rb").read())["ParentStudy"] for path in files})
        print(f"==> stored {len(files)} synthetic DICOMs ({len(studies)} studies) in Orthanc", flush=True)
        if args.receive == "scp":
            pacs.add_modality(MODALITY_NAME, NODE_AET, orthanc_server.HOST, port)
            pacs.send_to_modality(MODALITY_NAME, studies)
            print(f"==> Orthanc sent them to cxr-node by C-STORE ({NODE_AET}@{orthanc_server.HOST}:{port})",
                  flush=True)
        else:
            print("==> cxr-node follows Orthanc's change log and answers each study once it is stable", flush=True)
        deadline = time.monotonic() + ANSWER_TIMEOUT_SECONDS
        waiting = set(studies)
        while waiting and not stop and time.monotonic() < deadline:
            for study_id in sorted(waiting):
                if answered(pacs, study_id):
                    waiting.discard(study_id)
                    print(f"    answered: {pacs.http_url}/app/explorer.html#study?uuid={study_id}", flush=True)
            time.sleep(0.5)
        if waiting and not stop:
            print(f"!!  {len(waiting)} studies unanswered after {ANSWER_TIMEOUT_SECONDS:g} s; see {node_dir}/node.log "
                  f"and {node_dir}/audit.jsonl", flush=True)
        print(f"==> each study now holds the node's report (SR) and heat map (NOT FOR DIAGNOSIS); the audit log is "
              f"{node_dir}/audit.jsonl. Open {pacs.http_url}/app/explorer.html; Ctrl-C stops it all.", flush=True)
        while not stop:
            time.sleep(0.2)
    finally:
        print("==> stopping cxr-node and Orthanc", flush=True)
        if node is not None and node.poll() is None:
            node.send_signal(signal.SIGTERM)
            node.wait()
        pacs.stop()


if __name__ == "__main__":
    main()
