"""`cxr-node`: a DICOM node that answers chest radiograph studies with a Structured Report and a heat map.

    cxr-node --model_dir JOB_DIR --patient_key_file KEY --state_dir STATE \\
        --destination AET@HOST:PORT | http://HOST:8042/dicom-web \\
        [--receive scp --ae_title CXR_NODE --host 0.0.0.0 --port 11112 --allowed_calling_aets PACS]
        [--receive orthanc --orthanc_url http://HOST:8042]
    cxr-node --resend_dead_letters --state_dir STATE --destination ...

Studies come in by C-STORE (`--receive scp`, `serving.study_inbox` decides when a study is
complete) or from an Orthanc server's change log (`--receive orthanc`,
`serving.orthanc_follower`). Each complete study goes to a pool of at most
`--max_concurrent_studies` workers sharing one model (`serving.study_analysis.StudyModel`):
select the frontal CR/DX images, predict, Grad-CAM, build the SR and the heat maps
(`serving.dicom_results`), send them (`serving.delivery`, `serving.pacs`), and write one
audit line (`serving.audit`) and the counters. No bad input stops the node; SIGTERM
finishes the studies in hand and exits, leaving the rest on disk for the next start.
docs/pacs.md has the whole story.
"""

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import os
import shutil
import signal
import threading
import time

from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from cxr_core import contract, imaging, selection
from serving import audit, delivery, dicom_results, orthanc_follower, pacs, study_analysis
from serving.study_inbox import StudyBatch, StudyInbox

PROG = "cxr-node"
RECEIVE_SCP = "scp"
RECEIVE_ORTHANC = "orthanc"
SPOOL_DIR = "spool"
ORTHANC_WORK_DIR = os.path.join(SPOOL_DIR, "orthanc")  # Downloads in progress; pending markers bring them back.
DEAD_LETTER_DIR = "dead_letter"
FAILED_DIR = "failed"
ORTHANC_STATE_DIR = "orthanc"
AUDIT_FILE = "audit.jsonl"
COUNTERS_FILE = "counters.json"
DISPATCH_INTERVAL_SECONDS = 0.2
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210

# Outcomes of a study batch: the audit line's `outcome` and the counter `studies/<outcome>`.
ANSWERED = "answered"
DEAD_LETTERED = "dead_lettered"
NO_FRONTAL_RADIOGRAPH = "no_frontal_radiograph"
ALREADY_ANSWERED = "already_answered"
OWN_OBJECTS_ONLY = "own_objects_only"
ANALYSIS_FAILED = "analysis_failed"

logger = logging.getLogger(PROG)


@dataclasses.dataclass(frozen=True)
class NodeSettings:
    """Everything the flags decide, apart from the model, the destination and the key."""

    state_dir: str
    receive: str = RECEIVE_SCP
    ae_title: str = "CXR_NODE"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    orthanc_url: str = ""
    orthanc_poll_seconds: float = 1.0
    orthanc_start: str = orthanc_follower.START_NOW
    quiet_seconds: float = 5.0
    max_study_wait_seconds: float = 300.0
    max_instances_per_study: int = 100
    max_concurrent_studies: int = 2
    rules: study_analysis.SelectionRules = study_analysis.SelectionRules(
        selection.parse_allowed_views(selection.DEFAULT_ALLOWED_VIEWS))
    retry: delivery.RetryPolicy = delivery.RetryPolicy()

    def path(self, name: str) -> str:
        return os.path.join(self.state_dir, name)


class Counters:
    """Named counts, safe to increment from any thread, saved as JSON after every study."""

    def __init__(self, path: str):
        self._path = path
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def inc(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))

    def save(self) -> None:
        with self._lock:
            partial = self._path + ".partial"
            with open(partial, "w", encoding="utf-8") as handle:
                json.dump(dict(sorted(self._counts.items())), handle, indent=1)
            os.replace(partial, self._path)


