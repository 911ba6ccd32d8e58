"""Submits the trainer to Vertex AI as a custom job: `python -m infra.vertex.launch`.

By default one a3-highgpu-8g machine with 8 × H100, where the trainer's MirroredStrategy uses
every GPU. `--replica_count N` asks for N machines: worker pool 0 holds the chief and worker pool 1
the other N-1 workers; Vertex AI describes that cluster in TF_CONFIG, from which the trainer picks
MultiWorkerMirroredStrategy; every replica runs the same trainer with the same flags, the code
that tests/test_trainer_distributed.py runs as a chief and a worker. Vertex AI derives
AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR from --base_output_dir, and the
trainer writes there. Before it preempts a VM, Vertex AI sends SIGTERM: the trainer checkpoints at
the next loop boundary on every replica and exits; the restarted job (or one submitted again with
the same --base_output_dir) resumes from that checkpoint at its stage and step.

Flags this launcher does not define, and everything after `--`, go to `python -m trainer.task`
unchanged. Google Cloud is reached with Application Default Credentials only; `--dry_run` prints
the job request as JSON and reaches nothing.

  python -m infra.vertex.launch --project=my-project \\
      --image_uri=us-central1-docker.pkg.dev/my-project/cxr/cxr-trainer:TAG \\
      --base_output_dir=gs://my-bucket/models/run-001 \\
      -- --data_dir=gs://my-bucket/tfrecords/run-001
"""

import argparse
import dataclasses
import json
import re
import sys
from typing import Any, Sequence

from google.cloud import aiplatform


@dataclasses.dataclass(frozen=True)
class Machine:
    """The hardware of one replica, in Vertex AI's machine_spec terms."""

    machine_type: str
    accelerator_type: str
    accelerator_count: int


PRESETS: dict[str, Machine] = {
    "h100x8": Machine("a3-highgpu-8g", "NVIDIA_H100_80GB", 8),
    "a100x4": Machine("a2-highgpu-4g", "NVIDIA_TESLA_A100", 4),
}
DEFAULT_PRESET = "h100x8"
ACCELERATOR_TYPES = tuple(t.name for t in aiplatform.gapic.AcceleratorType if t.name != "ACCELERATOR_TYPE_UNSPECIFIED")
SCHEDULING_STRATEGIES = ("STANDARD", "SPOT", "FLEX_START")
TENSORBOARD_RESOURCE = re.compile(r"^projects/[^/]+/locations/[^/]+/tensorboards/[^/]+$")
GCS_PATH = re.compile(r"^gs://([^/]+)(/.*)?$")


@dataclasses.dataclass(frozen=True)
class JobRequest:
    """Everything the launcher sends to Vertex AI: what a dry run prints is what a run submits."""

    display_name: str
    project: str
    location: str
    staging_bucket: str
    base_output_dir: str
    worker_pool_specs: list[dict[str, Any]]
    service_account: str | None
    tensorboard: str | None
    restart_job_on_worker_restart: bool
    scheduling_strategy: str
    timeout_seconds: int


