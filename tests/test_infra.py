"""Offline checks of infra/: the Vertex AI job request, the Dataflow Flex Template metadata, the
gcloud commands the Makefiles run, and the image pins. Nothing reaches Google Cloud: the only
stand-ins are aiplatform.CustomJob and google.auth.default.
"""

import ast
import importlib.util
import json
import logging
import pathlib
import re
import shlex
import shutil
import subprocess

import google.auth
import pytest
import yaml
from google.cloud import aiplatform, dataflow_v1beta3
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from infra.vertex import launch

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATAFLOW = ROOT / "infra" / "dataflow"
VERTEX = ROOT / "infra" / "vertex"

LAUNCHER_FLAGS = ["--project=my-project", "--image_uri=trainer:1", "--base_output_dir=gs://bucket/models/run-1"]
TRAINER_FLAGS = ["--data_dir=gs://bucket/tfrecords/run-1", "--stage1_epochs=2", "--stage2_epochs", "10"]
H100_MACHINE = {"machine_type": "a3-highgpu-8g", "accelerator_type": "NVIDIA_H100_80GB", "accelerator_count": 8}


def request_for(argv: list[str]) -> launch.JobRequest:
    args, trainer_args = launch.parse_args(argv)
    return launch.build_request(args, trainer_args)


def pool(machine: dict, replicas: int, trainer_args: list[str]) -> dict:
    return {
        "machine_spec": machine,
        "replica_count": replicas,
        "disk_spec": {"boot_disk_type": "pd-ssd", "boot_disk_size_gb": 100},
        "container_spec": {"image_uri": "trainer:1", "args": trainer_args},
    }


# Vertex AI launcher ---------------------------------------------------------------------------

def test_default_job_is_one_machine_with_eight_h100():
    request = request_for(LAUNCHER_FLAGS + ["--"] + TRAINER_FLAGS)

    assert request.worker_pool_specs == [pool(H100_MACHINE, 1, TRAINER_FLAGS)]
    assert (request.project, request.location) == ("my-project", "us-central1")
    assert request.base_output_dir == "gs://bucket/models/run-1"
    assert request.staging_bucket == "gs://bucket"
    assert request.restart_job_on_worker_restart is True
    assert (request.scheduling_strategy, request.timeout_seconds) == ("STANDARD", 24 * 3600)
    # The same dicts that CustomJob receives must convert to Vertex AI's own message.
    spec = aiplatform.gapic.CustomJobSpec(worker_pool_specs=request.worker_pool_specs)
    assert spec.worker_pool_specs[0].machine_spec.accelerator_type == aiplatform.gapic.AcceleratorType.NVIDIA_H100_80GB


def test_a100_preset_and_overrides():
    a100 = request_for(LAUNCHER_FLAGS + ["--preset=a100x4", "--"] + TRAINER_FLAGS)
    assert a100.worker_pool_specs[0]["machine_spec"] == {
        "machine_type": "a2-highgpu-4g", "accelerator_type": "NVIDIA_TESLA_A100", "accelerator_count": 4}

    a100_80gb = request_for(LAUNCHER_FLAGS + ["--preset=a100x4", "--machine_type=a2-ultragpu-4g",
                                              "--accelerator_type=NVIDIA_A100_80GB", "--"] + TRAINER_FLAGS)
    assert a100_80gb.worker_pool_specs[0]["machine_spec"] == {
        "machine_type": "a2-ultragpu-4g", "accelerator_type": "NVIDIA_A100_80GB", "accelerator_count": 4}


@pytest.mark.parametrize("machines", [2, 3])
def test_several_machines_are_a_chief_pool_and_a_worker_pool(machines):
    request = request_for(LAUNCHER_FLAGS + [f"--replica_count={machines}", "--"] + TRAINER_FLAGS)

    assert request.worker_pool_specs == [pool(H100_MACHINE, 1, TRAINER_FLAGS),
                                         pool(H100_MACHINE, machines - 1, TRAINER_FLAGS)]
    aiplatform.gapic.CustomJobSpec(worker_pool_specs=request.worker_pool_specs)