class Node:
    """The running service: a receiver, the worker pool and what each study batch becomes."""

    def __init__(self, settings: NodeSettings, model: study_analysis.StudyModel, destination: delivery.Destination,
                 audit_log: audit.AuditLog, key: str):
        self.settings = settings
        self.model = model
        self.destination = destination
        self.audit = audit_log
        self.counters = Counters(settings.path(COUNTERS_FILE))
        self._key = key
        self._stopping = threading.Event()
        self._workers = concurrent.futures.ThreadPoolExecutor(settings.max_concurrent_studies,
                                                              thread_name_prefix="study")
        self._threads: list[threading.Thread] = []
        self._server = None
        self._inbox: StudyInbox | None = None
        self._follower: orthanc_follower.OrthancFollower | None = None
        self._in_flight: dict[str, bool] = {}  # Orthanc study id → seen stable again while in progress.
        self._in_flight_lock = threading.Lock()
        for name in (DEAD_LETTER_DIR, FAILED_DIR):
            os.makedirs(settings.path(name), exist_ok=True)

    # Lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Recovers the previous run's unfinished studies, then starts receiving."""
        self.audit.write("node_started", receive=self.settings.receive, model=dataclasses.asdict(self.model.identity),
                         destination=str(self.destination), max_concurrent_studies=self.settings.max_concurrent_studies)
        if self.settings.receive == RECEIVE_SCP:
            self._inbox = StudyInbox(self.settings.path(SPOOL_DIR), self.settings.quiet_seconds,
                                     self.settings.max_study_wait_seconds, self.settings.max_instances_per_study)
            for batch in self._inbox.recover():
                self._workers.submit(self._answer, batch)
            self._server = self._start_scp()
            self._start_thread("dispatch", self._dispatch_loop)
        else:
            shutil.rmtree(self.settings.path(ORTHANC_WORK_DIR), ignore_errors=True)
            os.makedirs(self.settings.path(ORTHANC_WORK_DIR))
            self._follower = orthanc_follower.OrthancFollower(
                pacs.OrthancClient(self.settings.orthanc_url), self.settings.path(ORTHANC_STATE_DIR),
                self.settings.orthanc_start)
            self._start_thread("follow", self._follow_loop)

    def stop(self) -> None:
        """Stops receiving, finishes the studies in hand, and leaves the others on disk for the next start."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            thread.join()
        self._workers.shutdown(wait=True, cancel_futures=True)
        self.counters.save()
        self.audit.write("node_stopped", counters=self.counters.snapshot(),
                         studies_still_receiving=self._inbox.waiting() if self._inbox else 0,
                         orthanc_studies_pending=len(self._follower.pending()) if self._follower else 0)

    @property
    def scp_port(self) -> int:
        return self._server.server_address[1] if self._server else 0

    def _start_thread(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # Receiving by C-STORE -----------------------------------------------------------------------

    def _start_scp(self):
        ae = AE(ae_title=self.settings.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_calling_aet = list(self.settings.allowed_calling_aets)
        ae.maximum_associations = max(10, self.settings.max_concurrent_studies)
        server = ae.start_server((self.settings.host, self.settings.port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, self._on_c_store)])
        logger.info("receiving by C-STORE as %s on %s:%d", self.settings.ae_title, self.settings.host,
                    server.server_address[1])
        return server

    def _on_c_store(self, event) -> int:
        """Spools one instance. A status other than success tells the sender to keep it and try again."""
        caller = event.assoc.requestor.ae_title
        try:
            dataset = event.dataset
            study_uid, instance_uid = str(dataset.StudyInstanceUID), str(dataset.SOPInstanceUID)
        except Exception as error:  # pydicom raises many types on a dataset it cannot decode
            return self._refuse(caller, "undecodable", f"the dataset cannot be decoded ({type(error).__name__})",
                                STATUS_CANNOT_UNDERSTAND)
        try:
            self._inbox.add(study_uid, instance_uid, event.encoded_dataset(), caller)
        except OSError as error:
            return self._refuse(caller, "spool_unwritable", f"the spool cannot be written ({error.strerror})",
                                STATUS_OUT_OF_RESOURCES)
        self.counters.inc("instances/received")
        return STATUS_SUCCESS

    def _refuse(self, caller: str, kind: str, reason: str, status: int) -> int:
        self.counters.inc(f"instances/refused/{kind}")
        self.audit.write("instance_refused", caller=caller, kind=kind, reason=reason, status=f"0x{status:04X}")
        return status

    def _dispatch_loop(self) -> None:
        while not self._stopping.wait(DISPATCH_INTERVAL_SECONDS):
            try:
                batches = self._inbox.due()
            except OSError as error:  # The spool's disk: the studies stay where they are, and are tried again.
                self.counters.inc("spool/errors")
                logger.warning("cannot hand out complete studies: %s", error.strerror)
                continue
            for batch in batches:
                self._workers.submit(self._answer, batch)

    # Following Orthanc --------------------------------------------------------------------------

    def _follow_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                stable = set(self._follower.poll())
                failures = 0
            except Exception as error:  # Orthanc down or answering oddly: the cursor has not moved, so retry.
                failures += 1
                self.counters.inc("orthanc/unreachable")
                logger.warning("reading Orthanc's changes failed (attempt %d): %s", failures, error)
                self._stopping.wait(self.settings.retry.delay(failures))
                continue
            for study_id in self._follower.pending():  # Those of an earlier run and failed fetches too.
                self._submit_orthanc(study_id, stable_again=study_id in stable)
            self._stopping.wait(self.settings.orthanc_poll_seconds)

    def _submit_orthanc(self, study_id: str, stable_again: bool) -> None:
        """Queues the study unless it is in progress; one that became stable again meanwhile is redone after."""
        with self._in_flight_lock:
            if study_id in self._in_flight:
                self._in_flight[study_id] = self._in_flight[study_id] or stable_again
                return
            self._in_flight[study_id] = False
        self._workers.submit(self._answer_orthanc, study_id)

    def _answer_orthanc(self, study_id: str) -> None:
        try:
            batch = self._follower.fetch(study_id, self.settings.path(ORTHANC_WORK_DIR), self.settings.rules.max_pixels,
                                         time.monotonic())
        except Exception as error:  # Orthanc down or the disk full: the marker stays, the next poll retries.
            self.counters.inc("orthanc/fetch_failed")
            logger.warning("fetching a stable study failed, it stays pending: %s", error)
            batch = None
        if batch is not None:
            self._answer(batch)
            self._follower.done(study_id)
        with self._in_flight_lock:
            again = self._in_flight.pop(study_id)
        if again and not self._stopping.is_set():
            self._submit_orthanc(study_id, stable_again=False)

    # Answering a study --------------------------------------------------------------------------

    def _answer(self, batch: StudyBatch) -> None:
        """Analyses one batch, sends its results and writes its audit line; never raises."""
        study = audit.pseudonym(self._key, batch.study_uid)
        record = {"study": study, "batch": batch.batch_id, "via": batch.via,
                  "handed_out_because": batch.handed_out_because}
        try:
            record.update(self._analyse_and_send(batch, study))
            shutil.rmtree(batch.folder, ignore_errors=True)
        except Exception as error:  # a model or library failure must not stop the node; the files are kept
            logger.exception("study %s batch %s could not be analysed", study, batch.batch_id)
            kept = os.path.join(self.settings.path(FAILED_DIR), f"{study}-{batch.batch_id}")
            shutil.move(batch.folder, kept)
            record.update(outcome=ANALYSIS_FAILED, error=type(error).__name__, kept_in=os.path.relpath(
                kept, self.settings.state_dir))
        record["timings"] = {**record.get("timings", {}),
                             "waited_s": round(batch.handed_out - batch.first_received, 3),
                             "answer_s": round(time.monotonic() - batch.handed_out, 3)}
        self.counters.inc(f"studies/{record['outcome']}")
        self.audit.write("study", **record)
        self.counters.save()

    def _analyse_and_send(self, batch: StudyBatch, study: str) -> dict:
        """The audit fields of a batch that was analysed (and, when it had something to answer, sent)."""
        started = time.monotonic()
        files = batch.files()
        chosen = study_analysis.select_images(files, self.model.image_size, self.settings.rules)
        rejected = list(batch.pre_rejected) + chosen.rejected
        answered = set().union(*(dicom_results.referenced_instances(own) for own in chosen.own_outputs))
        fresh = [image for image in chosen.selected if str(image.header.SOPInstanceUID) not in answered]
        self.counters.inc("instances/analysed", len(files) + len(batch.pre_rejected))
        for rejection in rejected:
            self.counters.inc(f"instances/rejected/{rejection.stage}/{rejection.kind}")
        fields = {
            "received": {"instances": len(files) - len(chosen.own_outputs) + len(batch.pre_rejected),
                         "own_objects": len(chosen.own_outputs)},
            "rejected": [{"instance": self._instance(rejection.instance_uid), "stage": rejection.stage,
                          "kind": rejection.kind, "reason": rejection.reason} for rejection in rejected],
            "already_answered": len(chosen.selected) - len(fresh),
        }
        if not fresh:
            if chosen.selected:
                outcome = ALREADY_ANSWERED
            elif chosen.own_outputs and not rejected:
                outcome = OWN_OBJECTS_ONLY
            else:
                outcome = NO_FRONTAL_RADIOGRAPH
            return {**fields, "selected": [], "outcome": outcome,
                    "timings": {"analysis_s": round(time.monotonic() - started, 3)}}
        findings = self.model.findings(fresh)
        report = dicom_results.structured_report(findings, self.model.identity)
        heat_maps = dicom_results.heat_map_images(findings, self.model.identity)
        analysed = time.monotonic()
        sent = delivery.deliver(self.destination, [report, *heat_maps], self.settings.retry,
                                self.settings.path(DEAD_LETTER_DIR), f"{study}-{batch.batch_id}", self._stopping)
        timings = {"analysis_s": round(analysed - started, 3), "delivery_s": round(time.monotonic() - analysed, 3)}
        if sent.delivered:
            since = "stable_seen_to_stored_s" if batch.via == orthanc_follower.VIA else "last_received_to_stored_s"
            timings[since] = round(sent.stored_at - batch.last_received, 3)
        self.counters.inc("deliveries/attempts", sent.attempts)
        return {
            **fields,
            "selected": [{"instance": self._instance(str(image.header.SOPInstanceUID)), "modality": image.modality,
                          "view": image.view, "predicted_class": finding.class_name,
                          "probabilities": dict(zip(contract.CLASS_NAMES, finding.probabilities))}
                         for image, finding in zip(fresh, findings)],
            "sent": [{"object": "report", "instance": self._instance(str(report.SOPInstanceUID))}]
                    + [{"object": "heat_map", "instance": self._instance(str(image.SOPInstanceUID))}
                       for image in heat_maps],
            "destination": str(self.destination), "attempts": sent.attempts,
            "outcome": ANSWERED if sent.delivered else DEAD_LETTERED,
            **({} if sent.delivered else {"dead_letter": sent.dead_letter, "error": sent.error}),
            "timings": timings,
        }

    def _instance(self, uid: str) -> str | None:
        return audit.pseudonym(self._key, uid) if uid else None


# Command line -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", help="The trainer's --job_dir (export/ and model.keras, which Grad-CAM needs).")
    parser.add_argument("--patient_key_file",
                        help="File holding the patient key (at least 16 characters): the audit log names studies "
                             "by their HMAC-SHA256 under it.")
    parser.add_argument("--state_dir", required=True,
                        help="The node's folder: spool/, dead_letter/, failed/, audit.jsonl, counters.json and the "
                             "Orthanc cursor. Keep it on a local disk; it holds DICOM files.")
    parser.add_argument("--destination", required=True,
                        help="Where results go: AET@HOST:PORT (C-STORE) or the http(s):// URL of a DICOMweb "
                             "service (STOW-RS), e.g. http://127.0.0.1:8042/dicom-web.")
    parser.add_argument("--audit_log", help=f"The JSON-lines audit log (default STATE_DIR/{AUDIT_FILE}).")
    parser.add_argument("--receive", choices=(RECEIVE_SCP, RECEIVE_ORTHANC), default=RECEIVE_SCP,
                        help="scp: receive studies by C-STORE; orthanc: follow an Orthanc server's stable studies.")
    parser.add_argument("--ae_title", default=NodeSettings.ae_title,
                        help="The node's AE title (called, and calling when it sends by C-STORE).")
    parser.add_argument("--host", default=NodeSettings.host,
                        help="Address the C-STORE SCP listens on (0.0.0.0: every interface).")
    parser.add_argument("--port", type=int, default=NodeSettings.port, help="Port of the C-STORE SCP.")
    parser.add_argument("--allowed_calling_aets", default="",
                        help="Comma-separated AE titles allowed to send studies; empty accepts any.")
    parser.add_argument("--orthanc_url", help="Orthanc's REST API, e.g. http://127.0.0.1:8042 (--receive orthanc).")
    parser.add_argument("--orthanc_poll_seconds", type=float, default=NodeSettings.orthanc_poll_seconds,
                        help="How often the change log is read.")
    parser.add_argument("--orthanc_start", choices=(orthanc_follower.START_NOW, orthanc_follower.START_BEGINNING),
                        default=orthanc_follower.START_NOW,
                        help="On the first run only: answer studies that become stable from now on, or every study "
                             "in the change log.")
    parser.add_argument("--quiet_seconds", type=float, default=NodeSettings.quiet_seconds,
                        help="A study received by C-STORE is complete when nothing arrived for this long.")
    parser.add_argument("--max_study_wait_seconds", type=float, default=NodeSettings.max_study_wait_seconds,
                        help="A study still growing after this long is answered with what has arrived.")
    parser.add_argument("--max_instances_per_study", type=int, default=NodeSettings.max_instances_per_study,
                        help="A study is answered once it holds this many instances; later ones form a new batch.")
    parser.add_argument("--max_concurrent_studies", type=int, default=NodeSettings.max_concurrent_studies,
                        help="Studies analysed at once (one model in memory).")
    parser.add_argument("--allowed_views", default=selection.DEFAULT_ALLOWED_VIEWS,
                        help="Comma-separated ViewPosition values analysed, as the preprocess job's flag.")
    parser.add_argument("--max_megapixels", type=float, default=imaging.DEFAULT_MAX_MEGAPIXELS,
                        help="Largest image analysed, as the preprocess job's flag.")
    parser.add_argument("--send_attempts", type=int, default=delivery.RetryPolicy.attempts,
                        help="Attempts to send a study's results before they go to the dead-letter folder.")
    parser.add_argument("--retry_delay_seconds", type=float, default=delivery.RetryPolicy.first_delay,
                        help="Wait after the first failed attempt; doubled after each further one.")
    parser.add_argument("--max_retry_delay_seconds", type=float, default=delivery.RetryPolicy.max_delay,
                        help="Longest wait between attempts.")
    parser.add_argument("--resend_dead_letters", action="store_true",
                        help="Send every folder of STATE_DIR/dead_letter/ to --destination once, then exit.")
    return parser


def settings_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> NodeSettings:
    """NodeSettings of the flags; exits with a usage message on a bad value."""
    if not args.resend_dead_letters:
        for flag in ("model_dir", "patient_key_file"):
            if not getattr(args, flag):
                parser.error(f"--{flag} is required")
        if args.receive == RECEIVE_ORTHANC and not args.orthanc_url:
            parser.error("--receive orthanc needs --orthanc_url")
    for flag in ("quiet_seconds", "max_study_wait_seconds", "max_megapixels", "orthanc_poll_seconds"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag} must be positive")
    for flag in ("max_instances_per_study", "max_concurrent_studies", "send_attempts"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in [1, 65535], got {args.port}")
    try:
        allowed_views = selection.parse_allowed_views(args.allowed_views)
    except ValueError as error:
        parser.error(str(error))
    return NodeSettings(
        state_dir=args.state_dir, receive=args.receive, ae_title=args.ae_title, host=args.host, port=args.port,
        allowed_calling_aets=tuple(aet.strip() for aet in args.allowed_calling_aets.split(",") if aet.strip()),
        orthanc_url=args.orthanc_url or "", orthanc_poll_seconds=args.orthanc_poll_seconds,
        orthanc_start=args.orthanc_start, quiet_seconds=args.quiet_seconds,
        max_study_wait_seconds=args.max_study_wait_seconds, max_instances_per_study=args.max_instances_per_study,
        max_concurrent_studies=args.max_concurrent_studies,
        rules=study_analysis.SelectionRules(allowed_views, imaging.max_pixels_for(args.max_megapixels)),
        retry=delivery.RetryPolicy(args.send_attempts, args.retry_delay_seconds, args.max_retry_delay_seconds))


def resend(settings: NodeSettings, destination: delivery.Destination, audit_log: audit.AuditLog) -> bool:
    """Sends the dead letters once and prints what happened; True when none is left."""
    sent, failed = delivery.resend_dead_letters(destination, settings.path(DEAD_LETTER_DIR))
    audit_log.write("dead_letters_resent", destination=str(destination), sent=sent, failed=failed)
    print(f"{PROG}: resent {len(sent)} dead-letter folder(s) to {destination}; {len(failed)} still waiting")
    for name, error in failed.items():
        print(f"  {name}: {error}")
    return not failed


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs until SIGTERM or Ctrl-C; exits with status 1 and one line on a start-up problem."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # pynetdicom logs every association at INFO, highdicom the UIDs of the datasets it copies from.
    for library in ("pynetdicom", "highdicom"):
        logging.getLogger(library).setLevel(logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from(parser, args)
    os.makedirs(settings.state_dir, exist_ok=True)
    try:
        destination = pacs.destination_for(args.destination, settings.ae_title)
    except ValueError as error:
        parser.error(str(error))
    audit_log = audit.AuditLog(args.audit_log or settings.path(AUDIT_FILE))
    if args.resend_dead_letters:
        raise SystemExit(0 if resend(settings, destination, audit_log) else 1)
    try:
        key = audit.load_key(args.patient_key_file)
        model = study_analysis.StudyModel(args.model_dir)
    except (audit.AuditKeyError, study_analysis.ModelUnavailable) as error:
        audit_log.write("node_not_started", reason=str(error))
        raise SystemExit(f"{PROG}: {error}") from None
    node = Node(settings, model, destination, audit_log, key)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    node.start()
    logger.info("ready; SIGTERM or Ctrl-C finishes the studies in hand and stops")
    stop.wait()
    logger.info("stopping: finishing the studies in hand")
    node.stop()
    audit_log.close()


if __name__ == "__main__":
    main()
