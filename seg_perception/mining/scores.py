"""How unsure the model is about a frame: the mining score.

Three scores are offered, all from what the engine gives for every backend (torch, ONNX Runtime,
TensorRT) without a change to the network: the per-pixel confidence (the largest softmax
probability, 8 bits) and the labels.

* ``least_confidence`` (default): the mean over the frame's pixels of ``1 - max softmax
  probability``. One forward pass, no threshold to tune, and a frame scores high when much of it
  is uncertain, not when a few boundary pixels are (every segmentation has uncertain boundaries).
  It is computed from the 8-bit confidence as an exact integer sum, so it is the same number in
  every process and on every worker, and the ranking (with its tie-break) is reproducible.
* ``low_confidence_area``: the fraction of pixels whose max probability is below 0.5. It ignores
  *how* unsure a pixel is, so it saturates on a frame the model gets wholly wrong.
* ``flip_disagreement``: the fraction of pixels whose label changes when the frame is mirrored
  (test-time augmentation disagreement). It needs a second forward pass per frame, and it sees
  only what mirroring changes: a model that is consistently wrong (e.g. in the dark) agrees with
  itself.

Entropy and margin (top-1 minus top-2) would need every class's probability on the host: a
19-channel download per frame that no serving backend provides; the max probability carries most of
that information for a well-trained model. How well each score finds the frames the model gets
wrong on shifted drives is measured in docs/TRAINING.md (mining study): none of them sees a frame
the model gets wrong with confidence (there, fog), and on that pool none ranked the frames by their
true error better than the others, so the default stayed the simplest exact one.
"""

from __future__ import annotations

import numpy as np

SCORES = ("least_confidence", "low_confidence_area", "flip_disagreement")
DEFAULT_SCORE = "least_confidence"
#: ``low_confidence_area`` counts pixels whose max probability is below this.
LOW_CONFIDENCE = 0.5


def check_score(kind: str) -> None:
    if kind not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {str(kind)[:40]!r}")


def needs_flip(kind: str) -> bool:
    """Whether the score needs the labels of the mirrored frame (a second forward pass)."""
    return kind == "flip_disagreement"


def least_confidence(confidence: np.ndarray) -> float:
    """Mean of ``1 - p_max`` over the frame, from the engine's uint8 confidence (``p_max * 255``)."""
    total = int(confidence.sum(dtype=np.int64))
    return 1.0 - total / (255.0 * confidence.size)


def low_confidence_area(confidence: np.ndarray, threshold: float = LOW_CONFIDENCE) -> float:
    """Fraction of pixels whose max probability is below ``threshold``."""
    return int(np.count_nonzero(confidence < round(threshold * 255))) / confidence.size


def flip_disagreement(labels: np.ndarray, mirrored_labels: np.ndarray) -> float:
    """Fraction of pixels whose label differs from the mirrored frame's label, mirrored back."""
    return int(np.count_nonzero(labels != mirrored_labels[:, ::-1])) / labels.size


def frame_score(kind: str, confidence: np.ndarray, labels: np.ndarray,
                mirrored_labels: np.ndarray | None = None) -> float:
    """The ``kind`` score of one frame (higher: the model is less sure)."""
    if kind == "least_confidence":
        return least_confidence(confidence)
    if kind == "low_confidence_area":
        return low_confidence_area(confidence)
    if kind == "flip_disagreement":
        if mirrored_labels is None:
            raise ValueError("flip_disagreement needs the labels of the mirrored frame")
        return flip_disagreement(labels, mirrored_labels)
    check_score(kind)
    raise AssertionError(kind)
