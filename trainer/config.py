"""The trainer's configuration: each setting written once, with its default, help and limits.

`TrainConfig` is everything one run needs and what `config.json` records; `RuntimeConfig`
is how the process maps onto devices. A field made with `setting()` is a flag of
`python -m trainer.task`, which generates its absl flags from `settings()` (type from the
annotation, default, help, bounds, choices, check) and builds the configs back from the
parsed values, as tensorflow/models official/ derives its flags and its experiment config
from one definition.

A setting whose best value depends on the run (the hardware, `weights`) defaults to None
and is filled in when the config is built (`automatic`), so code, flags and `config.json`
all see the value the run uses.
"""

import dataclasses
import os
import types
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from cxr_core import contract, decision_rule
from serving import test_time_augmentation
from trainer import model, optimization
from trainer.evaluation import triage

Check = Callable[[Any], object]  # Raises ValueError, whose message says what the value must be.


@dataclasses.dataclass(frozen=True)
class Setting:
    """One flag as a config field declares it."""

    name: str
    value_type: type
    default: Any
    help: str
    lower_bound: float | None = None
    upper_bound: float | None = None
    choices: tuple[str, ...] | None = None
    check: Check | None = None
    required: bool = False


def setting(help: str, default: Any = dataclasses.MISSING, *, lower_bound: float | None = None,
            upper_bound: float | None = None, choices: tuple[str, ...] | None = None, check: Check | None = None,
            automatic: Callable[["TrainConfig"], Any] | None = None, environment: str | None = None,
            required: bool = False) -> Any:
    """A config field that is also a flag.

    Args:
      help: the flag's help.
      default: the field's and the flag's default; none makes the field required.
      lower_bound, upper_bound: the flag's bounds (numbers only).
      choices: the values an enum flag accepts.
      check: refuses other values with a ValueError.
      automatic: the value used when the field is None, computed from the rest of the config.
      environment: an environment variable whose value is the flag's default.
      required: the flag must be given.
    """
    metadata = {"help": help, "lower_bound": lower_bound, "upper_bound": upper_bound, "choices": choices,
                "check": check, "automatic": automatic, "environment": environment, "required": required}
    return dataclasses.field(default=default, metadata=metadata)


def settings(config_class: type) -> list[Setting]:
    """The flags of `config_class`, in field order; a flag's default is read from the environment now."""
    found = []
    for field in dataclasses.fields(config_class):
        if "help" not in field.metadata:
            continue
        meta = field.metadata
        if field.default is not dataclasses.MISSING:
            default = field.default
        else:
            default = os.environ.get(meta["environment"]) if meta["environment"] else None
        found.append(Setting(field.name, _value_type(field.type), default, meta["help"], meta["lower_bound"],
                             meta["upper_bound"], meta["choices"], meta["check"], meta["required"]))
    return found


def _value_type(annotation: Any) -> type:
    """`int` for `int` and for `int | None`."""
    if isinstance(annotation, types.UnionType):
        (value_type,) = [member for member in annotation.__args__ if member is not type(None)]
        return value_type
    return annotation


def _positive(value: float) -> None:
    if not value > 0:
        raise ValueError("must be positive")


def _initial_weights(value: str) -> None:
    if not (value.lower() in ("imagenet", "none") or tf.io.gfile.exists(value)):
        raise ValueError("must be imagenet, none, or an existing weights file")


def _precision(value: str) -> None:
    if value not in optimization.PRECISIONS:
        raise ValueError(f"must be one of {', '.join(optimization.PRECISIONS)}")


def _auxiliary_loss_weight(config: "TrainConfig") -> float:
    return model.FROM_SCRATCH_AUXILIARY_LOSS_WEIGHT if model.is_from_scratch(config.weights) else 0.0


def _head_learning_rate_scale(config: "TrainConfig") -> float:
    return model.FROM_SCRATCH_HEAD_LEARNING_RATE_SCALE if model.is_from_scratch(config.weights) else 1.0


