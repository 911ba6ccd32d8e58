"""A trained model's evaluation, with what a clinician needs to trust it; also external validation.

`evaluate` scores sets of labelled images (`trainer.evaluation.evaluation_set`) and writes,
into one directory: the figures per class with their intervals, overall and within each
source, the confusion matrix and ROC figures (`trainer.evaluation.report`); calibration
before and after the model's temperature with reliability diagrams
(`trainer.evaluation.calibration`); the figures within each view, sex and age band
(`trainer.evaluation.subgroups`); the shortcut audit (`trainer.evaluation.shortcut_audit`)
on the audited set; and a failure gallery per set (`trainer.evaluation.gallery`). Its
printed report opens with the audit's warnings.

    python -m trainer.evaluate --model_dir JOB_DIR_OR_EXPORT \\
        (--data_dir RECORDS [--splits train,val,test] | --csv LABELS.csv) --output_dir OUT [--name external]

scores an exported model on a dataset it never saw, without retraining: the preprocess
job's records (the originals of the listed splits, pooled), or raw images listed in a CSV
with the preprocess job's columns, decoded as serving decodes them. The model keeps its
own test-time zooms, decision rule and temperature (its contract, `serving.model_store`); nothing is fitted
on the external data. The report names the model, the data and where each came from, and
OUT gets a MODEL_CARD.md of the model with these results. The Keras model the trainer
saves next to its export (model.keras) gives the pooled features and Grad-CAM.
"""

import argparse
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from cxr_core import contract
from cxr_core.decision_rule import DecisionRule
from serving import features, gradcam, model_store, test_time_augmentation
from trainer import input_pipeline
from trainer import model as model_lib
from trainer.evaluation import (calibration, calibration_plot, evaluation_set, gallery, intervals, model_card,
                                pixel_baseline, report, shortcut_audit, subgroups, triage)
from trainer.evaluation.evaluation_set import EvaluationSet
from trainer.evaluation.metrics import (UNCORRECTED_ARGMAX, ClassificationMetrics, SplitMetrics, SplitPredictions,
                                        classification_metrics)

PROG = "python -m trainer.evaluate"
BATCH_SIZE = 64
CALIBRATION_FILE = "calibration.json"
RELIABILITY_FILE = "reliability.png"
SUBGROUPS_FILE = "subgroups.json"
AUDIT_FILE = "shortcut_audit.json"
OPERATING_POINT_FILE = "operating_point.json"
REPORT_FILE = "report.txt"


def gallery_file(name: str) -> str:
    return f"errors_{name}.png"


