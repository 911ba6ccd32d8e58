"""The shortcut audit: four checks of whether the model reads the source instead of the lungs.

Published COVID-19 radiograph classifiers learnt which collection an image came from
(hospital, scanner, journal figure) and lost their accuracy on other hospitals' images
(DeGrave, Janizek and Lee, Nature Machine Intelligence, 2021; Roberts et al., same
journal, 2021). Every evaluation writes these four checks beside its figures:

(a) the source × class table, from the preprocess manifest (`originals_by_source`, every
    split) or, for a data dir whose manifest lacks it, from the evaluated records, with the
    distinctions the source alone gives away (`cxr_core.confounding`, the rule the manifest's
    warnings use), flagged first: a class drawn from one source, classes that never share one;
(b) the source probe: a logistic regression on the model's pooled features
    (`trainer.model.POOLED_FEATURES_LAYER`) predicting each image's source, scored by
    ROC-AUC on held-out folds. Folds keep a patient's images together (a probe that had
    seen the patient would recognise the patient) and every source in each fold
    (scikit-learn's StratifiedGroupKFold). Near 0.5 the features do not tell the sources
    apart; near 1 they carry the source. Overall the probe also reads the class where
    classes differ by source, so it is repeated within each class that several sources hold;
(c) the share of Grad-CAM mass (`serving.gradcam`) in the central region: the image minus
    a band of `BORDER_FRACTION` of the side along each edge, where preprocessing leaves what
    is not the lungs (burnt-in text, side markers, the edge of the detector or of a journal
    figure). It is averaged over the test images predicted as each class; a map spread evenly
    puts `UNIFORM_CENTRAL_SHARE` there, and below one half a class's evidence lies mostly on
    the border (DeGrave et al. found such models' saliency outside the lungs);
(d) a trivial baseline beside the model (`trainer.evaluation.pixel_baseline`: logistic
    regression on 32×32 standardised thumbnails, fitted on train, regularisation chosen on
    val), with ROC-AUC overall and within each source: a deep model that does not beat it has
    learnt no more than the global intensity layout.

`warnings()` gives the findings a reader must see first; the printed report opens with them.
"""

import dataclasses
import json
import os
from collections.abc import Mapping

import numpy as np
import sklearn.metrics
import tensorflow as tf
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxr_core import contract
from cxr_core.confounding import Confounding, find_confounding
from trainer.evaluation import intervals, pixel_baseline
from trainer.evaluation.metrics import SplitMetrics, SplitPredictions, split_metrics

BORDER_FRACTION = 0.125
UNIFORM_CENTRAL_SHARE = (1 - 2 * BORDER_FRACTION) ** 2
FEATURE_STRIDE = 32  # ResNet50's last block is the input size / 32 a side (2x2 at 64², 4x4 at 128²).
# Below this many positions a side, an upsampled map spreads over the whole image and cannot tell
# the border band from the chest.
MIN_MAP_SIDE = 4
PROBE_FOLDS = 5
PROBE_SEED = 0
PROBE_MAX_ITERATIONS = 2000
# A probe at or above this ROC-AUC within a class reads the source from the features.
PROBE_ALARM_AUC = 0.9
# Below this central share, more of a class's Grad-CAM mass lies on the border band than on the chest.
CENTRAL_SHARE_ALARM = 0.5
MANIFEST_SOURCE_TABLE = "originals_by_source"
CELL_WIDTH = 11


@dataclasses.dataclass(frozen=True)
class SourceTable:
    """Originals per source and class, and where the counts come from."""

    counts: Mapping[str, Mapping[str, int]]  # source → class → originals, classes in contract order
    origin: str

    @property
    def confounding(self) -> Confounding:
        """The class distinctions the source alone gives away (`cxr_core.confounding`, as the manifest's warnings)."""
        return find_confounding(self.counts)

    def to_json(self) -> dict:
        return {"counts": {source: dict(classes) for source, classes in self.counts.items()}, "origin": self.origin,
                "confounding": self.confounding.to_json()}