def _gpus_present(config: "TrainConfig") -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def _hardware_precision(config: "TrainConfig") -> str:
    return optimization.default_precision()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one run needs; `trainer.task` fills it from flags and Vertex AI's environment."""

    data_dir: str = setting("Output dir of python -m beam_pipelines.preprocess (local or gs://).", required=True)
    job_dir: str = setting("Output dir for the export, model.keras, config.json, eval/ and history.json "
                           "(default: $AIP_MODEL_DIR).", environment="AIP_MODEL_DIR")
    # Not flags: trainer.task takes them from Vertex AI's environment, else puts them in job_dir.
    checkpoint_dir: str
    tensorboard_dir: str
    image_size: int = setting("Image side in pixels; must match the records.", contract.DEFAULT_IMAGE_SIZE,
                              lower_bound=contract.MIN_IMAGE_SIZE, upper_bound=contract.MAX_IMAGE_SIZE)
    batch_size: int = setting("Batch size per replica; the global batch is this × replicas.", 32, lower_bound=1)
    stage1_epochs: int = setting("Epochs training the head with ResNet50 frozen; 0 skips stage 1.", 2, lower_bound=0)
    stage2_epochs: int = setting("Epochs training the whole network; 0 skips stage 2.", 10, lower_bound=0)
    stage1_learning_rate: float = setting(
        f"Adam learning rate of stage 1 for a global batch of {optimization.REFERENCE_BATCH_SIZE}; scaled linearly "
        "with the global batch.", 1e-3, check=_positive)
    stage2_learning_rate: float = setting("Adam learning rate of stage 2, scaled like stage 1's.", 1e-5,
                                          check=_positive)
    warmup_steps: int = setting("Steps at the start of each stage over which a learning rate raised by the global "
                                "batch ramps up from the flag's value.", 100, lower_bound=0)
    learning_rate_decay: str = setting(
        "none keeps each stage's rate constant after the warm-up; cosine warms up from 0 over --warmup_steps, "
        "then decays along a half cosine to 0 at the stage's last step.", "none", choices=optimization.DECAYS)
    weights: str = setting("ResNet50 initial weights: imagenet (downloads), none, or a local/gs:// weights file.",
                           "imagenet", check=_initial_weights)
    auxiliary_loss_weight: float | None = setting(
        "Weight of the loss of a linear classifier on the pooled features, trained alongside the head and not "
        f"exported (default: {model.FROM_SCRATCH_AUXILIARY_LOSS_WEIGHT} with --weights none, else 0). A random "
        "ResNet50 learns through it while the seed head's ReLU layers would still be silencing themselves; see "
        "trainer/model.py.", None, lower_bound=0.0, automatic=_auxiliary_loss_weight)
    head_learning_rate_scale: float | None = setting(
        "The seed head's learning rate as a fraction of the stage's (default: "
        f"{model.FROM_SCRATCH_HEAD_LEARNING_RATE_SCALE} with --weights none, else 1).", None, check=_positive,
        automatic=_head_learning_rate_scale)
    class_weight: str = setting("balanced weighs the loss by inverse class frequency in the train split.", "none",
                                choices=("none", "balanced"))
    mixed_precision: str | None = setting(
        f"Compute precision: {', '.join(optimization.PRECISIONS)} (default: bfloat16 on Ampere or newer GPUs, "
        "float16 on older GPUs, none on CPUs). float16 adds loss scaling.", None, check=_precision,
        automatic=_hardware_precision)
    jit_compile: bool | None = setting("Compile each training step with XLA (default: on when GPUs are present).",
                                       None, automatic=_gpus_present)
    steps_per_epoch: int | None = setting("Cap on training steps per epoch, for smoke runs (default: one pass over "
                                          "the train split).", None, lower_bound=1)
    steps_per_loop: int = setting("Training steps per host call: the host syncs, logs, writes TensorBoard scalars "
                                  "and checks the loss and SIGTERM once per loop.", 50, lower_bound=1)
    checkpoint_every_loops: int = setting("Also checkpoint every N loops within an epoch (default 0: at epoch ends "
                                          "only).", 0, lower_bound=0)
    keep_checkpoints: int = setting("Training checkpoints kept (the best epoch's weights are kept apart).", 2,
                                    lower_bound=1)
    cache: str = setting("Keep decoded images in memory after their first pass: memory, none, or auto (when train, "
                         "then val, fit in --cache_budget_gb).", "auto", choices=("auto", "memory", "none"))
    cache_budget_gb: float = setting("Memory --cache auto may fill with decoded uint8 images, per worker.", 4.0,
                                     lower_bound=0.0)
    decision_rule: str = setting(
        "How a class is predicted, chosen on val and exported with the model: target:<class>:<sensitivity|"
        "specificity>:<value> (a threshold on that class set on val to reach the target there; the default keeps "
        "COVID-19 sensitivity, see trainer/evaluation/triage.py), or argmax (after correcting the train class mix to "
        "val's).",
        triage.DEFAULT_DECISION_RULE, check=decision_rule.parse_decision_rule)
    min_sensitivity: str = setting(
        "Sensitivity floors per class, class=value pairs (empty for none): the report opens with a warning when the "
        "decision rule's val sensitivity for a class is below its floor, or reaches it but not with its whole 95% "
        "interval.", triage.DEFAULT_MIN_SENSITIVITY,
        check=triage.parse_min_sensitivity)
    test_time_zooms: str = setting(
        "Zooms about the centre, comma-separated (e.g. 0.95,1.05; empty: the image alone), over which evaluation and "
        "the exported model average the probabilities with the image's own (test-time augmentation; "
        "serving/test_time_augmentation.py). Inference costs one pass per zoom more.", "",
        check=test_time_augmentation.parse_zooms)
    seed: int = setting("Seed for weights initialisation and input shuffling.", 42)
    deterministic: bool = setting(
        "Make a run reproducible: the training input keeps one record order under --seed and TensorFlow ops run "
        "deterministically (tf.config.experimental.enable_op_determinism), so the same data, seed and hardware give "
        "the same weights; slower (see docs/trainer.md).", False)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            automatic = field.metadata.get("automatic")
            if automatic and getattr(self, field.name) is None:
                object.__setattr__(self, field.name, automatic(self))


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How the process maps onto devices, read before TensorFlow initialises them (`distribution`).

    Not in `config.json`, which records the strategy and replicas this leads to.
    """

    cpu_replicas: int = setting("Without GPUs: split the CPU into N logical devices so MirroredStrategy runs N "
                                "replicas.", 1, lower_bound=1)