def worker_pool_specs(image_uri: str, machine: Machine, replica_count: int, trainer_args: Sequence[str],
                      boot_disk_size_gb: int) -> list[dict[str, Any]]:
    """Pool 0 is the chief (one replica); with several machines, pool 1 holds the other workers."""

    def pool(replicas: int) -> dict[str, Any]:
        return {
            "machine_spec": dataclasses.asdict(machine),
            "replica_count": replicas,
            "disk_spec": {"boot_disk_type": "pd-ssd", "boot_disk_size_gb": boot_disk_size_gb},
            "container_spec": {"image_uri": image_uri, "args": list(trainer_args)},
        }

    pools = [pool(1)]
    if replica_count > 1:
        pools.append(pool(replica_count - 1))
    return pools


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra.vertex.launch", description=__doc__.split("\n")[0], allow_abbrev=False,
        epilog="Unknown flags and everything after `--` are passed to `python -m trainer.task`.")
    parser.add_argument("--project", required=True, help="Google Cloud project of the job.")
    parser.add_argument("--region", default="us-central1", help="Vertex AI region with the chosen GPUs.")
    parser.add_argument("--image_uri", required=True, help="Trainer image built from infra/vertex/Dockerfile.")
    parser.add_argument("--base_output_dir", required=True,
                        help="gs:// folder of this run; Vertex AI sets AIP_MODEL_DIR=<it>/model, "
                             "AIP_CHECKPOINT_DIR=<it>/checkpoints, AIP_TENSORBOARD_LOG_DIR=<it>/logs.")
    parser.add_argument("--display_name", default="cxr-trainer", help="Job name shown in the console.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                        help="Machine of each replica: " + "; ".join(
                            f"{name} = {m.machine_type} with {m.accelerator_count} × {m.accelerator_type}"
                            for name, m in sorted(PRESETS.items())))
    parser.add_argument("--machine_type", help="Overrides the preset's machine type.")
    parser.add_argument("--accelerator_type", choices=ACCELERATOR_TYPES, metavar="TYPE",
                        help="Overrides the preset's GPU type, e.g. NVIDIA_A100_80GB or NVIDIA_L4.")
    parser.add_argument("--accelerator_count", type=int, help="Overrides the preset's GPUs per machine.")
    parser.add_argument("--replica_count", type=int, default=1,
                        help="Machines in the job; more than 1 trains with MultiWorkerMirroredStrategy, each "
                             "machine reading its own train shards.")
    parser.add_argument("--boot_disk_size_gb", type=int, default=100, help="Boot disk (pd-ssd) per machine.")
    parser.add_argument("--service_account",
                        help="Service account the job runs as (required with --tensorboard).")
    parser.add_argument("--tensorboard",
                        help="Vertex AI TensorBoard, projects/P/locations/L/tensorboards/ID, to stream logs to.")
    parser.add_argument("--scheduling_strategy", choices=SCHEDULING_STRATEGIES, default="STANDARD",
                        help="STANDARD on-demand VMs, SPOT preemptible VMs (cheaper; the job restarts and "
                             "resumes from its checkpoint), or FLEX_START (waits in a queue for capacity).")
    parser.add_argument("--restart_job_on_worker_restart", action=argparse.BooleanOptionalAction, default=True,
                        help="Restart the whole job when a VM restarts or is preempted; the trainer then "
                             "resumes from its last checkpoint. A multi-worker job cannot recover without it.")
    parser.add_argument("--timeout_hours", type=float, default=24.0,
                        help="Vertex AI stops the job after this long, capping the cost of a stuck run.")
    parser.add_argument("--dry_run", action="store_true", help="Print the job request and submit nothing.")
    return parser


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The launcher's flags, and the trainer's: unknown flags in their order, then all after `--`."""
    own, trainer_tail = list(argv), []
    if "--" in own:
        separator = own.index("--")
        own, trainer_tail = own[:separator], own[separator + 1:]
    parser = build_parser()
    args, unknown = parser.parse_known_args(own)
    trainer_args = unknown + trainer_tail
    validate_args(parser, args, trainer_args)
    return args, trainer_args


def _flag_value(args: Sequence[str], name: str) -> str | None:
    """The value of `name` in argv-style args (`--name=value` or `--name value`), if present."""
    for index, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and index + 1 < len(args):
            return args[index + 1]
    return None


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace, trainer_args: Sequence[str]) -> None:
    """Fails before anything is submitted: a mistake found on Vertex AI costs GPU start-up time."""
    if not GCS_PATH.match(args.base_output_dir):
        parser.error(f"--base_output_dir must be a gs:// folder, got {args.base_output_dir!r}")
    if args.replica_count < 1:
        parser.error(f"--replica_count must be at least 1, got {args.replica_count}")
    if args.accelerator_count is not None and args.accelerator_count < 1:
        parser.error(f"--accelerator_count must be at least 1, got {args.accelerator_count}")
    if args.timeout_hours <= 0:
        parser.error(f"--timeout_hours must be positive, got {args.timeout_hours}")
    if args.tensorboard and not TENSORBOARD_RESOURCE.match(args.tensorboard):
        parser.error(f"--tensorboard must look like projects/P/locations/L/tensorboards/ID, got {args.tensorboard!r}")
    if args.tensorboard and not args.service_account:
        parser.error("--tensorboard needs --service_account: Vertex AI uploads the logs as that account")
    data_dir = _flag_value(trainer_args, "--data_dir")
    if data_dir is None or not GCS_PATH.match(data_dir):
        parser.error(f"the trainer needs --data_dir=gs://... (the preprocess job's output); got {data_dir!r}")


def build_request(args: argparse.Namespace, trainer_args: Sequence[str]) -> JobRequest:
    preset = PRESETS[args.preset]
    machine = Machine(
        machine_type=args.machine_type or preset.machine_type,
        accelerator_type=args.accelerator_type or preset.accelerator_type,
        accelerator_count=args.accelerator_count or preset.accelerator_count,
    )
    bucket = GCS_PATH.match(args.base_output_dir).group(1)
    return JobRequest(
        display_name=args.display_name,
        project=args.project,
        location=args.region,
        staging_bucket=f"gs://{bucket}",
        base_output_dir=args.base_output_dir,
        worker_pool_specs=worker_pool_specs(args.image_uri, machine, args.replica_count, trainer_args,
                                            args.boot_disk_size_gb),
        service_account=args.service_account,
        tensorboard=args.tensorboard,
        restart_job_on_worker_restart=args.restart_job_on_worker_restart,
        scheduling_strategy=args.scheduling_strategy,
        timeout_seconds=round(args.timeout_hours * 3600),
    )


def submit(request: JobRequest) -> aiplatform.CustomJob:
    """Creates the custom job and returns once Vertex AI has accepted it; training goes on there."""
    job = aiplatform.CustomJob(
        display_name=request.display_name,
        worker_pool_specs=request.worker_pool_specs,
        base_output_dir=request.base_output_dir,
        project=request.project,
        location=request.location,
        staging_bucket=request.staging_bucket,
    )
    job.submit(
        service_account=request.service_account,
        tensorboard=request.tensorboard,
        restart_job_on_worker_restart=request.restart_job_on_worker_restart,
        scheduling_strategy=aiplatform.gapic.Scheduling.Strategy[request.scheduling_strategy],
        timeout=request.timeout_seconds,
    )
    return job


def main(argv: Sequence[str] | None = None) -> None:
    args, trainer_args = parse_args(sys.argv[1:] if argv is None else argv)
    request = build_request(args, trainer_args)
    print(json.dumps(dataclasses.asdict(request), indent=2))
    if args.dry_run:
        return
    job = submit(request)
    print(f"Submitted {job.resource_name}; outputs go to {request.base_output_dir}")


if __name__ == "__main__":
    main()