@dataclasses.dataclass(frozen=True)
class SourceProbe:
    """Cross-validated ROC-AUC of predicting the source from the pooled features; None where no probe ran."""

    sources: tuple[str, ...]
    roc_auc: float | None
    within_class: Mapping[str, float | None]  # None: the class has one source, or too few patients.
    folds: int
    note: str  # Why there is no figure, or what it was computed on.

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"sources": list(self.sources), "within_class": dict(self.within_class)}


@dataclasses.dataclass(frozen=True)
class CentralShare:
    """Mean share of Grad-CAM mass in the central region, over the images predicted as each class."""

    mean: Mapping[str, float | None]
    images: Mapping[str, int]
    map_side: int  # Positions a side of the block Grad-CAM reads: how finely a map can place its mass.
    uniform: float = UNIFORM_CENTRAL_SHARE

    @property
    def too_coarse(self) -> bool:
        return self.map_side < MIN_MAP_SIDE

    def to_json(self) -> dict:
        return {"mean": dict(self.mean), "images": dict(self.images), "uniform": self.uniform,
                "border_fraction": BORDER_FRACTION, "map_side": self.map_side, "too_coarse": self.too_coarse}


@dataclasses.dataclass(frozen=True)
class BaselineComparison:
    """The model's and the pixel baseline's figures on the same sets (overall and per source)."""

    regularisation: float
    model: Mapping[str, SplitMetrics]
    baseline: Mapping[str, SplitMetrics]

    def to_json(self) -> dict:
        """The baseline's figures in metrics.json's structure; the model's own are in metrics.json."""
        return {"regularisation": self.regularisation,
                "metrics": {split: metrics.to_json() for split, metrics in self.baseline.items()}}


@dataclasses.dataclass(frozen=True)
class ShortcutAudit:
    """The four checks; a check that could not run is None."""

    source_table: SourceTable | None
    probe: SourceProbe | None
    central_share: CentralShare | None
    baseline: BaselineComparison | None

    def warnings(self) -> list[str]:
        """The findings that point to a shortcut, most direct first."""
        found = []
        if self.source_table:
            found += self.source_table.confounding.warnings()
        if self.probe:
            found += [f"the model's features tell the sources apart within {name} (probe ROC-AUC {auc:.2f}): "
                      "they carry the source" for name, auc in self.probe.within_class.items()
                      if auc is not None and auc >= PROBE_ALARM_AUC]
        if self.central_share:
            found += [f"Grad-CAM of the images predicted {name} lies mostly on the border (central share "
                      f"{share:.2f}, {self.central_share.uniform:.2f} if spread evenly)"
                      for name, share in self.central_share.mean.items()
                      if share is not None and share < CENTRAL_SHARE_ALARM]
        if self.baseline:
            for split, metrics in self.baseline.baseline.items():
                for where, model_auc, baseline_auc in _macro_aucs(self.baseline.model[split], metrics):
                    if model_auc is not None and baseline_auc is not None and model_auc <= baseline_auc:
                        found.append(f"on {split}{where} the model does not beat logistic regression on 32x32 "
                                     f"thumbnails (macro ROC-AUC {model_auc:.2f} vs {baseline_auc:.2f})")
        return found

    def to_json(self) -> dict:
        return {"warnings": self.warnings(),
                **{field.name: None if getattr(self, field.name) is None else getattr(self, field.name).to_json()
                   for field in dataclasses.fields(self)}}


