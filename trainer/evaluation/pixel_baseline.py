"""A trivial baseline scored beside the model: logistic regression on tiny standardised thumbnails.

Each original image becomes a 32×32 thumbnail (area-averaged), standardised to zero mean
and unit variance on its own, so the baseline sees the global layout of brightness in
the image and nothing of how a source windowed it. A multinomial logistic regression
(scikit-learn, classes weighted to balance, as the model's training mix is) is fitted on
the train split's originals, its regularisation chosen on val by macro ROC-AUC, and
scored on val and test like the model. A deep model that does not beat it has learnt no
more than that layout; on the real NIH images such a baseline reaches pneumonia vs
normal ROC-AUC about 0.8 (BENCHMARKS.md).
"""

import dataclasses
from collections.abc import Iterable

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from cxr_core import contract

THUMBNAIL_SIZE = 32
REGULARISATION_GRID = (1e-3, 1e-2, 1e-1)  # scikit-learn's C: smaller is stronger.
MAX_ITERATIONS = 2000


def thumbnails(pixels: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """uint8 gray images [N, H, W] or [N, H, W, 1] → float32 [N, size²], each row standardised on its own."""
    images = np.asarray(pixels)
    if images.ndim == 4:
        images = images[..., 0]
    # Averaged in float (PIL mode F), so no rounding depends on the image's window.
    rows = np.stack([np.asarray(Image.fromarray(image.astype(np.float32)).resize((size, size), Image.BOX)).ravel()
                     for image in images]) if len(images) else np.zeros((0, size * size), np.float32)
    centred = rows - rows.mean(axis=1, keepdims=True)
    return centred / np.maximum(centred.std(axis=1, keepdims=True), 1e-6)


def thumbnails_of_batches(batches: Iterable[np.ndarray]) -> np.ndarray:
    """`thumbnails` of a stream of pixel batches, so the full-size images never stand in memory together."""
    parts = [thumbnails(batch) for batch in batches]
    return np.concatenate(parts) if parts else np.zeros((0, THUMBNAIL_SIZE ** 2), np.float32)


@dataclasses.dataclass(frozen=True)
class PixelBaseline:
    """The fitted classifier and the regularisation val chose for it."""

    classifier: LogisticRegression
    regularisation: float

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """[N, NUM_CLASSES] in contract order; a class absent from train gets probability 0."""
        result = np.zeros((len(features), contract.NUM_CLASSES))
        result[:, self.classifier.classes_] = self.classifier.predict_proba(features)
        return result


def fit(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
        val_labels: np.ndarray) -> PixelBaseline:
    """The baseline whose regularisation scores the best macro ROC-AUC on val (the first on a tie)."""
    best = None
    for regularisation in REGULARISATION_GRID:
        classifier = LogisticRegression(C=regularisation, class_weight="balanced", max_iter=MAX_ITERATIONS)
        baseline = PixelBaseline(classifier.fit(train_features, train_labels), regularisation)
        score = macro_roc_auc(val_labels, baseline.probabilities(val_features))
        if best is None or score > best[0]:
            best = (score, baseline)
    return best[1]


def macro_roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean one-vs-rest ROC-AUC over the classes that are present and absent somewhere in `labels`; -inf if none."""
    scores = [roc_auc_score(labels == index, probabilities[:, index]) for index in range(contract.NUM_CLASSES)
              if 0 < np.sum(labels == index) < len(labels)]
    return float(np.mean(scores)) if scores else -np.inf