def test_unknown_flags_and_everything_after_the_separator_reach_the_trainer():
    args, trainer_args = launch.parse_args(
        LAUNCHER_FLAGS + ["--data_dir", "gs://bucket/tfrecords/run-1", "--batch_size=64", "--dry_run",
                          "--", "--project=seen-by-the-trainer", "--weights=imagenet"])

    assert args.dry_run and args.project == "my-project"
    assert trainer_args == ["--data_dir", "gs://bucket/tfrecords/run-1", "--batch_size=64",
                            "--project=seen-by-the-trainer", "--weights=imagenet"]


@pytest.mark.parametrize("flags, message", [
    (["--base_output_dir=/tmp/models", "--", "--data_dir=gs://b/t"], "--base_output_dir must be a gs:// folder"),
    (["--replica_count=0", "--", "--data_dir=gs://b/t"], "--replica_count must be at least 1"),
    (["--tensorboard=projects/p/locations/l/tensorboards/1", "--", "--data_dir=gs://b/t"],
     "--tensorboard needs --service_account"),
    (["--tensorboard=my-board", "--service_account=sa@p.iam.gserviceaccount.com", "--", "--data_dir=gs://b/t"],
     "--tensorboard must look like"),
    (["--", "--stage1_epochs=2"], "the trainer needs --data_dir=gs://"),
    (["--", "--data_dir=/data/tfrecords"], "the trainer needs --data_dir=gs://"),
])
def test_bad_requests_fail_before_anything_is_submitted(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        launch.parse_args(LAUNCHER_FLAGS + flags)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


class RecordingCustomJob:
    """Stands in for aiplatform.CustomJob: records what would have been sent to Vertex AI."""

    created: list["RecordingCustomJob"] = []

    def __init__(self, **kwargs):
        self.init_kwargs = kwargs
        self.submit_kwargs = None
        self.resource_name = "projects/123/locations/us-central1/customJobs/456"
        self.created.append(self)

    def submit(self, **kwargs):
        self.submit_kwargs = kwargs


@pytest.fixture
def custom_jobs(monkeypatch) -> list[RecordingCustomJob]:
    def no_credentials(*args, **kwargs):
        raise AssertionError("the launcher itself must not look up credentials")

    monkeypatch.setattr(RecordingCustomJob, "created", [])
    monkeypatch.setattr(aiplatform, "CustomJob", RecordingCustomJob)
    monkeypatch.setattr(google.auth, "default", no_credentials)
    return RecordingCustomJob.created


def printed_request(output: str) -> dict:
    request, _ = json.JSONDecoder().raw_decode(output)
    return request


def test_dry_run_prints_the_request_and_submits_nothing(custom_jobs, capsys):
    launch.main(LAUNCHER_FLAGS + ["--replica_count=2", "--dry_run", "--"] + TRAINER_FLAGS)

    assert custom_jobs == []
    printed = printed_request(capsys.readouterr().out)
    expected = request_for(LAUNCHER_FLAGS + ["--replica_count=2", "--"] + TRAINER_FLAGS)
    assert printed["worker_pool_specs"] == expected.worker_pool_specs
    assert [spec["replica_count"] for spec in printed["worker_pool_specs"]] == [1, 1]


def test_submission_sends_the_printed_request(custom_jobs, capsys):
    launch.main(LAUNCHER_FLAGS + ["--replica_count=2", "--scheduling_strategy=SPOT",
                                  "--service_account=trainer@my-project.iam.gserviceaccount.com",
                                  "--tensorboard=projects/my-project/locations/us-central1/tensorboards/7",
                                  "--"] + TRAINER_FLAGS)

    [job] = custom_jobs
    output = capsys.readouterr().out
    printed = printed_request(output)
    assert job.init_kwargs == {
        "display_name": "cxr-trainer",
        "worker_pool_specs": printed["worker_pool_specs"],
        "base_output_dir": "gs://bucket/models/run-1",
        "project": "my-project",
        "location": "us-central1",
        "staging_bucket": "gs://bucket",
    }
    assert job.submit_kwargs == {
        "service_account": "trainer@my-project.iam.gserviceaccount.com",
        "tensorboard": "projects/my-project/locations/us-central1/tensorboards/7",
        "restart_job_on_worker_restart": True,
        "scheduling_strategy": aiplatform.gapic.Scheduling.Strategy.SPOT,
        "timeout": 24 * 3600,
    }
    assert "customJobs/456" in output


# Dataflow Flex Template metadata --------------------------------------------------------------

PREPROCESS_SAMPLES = {
    "rsna_dir": "gs://bucket/raw/rsna",
    "covid_dir": "gs://bucket/raw/covid",
    "csv": "gs://bucket/raw/own/images.csv",
    "image_folder": "gs://bucket/raw/xray",
    "folder_classes": "No_findings=normal,Covid-19=covid19",
    "patient_id_regex": "person(\\d+)_",
    "image_folder_source": "site-a",
    "output_dir": "gs://bucket/tfrecords/run-1",
    "image_size": "224",
    "split": "0.7,0.15,0.15",
    "augment": "normal=1,pneumonia=2,covid19=20",
    "seed": "7",
    "rsna_not_normal": "pneumonia",
    "patient_key": "a-secret-of-16-characters",
    "patient_key_file": "gs://bucket/secrets/patient_key",
    "max_megapixels": "80",
    "allowed_views": "PA,AP,AP SUPINE,LL",
    "target_shard_mb": "150.5",
    "min_shards": "32",
}
PREDICT_SAMPLES = {
    "model_dir": "gs://bucket/models/run-1/model/export",
    "input_pattern": "gs://bucket/incoming/*.dcm",
    "output_path": "gs://bucket/predictions/run-1/predictions",
}


def metadata(job: str) -> dict:
    return json.loads((DATAFLOW / f"{job}_metadata.json").read_text())


def parameters(job: str) -> dict[str, dict]:
    return {parameter["name"]: parameter for parameter in metadata(job)["parameters"]}


def matches_regexes(parameter: dict, value: str) -> bool:
    return all(re.fullmatch(regex, value) for regex in parameter.get("regexes", []))


@pytest.mark.parametrize("job", ["preprocess", "predict"])
def test_template_metadata_is_valid_for_the_dataflow_api(job):
    # from_json rejects unknown fields; gcloud further requires name, label and helpText.
    template = dataflow_v1beta3.TemplateMetadata.from_json((DATAFLOW / f"{job}_metadata.json").read_text())

    assert template.name and template.description
    names = [parameter.name for parameter in template.parameters]
    assert len(names) == len(set(names))
    for parameter in template.parameters:
        assert parameter.label and parameter.help_text, parameter.name
        for regex in parameter.regexes:
            re.compile(regex)


def assert_parser_accepts_template(parser, job: str, samples: dict[str, str]) -> None:
    """Every template parameter is a flag of the job, and every flag that takes a value is a parameter."""
    declared = parameters(job)
    assert set(declared) == set(samples)
    # Flags without a value (store_true) cannot be Flex Template parameters: the launcher passes --name=value.
    value_flags = {option[2:] for action in parser._actions if action.nargs != 0
                   for option in action.option_strings if option.startswith("--")}
    assert value_flags == set(declared)
    for name, value in samples.items():
        assert matches_regexes(declared[name], value), (name, value)
    args, unknown = parser.parse_known_args([f"--{name}={value}" for name, value in samples.items()])
    assert unknown == []
    converters = {action.dest: action.type or str for action in parser._actions}
    assert {name: getattr(args, name) for name in samples} == {
        name: converters[name](value) for name, value in samples.items()}


def test_preprocess_template_parameters_are_the_job_flags():
    from beam_pipelines import preprocess

    assert_parser_accepts_template(preprocess.build_parser(), "preprocess", PREPROCESS_SAMPLES)


def test_predict_template_parameters_are_the_job_flags():
    from beam_pipelines import batch_predict as predict

    assert_parser_accepts_template(predict.build_parser(), "predict", PREDICT_SAMPLES)


def test_preprocess_template_rejects_what_the_job_rejects():
    from beam_pipelines import preprocess, splitting
    from cxr_core import augmentation, selection

    declared = parameters("preprocess")
    for action in preprocess.build_parser()._actions:
        name = action.dest
        if name in declared and action.default is not None:
            assert matches_regexes(declared[name], str(action.default)), (name, action.default)
    assert [option["value"] for option in declared["rsna_not_normal"]["enumOptions"]] == list(
        selection.NOT_NORMAL_POLICIES)

    for good in ["auto", "normal=2,pneumonia=2,covid19=30", "covid19=5,normal=1,pneumonia=3"]:
        augmentation.parse_multipliers(good)
        assert matches_regexes(declared["augment"], good), good
    for bad in ["normal=2,pneumonia=2", "normal=0,pneumonia=2,covid19=30", "flu=2,normal=2,pneumonia=2"]:
        with pytest.raises(ValueError):
            augmentation.parse_multipliers(bad)
        assert not matches_regexes(declared["augment"], bad), bad

    for good in ["0.8,0.1,0.1", ".7,.15,.15"]:
        splitting.parse_split(good)
        assert matches_regexes(declared["split"], good), good
    for bad in ["0.8,0.2", "a,b,c", "0.8;0.1;0.1"]:
        with pytest.raises(ValueError):
            splitting.parse_split(bad)
        assert not matches_regexes(declared["split"], bad), bad


def load_flex_main():
    spec = importlib.util.spec_from_file_location("flex_main", DATAFLOW / "flex_main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flex_entry_point_needs_the_pipeline_the_image_was_built_for(monkeypatch):
    monkeypatch.delenv("CXR_PIPELINE", raising=False)

    with pytest.raises(SystemExit, match="CXR_PIPELINE must be one of preprocess, predict"):
        load_flex_main().main([])


def test_flex_entry_point_hands_the_template_arguments_to_the_job(monkeypatch, capsys):
    monkeypatch.setenv("CXR_PIPELINE", "preprocess")
    root_logger = logging.getLogger()
    previous_level = root_logger.level

    try:
        with pytest.raises(SystemExit) as exit_info:
            load_flex_main().main(["--help"])
    finally:
        root_logger.setLevel(previous_level)

    assert exit_info.value.code == 0
    assert "--rsna_dir" in capsys.readouterr().out


# Makefiles and Cloud Build --------------------------------------------------------------------

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def make_dry_run(makefile: pathlib.Path, *arguments: str) -> subprocess.CompletedProcess:
    """The commands a target would run (`make -n`), with TAG fixed so no git lookup is involved."""
    return subprocess.run(["make", "--no-print-directory", "-n", "-f", str(makefile), "TAG=t", *arguments],
                          capture_output=True, text=True, cwd=ROOT, check=False)


def template_parameters(command: str) -> dict[str, str]:
    return dict(re.findall(r"'--parameters=\^~\^([a-z_]+)=([^']*)'", command))


@needs_make
def test_run_preprocess_passes_template_parameters_intact():
    result = make_dry_run(DATAFLOW / "Makefile", "run-preprocess", "PROJECT=p", "BUCKET=b", "RUN=r",
                          "COVID_DIR=", "SPLIT=0.7,0.15,0.15", "AUGMENT=normal=2,pneumonia=2,covid19=30",
                          "IMAGE_FOLDER=gs://b/raw/xray", "FOLDER_CLASSES=No_findings=normal,Covid-19=covid19")

    assert result.returncode == 0, result.stderr
    assert "gcloud dataflow flex-template run cxr-preprocess-" in result.stdout
    assert "--template-file-gcs-location=gs://b/templates/preprocess-t.json" in result.stdout
    assert "--worker-machine-type=n2-standard-4 --num-workers=2 --max-workers=10" in result.stdout
    passed = template_parameters(result.stdout)
    assert passed == {
        "sdk_container_image": "us-central1-docker.pkg.dev/p/cxr/cxr-preprocess:t",
        "output_dir": "gs://b/tfrecords/r",
        "patient_key_file": "gs://b/secrets/patient_key",
        "rsna_dir": "gs://b/raw/rsna",
        "image_folder": "gs://b/raw/xray",
        "folder_classes": "No_findings=normal,Covid-19=covid19",
        "split": "0.7,0.15,0.15",
        "augment": "normal=2,pneumonia=2,covid19=30",
    }
    declared = parameters("preprocess")
    for name, value in passed.items():
        if name != "sdk_container_image":  # a Beam option, not a template parameter
            assert matches_regexes(declared[name], value), (name, value)


@needs_make
def test_run_predict_requires_inputs_and_passes_template_parameters():
    missing = make_dry_run(DATAFLOW / "Makefile", "run-predict", "PROJECT=p", "BUCKET=b")
    assert missing.returncode != 0 and "INPUT_PATTERN is not set" in missing.stderr

    result = make_dry_run(DATAFLOW / "Makefile", "run-predict", "PROJECT=p", "BUCKET=b", "RUN=r",
                          "INPUT_PATTERN=gs://b/incoming/*.dcm")
    assert result.returncode == 0, result.stderr
    passed = template_parameters(result.stdout)
    assert passed.pop("sdk_container_image") == "us-central1-docker.pkg.dev/p/cxr/cxr-predict:t"
    assert passed == {"model_dir": "gs://b/models/r/model/export", "input_pattern": "gs://b/incoming/*.dcm",
                      "output_path": "gs://b/predictions/r/predictions"}
    assert set(passed) == {name for name, parameter in parameters("predict").items()
                           if not parameter.get("isOptional")}


def substitutions(command: str) -> set[str]:
    [value] = re.findall(r"--substitutions=(\S+)", command)
    return {item.split("=", 1)[0] for item in value.split(",")}


def cloudbuild_variables(path: pathlib.Path) -> set[str]:
    yaml.safe_load(path.read_text())  # must be valid YAML
    return set(re.findall(r"\$\{(_[A-Z_]+)\}", path.read_text()))


@needs_make
@pytest.mark.parametrize("folder, target", [(DATAFLOW, "images"), (VERTEX, "image")])
def test_image_builds_pass_every_cloudbuild_substitution(folder, target):
    result = make_dry_run(folder / "Makefile", target, "PROJECT=p")

    assert result.returncode == 0, result.stderr
    assert substitutions(result.stdout) == cloudbuild_variables(folder / "cloudbuild.yaml")
    assert "--ignore-file=infra/cloudbuild.gcloudignore" in result.stdout


def test_dataflow_images_are_built_for_each_pipeline_the_entry_point_knows():
    steps = yaml.safe_load((DATAFLOW / "cloudbuild.yaml").read_text())["steps"]
    built = {arg.removeprefix("--build-arg=PIPELINE=") for step in steps for arg in step["args"]
             if arg.startswith("--build-arg=PIPELINE=")}
    allowed = re.search(r'case "\$\{PIPELINE\}" in ([a-z|]+)\)', (DATAFLOW / "Dockerfile").read_text()).group(1)

    assert built == set(allowed.split("|")) == set(load_flex_main().PIPELINES)


@needs_make
def test_vertex_train_target_runs_a_launch_the_launcher_accepts():
    result = make_dry_run(VERTEX / "Makefile", "train", "PROJECT=p", "BUCKET=b", "RUN=r", "PRESET=a100x4",
                          "REPLICA_COUNT=2", "TRAINER_FLAGS=--batch_size=64")

    assert result.returncode == 0, result.stderr
    command = shlex.split(result.stdout.replace("\\\n", " "))
    request = request_for(command[command.index("infra.vertex.launch") + 1:])
    assert request.base_output_dir == "gs://b/models/r"
    assert [spec["replica_count"] for spec in request.worker_pool_specs] == [1, 1]
    assert request.worker_pool_specs[0]["machine_spec"]["machine_type"] == "a2-highgpu-4g"
    assert request.worker_pool_specs[0]["container_spec"] == {
        "image_uri": "us-central1-docker.pkg.dev/p/cxr/cxr-trainer:t",
        "args": ["--data_dir=gs://b/tfrecords/r", "--batch_size=64"]}


# Image pins -----------------------------------------------------------------------------------

def setup_py_pins() -> tuple[dict[str, Requirement], SpecifierSet]:
    """REQUIRED_PACKAGES and python_requires, read from setup.py without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    [packages] = [ast.literal_eval(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                  and any(getattr(target, "id", None) == "REQUIRED_PACKAGES" for target in node.targets)]
    [python_requires] = [ast.literal_eval(keyword.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                         for keyword in node.keywords if keyword.arg == "python_requires"]
    requirements = {Requirement(package).name: Requirement(package) for package in packages}
    return requirements, SpecifierSet(python_requires)


def setup_py_production_packages() -> tuple[str, ...]:
    """PRODUCTION_PACKAGES, read from setup.py without running it: what `pip install .` must find."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    [packages] = [ast.literal_eval(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                  and any(getattr(target, "id", None) == "PRODUCTION_PACKAGES" for target in node.targets)]
    return packages


def copied_packages(dockerfile: str) -> set[str]:
    """The repository folders a Dockerfile copies into its image (`COPY name ./name`)."""
    return set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, re.MULTILINE))