def read_manifest(data_dir: str) -> dict | None:
    """The preprocess job's manifest.json of `data_dir` (local or gs://), or None when there is none."""
    path = os.path.join(data_dir, contract.MANIFEST_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def source_table_from_manifest(manifest: dict | None) -> SourceTable | None:
    """The manifest's originals per source × class (every split), or None when it has no such table."""
    if not manifest or MANIFEST_SOURCE_TABLE not in manifest:
        return None
    return SourceTable({source: {name: int(classes.get(name, 0)) for name in contract.CLASS_NAMES}
                        for source, classes in sorted(manifest[MANIFEST_SOURCE_TABLE].items())},
                       "preprocess manifest, originals of every split")


def source_table_from_records(labels: np.ndarray, sources: np.ndarray, origin: str) -> SourceTable:
    """Originals per source × class counted from evaluated records (`origin` says which)."""
    labels, sources = np.asarray(labels), np.asarray(sources)
    return SourceTable({source: {name: int(np.sum((sources == source) & (labels == index)))
                                 for index, name in enumerate(contract.CLASS_NAMES)}
                        for source in sorted(set(sources.tolist()))}, origin)


def source_probe(features: np.ndarray, sources: np.ndarray, patients: np.ndarray, labels: np.ndarray,
                 folds: int = PROBE_FOLDS, seed: int = PROBE_SEED) -> SourceProbe:
    """The probe on all images and within each class (see the module docstring)."""
    sources, labels = np.asarray(sources), np.asarray(labels)
    names = tuple(sorted(set(sources.tolist())))
    if len(names) < 2:
        return SourceProbe(names, None, {name: None for name in contract.CLASS_NAMES}, 0,
                           "one source: no probe")
    roc_auc, used_folds, note = _probe_auc(np.asarray(features), sources, np.asarray(patients), folds, seed)
    within = {}
    for index, name in enumerate(contract.CLASS_NAMES):
        in_class = labels == index
        within[name] = _probe_auc(np.asarray(features)[in_class], sources[in_class], np.asarray(patients)[in_class],
                                  folds, seed)[0]
    return SourceProbe(names, roc_auc, within, used_folds, note)


def central_share(heat_maps: np.ndarray, border_fraction: float = BORDER_FRACTION) -> np.ndarray:
    """[N] share of each map's mass inside the central region; NaN for an empty map."""
    heat_maps = np.asarray(heat_maps, dtype=np.float64)
    height, width = heat_maps.shape[1:3]
    rows, columns = round(height * border_fraction), round(width * border_fraction)
    total = heat_maps.sum(axis=(1, 2))
    inside = heat_maps[:, rows:height - rows, columns:width - columns].sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def central_share_by_class(heat_maps: np.ndarray, predicted: np.ndarray) -> CentralShare:
    """`central_share` averaged over the images predicted as each class (empty maps left out)."""
    shares = central_share(heat_maps)
    predicted = np.asarray(predicted)
    mean, images = {}, {}
    for index, name in enumerate(contract.CLASS_NAMES):
        defined = shares[(predicted == index) & np.isfinite(shares)]
        mean[name] = float(defined.mean()) if defined.size else None
        images[name] = int(defined.size)
    return CentralShare(mean, images, max(1, np.asarray(heat_maps).shape[1] // FEATURE_STRIDE))


def baseline_comparison(baseline: pixel_baseline.PixelBaseline, thumbnails: Mapping[str, np.ndarray],
                        predictions: Mapping[str, SplitPredictions], model_metrics: Mapping[str, SplitMetrics],
                        resamples: int = intervals.BOOTSTRAP_RESAMPLES) -> BaselineComparison:
    """The fitted baseline scored on each set of `thumbnails` beside the model's metrics of the same images."""
    return BaselineComparison(baseline.regularisation, {split: model_metrics[split] for split in thumbnails}, {
        split: split_metrics(predictions[split]._replace(probabilities=baseline.probabilities(features)),
                             resamples=resamples)
        for split, features in thumbnails.items()})


def format_audit(audit: ShortcutAudit, split: str) -> str:
    """The audit as printed: its warnings (`format_warnings`), then each check's figures (`format_checks`)."""
    return f"{format_warnings(audit)}\n\n{format_checks(audit, split)}"


def format_warnings(audit: ShortcutAudit) -> str:
    """The audit's heading and warnings: the first lines of every printed evaluation."""
    return "\n".join(["SHORTCUT AUDIT", "==============",
                      *([f"WARNING: {warning}" for warning in audit.warnings()] or ["no shortcut warning"])])


def format_checks(audit: ShortcutAudit, split: str) -> str:
    """The figures of each check that ran; `split` names the set the probe and Grad-CAM ran on."""
    lines = []
    if audit.source_table:
        lines += ["", f"(a) originals per source and class ({audit.source_table.origin}):",
                  f"{'source':<16}" + "".join(f"{name:>{CELL_WIDTH}}" for name in contract.CLASS_NAMES)]
        lines += [f"{source:<16}" + "".join(f"{classes[name]:>{CELL_WIDTH}}" for name in contract.CLASS_NAMES)
                  for source, classes in audit.source_table.counts.items()]
    if audit.probe:
        probe = audit.probe
        if probe.roc_auc is None:
            lines += ["", f"(b) source probe on {split}: {probe.note}"]
        else:
            within = ", ".join(f"{name} {_number(auc)}" for name, auc in probe.within_class.items())
            lines += ["", f"(b) source probe on {split} (logistic regression on the pooled features, {probe.folds} "
                          f"folds by patient): ROC-AUC {probe.roc_auc:.2f} overall; within {within}",
                      "    0.5: the features do not tell the sources apart; near 1: they carry the source "
                      "(n/a: one source or too few patients)"]
    if audit.central_share:
        share = audit.central_share
        cells = ", ".join(f"{name} {_number(share.mean[name])} (n={share.images[name]})" for name in share.mean)
        lines += ["", f"(c) Grad-CAM mass in the central region on {split}, by predicted class "
                      f"({share.uniform:.2f} if spread evenly): {cells}"]
        if share.too_coarse:
            lines.append(f"    the block Grad-CAM reads is {share.map_side}x{share.map_side} here: too coarse to tell "
                         f"the border from the chest; read this check at {MIN_MAP_SIDE * FEATURE_STRIDE}² or more")
    if audit.baseline:
        lines += ["", f"(d) ROC-AUC of the model against a pixel baseline (logistic regression on 32x32 thumbnails, "
                      f"C={audit.baseline.regularisation:g}):",
                  f"{'':<28}" + "".join(f"{name:>{CELL_WIDTH}}" for name in (*contract.CLASS_NAMES, "macro"))]
        for split_name, baseline in audit.baseline.baseline.items():
            model = audit.baseline.model[split_name]
            for where in ("", *(baseline.by_source if len(baseline.by_source) > 1 else ())):
                for who, metrics in (("model", model), ("baseline", baseline)):
                    scope = metrics.overall if not where else metrics.by_source[where]
                    label = f"{split_name} {where or 'overall'} {who}"
                    lines.append(f"{label:<28}" + "".join(f"{_number(value):>{CELL_WIDTH}}"
                                                          for value in _auc_row(scope)))
    return "\n".join(lines).strip("\n")


def _probe_auc(features: np.ndarray, sources: np.ndarray, patients: np.ndarray, folds: int,
               seed: int) -> tuple[float | None, int, str]:
    """(held-out ROC-AUC, folds, note); None when some source has fewer than two patients."""
    names = sorted(set(sources.tolist()))
    if len(names) < 2:
        return None, 0, "one source"
    fewest = min(len(set(patients[sources == name].tolist())) for name in names)
    if fewest < 2:
        return None, 0, "a source has fewer than two patients"
    used_folds = min(folds, fewest)
    targets = np.searchsorted(names, sources)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITERATIONS))
    splitter = StratifiedGroupKFold(n_splits=used_folds, shuffle=True, random_state=seed)
    probabilities = cross_val_predict(probe, features, targets, groups=patients, cv=splitter, method="predict_proba")
    if len(names) == 2:
        auc = sklearn.metrics.roc_auc_score(targets, probabilities[:, 1])
    else:
        auc = sklearn.metrics.roc_auc_score(targets, probabilities, multi_class="ovr", average="macro")
    return float(auc), used_folds, f"{len(targets)} images of {len(set(patients.tolist()))} patients"


def _auc_row(metrics) -> list[float | None]:
    return [figures.roc_auc.value for figures in metrics.per_class.values()] + [metrics.macro.roc_auc.value]


def _macro_aucs(model: SplitMetrics, baseline: SplitMetrics) -> list[tuple[str, float | None, float | None]]:
    """(where, model macro ROC-AUC, baseline macro ROC-AUC), overall and within each source."""
    return [("", model.overall.macro.roc_auc.value, baseline.overall.macro.roc_auc.value)] + [
        (f" within {source}", model.by_source[source].macro.roc_auc.value, scope.macro.roc_auc.value)
        for source, scope in baseline.by_source.items() if len(baseline.by_source) > 1]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
