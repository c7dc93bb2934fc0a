"""Ranking and near-duplicate suppression of scored frames.

**Order.** Frames are ranked by score, highest (least sure) first. Equal scores are broken by,
in this order: the drive's position in the list of drives (as given on the command line, a
folder's bags in path order), the camera name, the frame index (earlier first). Scores are
computed exactly (:mod:`.scores`), so the same drives give the same ranking in one process or on
any number of Ray workers.

**Near-duplicates.** Consecutive frames of a parked or slow car are one frame to a labeller. Going
down the ranking, a frame is skipped when

* it is of the same drive and camera as a frame already chosen and its header stamp is less than
  ``min_gap_s`` from that frame's (``0`` turns this off), or
* its image is too similar to any frame already chosen (any drive, any camera): the normalised
  cross-correlation of the two frames' grey 32x24 thumbnails, high-passed, is at least
  ``max_similarity`` (``1`` turns this off). The high-pass (the thumbnail minus its Gaussian blur,
  sigma 2 pixels) compares the scene's edges rather than its layout, which every road scene
  shares (sky above, road below; in fog the haze), and correlation ignores exposure. Measured on
  the sample drive (256x512, 17 Hz, 1 m a frame; clear, dusk, fog): the same scene with new sensor
  noise (a parked car) scores 0.99-1.00, frames 1 m apart 0.65-0.75 (median; at most 0.95 in fog),
  4 m apart 0.42-0.53; hence the default 0.95. Two thumbnails without structure (a covered lens, a
  black frame) are alike when their mean grey differs by less than 8 levels.

The choice is greedy (the best frame first, each next one the best that is not a duplicate of one
already chosen), which is what a labeller would do by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

#: (height, width) of the grey thumbnail kept per frame for the similarity check (768 bytes).
THUMB_SIZE = (24, 32)
#: Gaussian sigma (thumbnail pixels) of the blur the high-pass removes.
HIGH_PASS_SIGMA = 2.0
#: Below this standard deviation (grey levels) of the high-passed thumbnail it has no structure:
#: correlation means nothing.
FLAT_STD = 0.5
#: Two uniform thumbnails are alike when their mean grey differs by less than this.
FLAT_MEAN_DIFF = 8.0
DEFAULT_MIN_GAP_S = 1.0
DEFAULT_MAX_SIMILARITY = 0.95


@dataclass(frozen=True)
class Candidate:
    """A scored frame: where it is (drive position, camera, frame index, header stamp) and how unsure
    the model was; ``thumb`` is its grey thumbnail for the similarity check."""

    drive: int
    camera: str
    topic: str
    index: int
    stamp_ns: int
    score: float
    thumb: np.ndarray = field(repr=False, compare=False)


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """The grey :data:`THUMB_SIZE` thumbnail (uint8) of an RGB frame."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMB_SIZE[1], THUMB_SIZE[0]), interpolation=cv2.INTER_AREA)


def rank_key(c: Candidate) -> tuple[float, int, str, int]:
    """Highest score first; then drive position, camera name, frame index (module docstring)."""
    return (-c.score, c.drive, c.camera, c.index)


def _normalised(thumb: np.ndarray) -> tuple[np.ndarray, float, bool]:
    """(unit-norm zero-mean high-passed thumbnail, mean grey, whether it has no structure)."""
    x = thumb.astype(np.float32)
    high = (x - cv2.GaussianBlur(x, (0, 0), HIGH_PASS_SIGMA)).reshape(-1)
    centred = high - high.mean()
    flat = float(centred.std()) < FLAT_STD
    return centred / max(float(np.linalg.norm(centred)), 1e-6), float(x.mean()), flat


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """How alike two thumbnails are: normalised cross-correlation of their high-passed versions
    (1: the same picture up to exposure); two without structure are 1 when their mean grey is within
    :data:`FLAT_MEAN_DIFF`, else 0 (and 0 when only one has none)."""
    ua, ma, fa = _normalised(a)
    ub, mb, fb = _normalised(b)
    if fa or fb:
        return 1.0 if fa and fb and abs(ma - mb) < FLAT_MEAN_DIFF else 0.0
    return float(ua @ ub)


@dataclass
class Selection:
    """The chosen frames in rank order and what was passed over on the way."""

    chosen: list[Candidate]
    #: Frames looked at before the top K were full (or all of them).
    considered: int = 0
    #: Skipped: within ``min_gap_s`` of a chosen frame of the same drive and camera.
    near_in_time: int = 0
    #: Skipped: too similar to a chosen frame.
    similar: int = 0


def check_settings(top: int, min_gap_s: float, max_similarity: float) -> None:
    """Raise ``ValueError`` naming the first selection setting that cannot work."""
    if top < 1:
        raise ValueError(f"--top must be >= 1, got {top}")
    if not min_gap_s >= 0:
        raise ValueError(f"--min-gap-s must be >= 0, got {min_gap_s}")
    if not 0 < max_similarity <= 1:
        raise ValueError(f"--max-similarity must be in (0, 1], got {max_similarity}")


def select(candidates: Iterable[Candidate], top: int, min_gap_s: float = DEFAULT_MIN_GAP_S,
           max_similarity: float = DEFAULT_MAX_SIMILARITY) -> Selection:
    """The ``top`` best frames that are not near-duplicates of a better one (module docstring)."""
    check_settings(top, min_gap_s, max_similarity)
    gap_ns = round(min_gap_s * 1e9)
    selection = Selection([])
    stamps: dict[tuple[int, str], list[int]] = {}
    units = np.zeros((top, THUMB_SIZE[0] * THUMB_SIZE[1]), np.float32)
    means = np.zeros(top, np.float32)
    flats = np.zeros(top, bool)
    for c in sorted(candidates, key=rank_key):
        if len(selection.chosen) == top:
            break
        selection.considered += 1
        if gap_ns and any(abs(c.stamp_ns - s) < gap_ns for s in stamps.get((c.drive, c.camera), ())):
            selection.near_in_time += 1
            continue
        n = len(selection.chosen)
        unit, mean, flat = _normalised(c.thumb)
        if n and max_similarity < 1:
            sims = units[:n] @ unit
            both_flat = flats[:n] & flat
            sims = np.where(both_flat, (np.abs(means[:n] - mean) < FLAT_MEAN_DIFF).astype(np.float32),
                            np.where(flats[:n] | flat, 0.0, sims))
            if float(sims.max()) >= max_similarity:
                selection.similar += 1
                continue
        units[n], means[n], flats[n] = unit, mean, flat
        stamps.setdefault((c.drive, c.camera), []).append(c.stamp_ns)
        selection.chosen.append(c)
    return selection