@pytest.mark.parametrize("image", [DATAFLOW, VERTEX], ids=["dataflow", "vertex"])
def test_each_image_copies_every_production_package(image):
    # `pip install .` installs what find_packages sees in the build context: a package left out of
    # the COPY lines builds fine and fails at the first import of it on a worker.
    packages = set(setup_py_production_packages())
    assert {"cxr_core", "serving", "beam_pipelines", "trainer"} <= packages
    assert copied_packages((image / "Dockerfile").read_text()) == packages


def test_a_dockerfile_missing_a_package_is_seen():
    dockerfile = "COPY setup.py ./\nCOPY trainer ./trainer\nCOPY serving ./serving\nCOPY --from=x /a /a\n"
    assert copied_packages(dockerfile) == {"trainer", "serving"}


def test_dataflow_image_matches_the_pinned_beam_and_python():
    requirements, python = setup_py_pins()
    dockerfile = (DATAFLOW / "Dockerfile").read_text()

    major, minor, beam_version = re.search(
        r"^FROM apache/beam_python(\d)\.(\d+)_sdk:(\S+)$", dockerfile, re.MULTILINE).groups()
    assert beam_version == "2.77.0" and requirements["apache-beam"].specifier.contains(beam_version)
    assert python.contains(f"{major}.{minor}")
    assert re.search(rf"python{major}{minor}-template-launcher-base", dockerfile)


def test_vertex_image_matches_the_pinned_tensorflow_and_python():
    requirements, python = setup_py_pins()
    dockerfile = (VERTEX / "Dockerfile").read_text()

    tf_version = re.search(r"^FROM tensorflow/tensorflow:(\S+)-gpu$", dockerfile, re.MULTILINE).group(1)
    assert tf_version == "2.21.0" and requirements["tensorflow"].specifier.contains(tf_version)
    major, minor = re.search(r"assert v == \((\d+), (\d+)\)", dockerfile).groups()
    assert python.contains(f"{major}.{minor}")
    assert 'ENTRYPOINT ["python3", "-m", "trainer.task"]' in dockerfile
