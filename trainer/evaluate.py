"""A trained model's evaluation, with what a clinician needs to trust it; also external validation.

`evaluate` scores sets of labelled images (`trainer.evaluation_set`) and writes, into one
directory: the figures per class with their intervals, overall and within each source, the
confusion matrix and ROC figures (`trainer.report`); calibration before and after the
model's temperature with reliability diagrams (`trainer.calibration`); the figures within
each view, sex and age band (`trainer.subgroups`); the shortcut audit (`trainer.shortcut_audit`)
on the audited set; and a failure gallery per set (`trainer.gallery`). Its printed report
opens with the audit's warnings.

    python -m trainer.evaluate --model_dir JOB_DIR_OR_EXPORT \\
        (--data_dir RECORDS [--splits train,val,test] | --csv LABELS.csv) --output_dir OUT [--name external]

scores an exported model on a dataset it never saw, without retraining: the preprocess
job's records (the originals of the listed splits, pooled), or raw images listed in a CSV
with the preprocess job's columns, decoded as serving decodes them. The model keeps its
own decision rule and temperature (its contract, `serving.model_store`); nothing is fitted
on the external data. The report names the model, the data and where each came from, and
OUT gets a MODEL_CARD.md of the model with these results. The Keras model the trainer
saves next to its export (model.keras) gives the pooled features and Grad-CAM.
"""

import argparse
import dataclasses
import json
import os
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from cxr_core import contract
from cxr_core.decision_rule import DecisionRule
from serving import features, gradcam, model_store
from trainer import (calibration, calibration_plot, evaluation_set, gallery, input_pipeline, intervals, model_card,
                     report, shortcut_audit, subgroups)
from trainer import model as model_lib
from trainer.evaluation_set import EvaluationSet
from trainer.metrics import SplitMetrics, SplitPredictions

PROG = "python -m trainer.evaluate"
BATCH_SIZE = 64
CALIBRATION_FILE = "calibration.json"
RELIABILITY_FILE = "reliability.png"
SUBGROUPS_FILE = "subgroups.json"
AUDIT_FILE = "shortcut_audit.json"
REPORT_FILE = "report.txt"


def gallery_file(name: str) -> str:
    return f"errors_{name}.png"


@dataclasses.dataclass(frozen=True)
class ScoredSet:
    """A set's images with the network's own probabilities [N, classes] and pooled features [N, D]."""

    data: EvaluationSet
    model_probabilities: np.ndarray
    pooled_features: np.ndarray

    def predictions(self, temperature: float | None) -> SplitPredictions:
        """The probabilities the decision rule and the report read: at the model's temperature, if it has one."""
        probabilities = (self.model_probabilities if temperature is None
                         else calibration.apply_temperature(self.model_probabilities, temperature))
        return SplitPredictions(self.data.labels, probabilities, self.data.sources, self.data.patients)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Everything `evaluate` computed, and its printed report."""

    metrics: dict[str, SplitMetrics]
    calibration: dict[str, tuple[calibration.Calibration, calibration.Calibration]]  # (before, after)
    subgroups: dict[str, dict]
    audit: shortcut_audit.ShortcutAudit
    audited_set: str
    text: str


def score(model: keras.Model, data: EvaluationSet, batch_size: int = BATCH_SIZE) -> ScoredSet:
    """Runs the model over the set's pixels: its probabilities and its pooled features."""
    outputs = keras.Model(model.inputs, [model.output, model.get_layer(model_lib.POOLED_FEATURES_LAYER).output])
    size = data.pixels.shape[1]
    infer = tf.function(lambda pixels: outputs(features.model_input(pixels[..., tf.newaxis]), training=False),
                        input_signature=[tf.TensorSpec([None, size, size], tf.uint8)])
    probabilities, pooled = [], []
    for start in range(0, len(data), batch_size):
        batch_probabilities, batch_pooled = infer(tf.constant(data.pixels[start:start + batch_size]))
        probabilities.append(np.asarray(batch_probabilities, dtype=np.float32))
        pooled.append(np.asarray(batch_pooled, dtype=np.float32))
    return ScoredSet(data, np.concatenate(probabilities), np.concatenate(pooled))