@dataclasses.dataclass(frozen=True)
class ScoredSet:
    """A set's images with the network's own probabilities [N, classes] and pooled features [N, D]."""

    data: EvaluationSet
    model_probabilities: np.ndarray
    pooled_features: np.ndarray

    def predictions(self, temperature: float) -> SplitPredictions:
        """The probabilities the decision rule and the report read: the model's at `temperature`."""
        probabilities = (self.model_probabilities if temperature == 1.0
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
    floor_checks: list[triage.FloorCheck]
    text: str


def score(model: keras.Model, data: EvaluationSet, test_time_zooms: Sequence[float] = (),
          batch_size: int = BATCH_SIZE) -> ScoredSet:
    """Runs the model over the set's pixels: its probabilities, averaged over the image and `test_time_zooms`
    as the export averages them, and the pooled features of the image alone."""
    pooled_features = keras.Model(model.inputs, model.get_layer(model_lib.POOLED_FEATURES_LAYER).output)
    size = data.pixels.shape[1]

    def infer(pixels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        inputs = features.model_input(pixels[..., tf.newaxis])
        return (test_time_augmentation.averaged_probabilities(model, inputs, test_time_zooms),
                pooled_features(inputs, training=False))

    infer = tf.function(infer, input_signature=[tf.TensorSpec([None, size, size], tf.uint8)])
    probabilities, pooled = [], []
    for start in range(0, len(data), batch_size):
        batch_probabilities, batch_pooled = infer(tf.constant(data.pixels[start:start + batch_size]))
        probabilities.append(np.asarray(batch_probabilities, dtype=np.float32))
        pooled.append(np.asarray(batch_pooled, dtype=np.float32))
    return ScoredSet(data, np.concatenate(probabilities), np.concatenate(pooled))


def fit_pixel_baseline(train_shards: list[str], image_size: int, val: EvaluationSet) -> pixel_baseline.PixelBaseline:
    """The pixel baseline fitted on the train split's originals, its regularisation chosen on val."""
    thumbnails, labels = [], []
    for pixels, batch_labels in evaluation_set.record_pixel_batches(train_shards, image_size):
        thumbnails.append(pixel_baseline.thumbnails(pixels))
        labels.append(batch_labels)
    return pixel_baseline.fit(np.concatenate(thumbnails), np.concatenate(labels),
                              pixel_baseline.thumbnails(val.pixels), val.labels)


def evaluate(model: keras.Model, sets: Mapping[str, ScoredSet], rule: DecisionRule | None, temperature: float,
             eval_dir: str, *, source_table: shortcut_audit.SourceTable | None, audited_set: str,
             floors: Mapping[str, float], floor_set: str, baseline: pixel_baseline.PixelBaseline | None = None,
             heading: str = "", resamples: int = intervals.BOOTSTRAP_RESAMPLES) -> Evaluation:
    """Scores every set under `rule` at `temperature`, audits `audited_set`, writes the eval dir's files.

    `source_table` is the training data's (None: counted from the audited set's records);
    the sensitivity `floors` are checked on `floor_set` (val, which chose the rule, or an
    external set); `baseline`, when fitted, is scored on every set beside the model.
    `heading` opens the printed report (report.txt).
    """
    predictions = {name: scored.predictions(temperature) for name, scored in sets.items()}
    metrics = report.write_report(eval_dir, predictions, rule, resamples)
    at_argmax = {name: classification_metrics(split.labels, split.probabilities, split.patients, resamples=0)
                 for name, split in predictions.items()}
    checks = triage.check_floors(metrics[floor_set].overall, floors, floor_set)
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
        baseline=baseline and shortcut_audit.baseline_comparison(
            baseline, {name: pixel_baseline.thumbnails(scored.data.pixels) for name, scored in sets.items()},
            predictions, metrics, resamples))
    for name, scored in sets.items():
        gallery.write_gallery(os.path.join(eval_dir, gallery_file(name)), f"{name}: the most confident errors",
                              scored.data.pixels, heat_maps[name], scored.data.labels, predicted[name], served[name])
    _write_results(eval_dir, rule, temperature, calibrations, checks, at_argmax, by_subgroup, audit, audited_set)
    text = "\n\n".join([
        *([heading] if heading else []),
        shortcut_audit.format_warnings(audit),
        triage.format_floor_warnings(checks),
        report.format_table(metrics),
        format_calibration(calibrations, temperature),
        triage.format_operating_points({name: split.overall for name, split in metrics.items()}, at_argmax, checks),
        *(subgroups.format_subgroups(by_attribute, name) for name, by_attribute in by_subgroup.items()),
        shortcut_audit.format_checks(audit, audited_set),
    ])
    with tf.io.gfile.GFile(os.path.join(eval_dir, REPORT_FILE), "w") as output:
        output.write(text + "\n")
    return Evaluation(metrics, calibrations, by_subgroup, audit, audited_set, checks, text)


def format_calibration(calibrations: Mapping[str, tuple[calibration.Calibration, calibration.Calibration]],
                       temperature: float) -> str:
    """One line per set: ECE and Brier score, before and after the temperature."""
    lines = [f"Calibration, before -> after temperature scaling (T = {temperature:.3f}, fitted on val); "
             f"ECE: top class, {calibration.ECE_BINS} equal-width bins; Brier: 0 to 2; 0 is perfect for both"]
    for name, (before, after) in calibrations.items():
        lines.append(f"{name:<9} ECE {before.ece.text(3, '-')} -> {after.ece.text(3, '-')}, "
                     f"Brier {before.brier.text(3, '-')} -> {after.brier.text(3, '-')}")
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
    rule = model_contract.decision_rule
    training = model_contract.training_config.get("config", {})
    training_data = training.get("data_dir")
    heading = "\n".join([
        f"EXTERNAL EVALUATION of the model in {loaded.export_dir}",
        f"model: trained on {training_data or 'data not recorded'}; temperature {model_contract.temperature:.3f}; "
        f"decision rule: {rule.describe() if rule else UNCORRECTED_ARGMAX}; "
        f"{test_time_augmentation.describe(model_contract.test_time_zooms)}",
        f"data ({args.name}): {data.provenance}",
        f"nothing was fitted on these data; outputs in {args.output_dir}"])
    scored = score(model, data, model_contract.test_time_zooms)
    evaluation = evaluate(model, {args.name: scored}, rule, model_contract.temperature, args.output_dir,
                          source_table=source_table, audited_set=args.name,
                          floors=triage.parse_min_sensitivity(training.get("min_sensitivity", "")),
                          floor_set=args.name, heading=heading)
    card = model_card.model_card(model_card.ModelCardInputs(
        model=loaded.export_dir, run_description=model_contract.training_config,
        manifest=shortcut_audit.read_manifest(training_data) if training_data else None,
        metrics=evaluation.metrics, calibration=evaluation.calibration, temperature=model_contract.temperature,
        rule=rule, rule_reason="the model's own rule, chosen on its val split when it was trained and applied "
                               "unchanged here. " + triage.rule_reason(rule.spec if rule else "argmax"),
        audit=evaluation.audit, audited_set=args.name, subgroups=evaluation.subgroups,
        external_provenance={args.name: data.provenance}, floor_checks=evaluation.floor_checks))
    with tf.io.gfile.GFile(os.path.join(args.output_dir, model_card.FILE_NAME), "w") as output:
        output.write(card)
    print(evaluation.text, flush=True)
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


def _write_results(eval_dir: str, rule: DecisionRule | None, temperature: float,
                   calibrations: Mapping[str, tuple[calibration.Calibration, calibration.Calibration]],
                   checks: list[triage.FloorCheck], at_argmax: Mapping[str, ClassificationMetrics],
                   by_subgroup: Mapping[str, dict], audit: shortcut_audit.ShortcutAudit, audited_set: str) -> None:
    """The eval dir's files beside those of `report.write_report` (docs/trainer.md lists them)."""
    _write_json(os.path.join(eval_dir, CALIBRATION_FILE), {
        "temperature": temperature,
        **{name: {"before": before.to_json(), "after": after.to_json()}
           for name, (before, after) in calibrations.items()}})
    _write_json(os.path.join(eval_dir, OPERATING_POINT_FILE), {
        "decision_rule": rule.describe() if rule else UNCORRECTED_ARGMAX,
        "floors": [{"class": check.class_name, "floor": check.floor, "set": check.set_name,
                    "sensitivity": check.sensitivity.value, "interval": check.sensitivity.interval_json(),
                    "met": not check.below, "shown": check.shown} for check in checks],
        "at_argmax": {name: figures.to_json() for name, figures in at_argmax.items()}})
    _write_json(os.path.join(eval_dir, SUBGROUPS_FILE), {
        name: {attribute: {value: group.to_json() for value, group in groups.items()}
               for attribute, groups in by_attribute.items()} for name, by_attribute in by_subgroup.items()})
    _write_json(os.path.join(eval_dir, AUDIT_FILE), {"audited_set": audited_set, **audit.to_json()})
    with tf.io.gfile.GFile(os.path.join(eval_dir, RELIABILITY_FILE), "wb") as output:
        output.write(calibration_plot.reliability_diagrams({
            f"{name} {state}": (figures.reliability, f"ECE {figures.ece.text(3, '-')}")
            for name, pair in calibrations.items() for state, figures in zip(("before T", "after T"), pair)}))


def _write_json(path: str, content: dict) -> None:
    with tf.io.gfile.GFile(path, "w") as output:
        json.dump(content, output, indent=2)


if __name__ == "__main__":
    run()