def evaluate(model: keras.Model, sets: Mapping[str, ScoredSet], rule: DecisionRule | None, temperature: float | None,
             eval_dir: str, source_table: shortcut_audit.SourceTable | None, audited_set: str,
             baseline: shortcut_audit.BaselineComparison | None = None,
             resamples: int = intervals.BOOTSTRAP_RESAMPLES) -> Evaluation:
    """Scores every set under `rule` at `temperature`, audits `audited_set`, writes the eval dir's files.

    `source_table` is the training data's (None: counted from the audited set's records);
    `baseline` the pixel baseline's comparison, when one was fitted.
    """
    predictions = {name: scored.predictions(temperature) for name, scored in sets.items()}
    metrics = report.write_report(eval_dir, predictions, rule, resamples)
    calibrations = {name: (calibration.calibration(scored.data.labels, scored.model_probabilities,
                                                   scored.data.patients, resamples),
                           calibration.calibration(scored.data.labels, predictions[name].probabilities,
                                                   scored.data.patients, resamples))
                    for name, scored in sets.items()}
    by_subgroup = {name: subgroups.subgroup_metrics(scored.data.labels, predictions[name].probabilities,
                                                    scored.data.patients, scored.data.attributes, rule, resamples)
                   for name, scored in sets.items()}
    predicted = {name: rule.apply(split.probabilities) if rule else np.argmax(split.probabilities, axis=1)
                 for name, split in predictions.items()}
    served = {name: rule.adjusted(split.probabilities) if rule else split.probabilities
              for name, split in predictions.items()}
    grad_cam = gradcam.GradCam(model)
    heat_maps = {name: grad_cam.heat_maps(scored.data.pixels, predicted[name]) for name, scored in sets.items()}
    audited = sets[audited_set].data
    audit = shortcut_audit.ShortcutAudit(
        source_table=source_table or shortcut_audit.source_table_from_records(
            audited.labels, audited.sources, f"{audited_set} records"),
        probe=shortcut_audit.source_probe(sets[audited_set].pooled_features, audited.sources, audited.patients,
                                          audited.labels),
        central_share=shortcut_audit.central_share_by_class(heat_maps[audited_set], predicted[audited_set]),
        baseline=baseline)
    for name, scored in sets.items():
        gallery.write_gallery(os.path.join(eval_dir, gallery_file(name)), f"{name}: the most confident errors",
                              scored.data.pixels, heat_maps[name], scored.data.labels, predicted[name], served[name])
    _write_json(os.path.join(eval_dir, CALIBRATION_FILE), {
        "temperature": temperature,
        **{name: {"before": before.to_json(), "after": after.to_json()} for name, (before, after) in calibrations.items()}})
    _write_json(os.path.join(eval_dir, SUBGROUPS_FILE), {
        name: {attribute: {value: group.to_json() for value, group in groups.items()}
               for attribute, groups in by_attribute.items()} for name, by_attribute in by_subgroup.items()})
    _write_json(os.path.join(eval_dir, AUDIT_FILE), {"audited_set": audited_set, **audit.to_json()})
    with tf.io.gfile.GFile(os.path.join(eval_dir, RELIABILITY_FILE), "wb") as output:
        output.write(calibration_plot.reliability_diagrams({
            f"{name} {state}": (figures.reliability, f"ECE {_estimate_text(figures.ece)}")
            for name, pair in calibrations.items()
            for state, figures in zip(("before", "after T"), pair) if temperature is not None or state == "before"}))
    text = "\n\n".join([
        shortcut_audit.format_warnings(audit),
        report.format_table(metrics),
        format_calibration(calibrations, temperature),
        *(subgroups.format_subgroups(by_attribute, name) for name, by_attribute in by_subgroup.items()),
        shortcut_audit.format_checks(audit, audited_set),
    ])
    return Evaluation(metrics, calibrations, by_subgroup, audit, audited_set, text)


def format_calibration(calibrations: Mapping[str, tuple[calibration.Calibration, calibration.Calibration]],
                       temperature: float | None) -> str:
    """One line per set: ECE and Brier score, before and after the temperature."""
    if temperature is None:
        lines = ["Calibration (no temperature: the model's own probabilities); ECE: top class, "
                 f"{calibration.ECE_BINS} bins, 0 is perfect"]
    else:
        lines = [f"Calibration, before -> after temperature scaling (T = {temperature:.3f}, fitted on val); ECE: top "
                 f"class, {calibration.ECE_BINS} bins, 0 is perfect"]
    for name, (before, after) in calibrations.items():
        if temperature is None:
            lines.append(f"{name:<9} ECE {_estimate_text(before.ece)}, Brier {_estimate_text(before.brier)}")
        else:
            lines.append(f"{name:<9} ECE {_estimate_text(before.ece)} -> {_estimate_text(after.ece)}, "
                         f"Brier {_estimate_text(before.brier)} -> {_estimate_text(after.brier)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True, help="The trainer's --job_dir, or its export/ folder.")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data_dir", help="Output dir of python -m beam_pipelines.preprocess (local or gs://).")
    data.add_argument("--csv", help="A CSV of image_uri,label,patient_id[,view,source] (uris relative to it).")
    parser.add_argument("--splits", default=",".join(contract.SPLITS),
                        help="With --data_dir: the splits whose originals are scored, pooled (default: all).")
    parser.add_argument("--name", default="external", help="The set's name in the report (default: external).")
    parser.add_argument("--output_dir", required=True, help="Where the report, its files and MODEL_CARD.md go.")
    return parser


def run(argv: list[str] | None = None) -> Evaluation:
    """Scores the model of `--model_dir` on the data and writes the report; returns the evaluation.

    Raises:
      SystemExit: a flag, the model or the data cannot be used (one line saying why).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    splits = [split.strip() for split in args.splits.split(",") if split.strip()]
    if args.data_dir and (not splits or set(splits) - set(contract.SPLITS)):
        parser.error(f"--splits must list splits among {', '.join(contract.SPLITS)}, got {args.splits!r}")
    try:
        loaded = model_store.load(args.model_dir)
        model = gradcam.load_model(os.path.dirname(loaded.export_dir.rstrip("/")))
    except (model_store.ModelStoreError, FileNotFoundError) as error:
        raise SystemExit(f"{PROG}: {error}") from None
    model_contract = loaded.contract
    try:
        data, source_table = _read_data(args, splits, model_contract.image_size)
    except (ValueError, input_pipeline.DataError) as error:
        raise SystemExit(f"{PROG}: {error}") from None
    temperature = None
    evaluation = evaluate(model, {args.name: score(model, data)}, model_contract.decision_rule, temperature,
                          args.output_dir, source_table, args.name)
    training_data = model_contract.training_config.get("config", {}).get("data_dir")
    heading = "\n".join([
        f"EXTERNAL EVALUATION of the model in {loaded.export_dir}",
        f"model: trained on {training_data or 'data not recorded'}; decision rule: "
        f"{model_contract.decision_rule.describe() if model_contract.decision_rule else 'argmax'}",
        f"data ({args.name}): {data.provenance}",
        f"nothing was fitted on these data; outputs in {args.output_dir}"])
    text = f"{heading}\n\n{evaluation.text}\n"
    with tf.io.gfile.GFile(os.path.join(args.output_dir, REPORT_FILE), "w") as output:
        output.write(text)
    card = model_card.model_card(model_card.ModelCardInputs(
        model=loaded.export_dir, run_description=model_contract.training_config,
        manifest=shortcut_audit.read_manifest(training_data) if training_data else None,
        metrics=evaluation.metrics, calibration=evaluation.calibration, temperature=temperature,
        rule=model_contract.decision_rule,
        rule_reason="the model's own rule, chosen on its val split when it was trained; applied unchanged",
        audit=evaluation.audit, audited_set=args.name, subgroups=evaluation.subgroups,
        external_provenance={args.name: data.provenance}))
    with tf.io.gfile.GFile(os.path.join(args.output_dir, model_card.FILE_NAME), "w") as output:
        output.write(card)
    print(text, flush=True)
    return evaluation


def _read_data(args: argparse.Namespace, splits: list[str], image_size: int
               ) -> tuple[EvaluationSet, shortcut_audit.SourceTable | None]:
    if args.csv:
        data, left_out = evaluation_set.read_csv(args.name, args.csv, image_size)
        if left_out:
            data = dataclasses.replace(data, provenance=f"{data.provenance}; rows left out: {left_out}")
        return data, None
    if not tf.io.gfile.isdir(args.data_dir):
        raise ValueError(f"data dir {args.data_dir} does not exist")
    shards = [shard for split in splits for shard in input_pipeline.list_shards(args.data_dir, split)]
    if not shards:
        raise ValueError(f"{args.data_dir} holds no shards of the splits {', '.join(splits)}")
    manifest = shortcut_audit.read_manifest(args.data_dir)
    created = f", preprocessed {manifest['created']}" if manifest and "created" in manifest else ""
    data = evaluation_set.read_records(args.name, shards, image_size,
                                       f"originals of the {'+'.join(splits)} records in {args.data_dir}{created}")
    return data, shortcut_audit.source_table_from_manifest(manifest)


def _write_json(path: str, content: dict) -> None:
    with tf.io.gfile.GFile(path, "w") as output:
        json.dump(content, output, indent=2)


def _estimate_text(estimate) -> str:
    if estimate.value is None:
        return "n/a"
    if estimate.interval is None:
        return f"{estimate.value:.3f}"
    return f"{estimate.value:.3f} [{estimate.interval[0]:.3f}-{estimate.interval[1]:.3f}]"


if __name__ == "__main__":
    run()
